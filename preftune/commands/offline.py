"""``preftune sft`` and ``preftune dpo``: configs and the glue from data to a trained model in a run folder."""

from __future__ import annotations

import json
import sys
from typing import Literal

from pydantic import Field, model_validator

from preftune.config import CHAT_TEMPLATE_HELP, DECODE_DTYPE_HELP, BaseConfig, Command, with_launch_options
from preftune.data.convert import FORMATS
from preftune.data.options import ReadOptions, with_read_options
from preftune.errors import PreftuneError
from preftune.losses.preference import ALIASES, LOSSES, SOFT_LABEL_LOSSES

LossName = Literal[tuple(LOSSES) + tuple(ALIASES)]  # type: ignore[valid-type]


@with_launch_options
@with_read_options
class OfflineConfig(BaseConfig):
    """Options shared by every offline trainer."""

    model: str = Field("smollm2-135m-instruct", description="model to train: hub id, local folder, GGUF file or the default")
    data: str = Field("starter:train", description="training data: a file, a datasets folder, a hub id, or starter[:train|:test]")
    format: Literal[FORMATS] = Field("auto", description="data format (auto detects it from the first row)")
    eval_data: str | None = Field("auto", description="held-out data evaluated after training; auto: starter:test when data is starter:train, else none")
    output_dir: str = Field("runs/offline", description="run folder: config.yaml, metrics.jsonl, checkpoints/, final/")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (default: num_epochs over the data)")
    num_epochs: float = Field(1.0, gt=0, description="passes over the data when max_steps is not set")
    batch_size: int = Field(4, ge=1, description="examples (pairs) per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float | None = Field(None, gt=0, description="peak learning rate (default depends on the method and on --lora)")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="decay after warm-up")
    warmup: float = Field(0.1, ge=0, description="warm-up: a fraction of the steps (< 1) or a number of steps")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, description="gradient clipping (none: no clipping)")
    max_length: int = Field(1024, ge=2, description="token limit of prompt+completion; longer rows are errors (or skipped with --skip-bad-rows)")
    chat_template: bool | None = Field(None, description=CHAT_TEMPLATE_HELP)
    lora: bool = Field(False, description="train a LoRA adapter instead of every weight")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] | None = Field(None, description="module names for LoRA (default: every linear layer)")
    merge: bool = Field(False, description="with --lora: save the base model with the adapter merged instead of the adapter")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: none)")
    keep_checkpoints: int | None = Field(None, ge=1, description="keep only the newest N checkpoints")
    resume: bool | str = Field(False, description="--resume: continue from the newest checkpoint of output_dir; or a checkpoint path")
    seed: int = Field(42)
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list, description="also log to tensorboard / wandb")
    skip_bad_rows: bool = Field(False, description="skip (and count) bad rows instead of stopping at the first")
    limit: int | None = Field(None, ge=1, description="read at most this many rows")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU")
    head_chunk_size: int | None = Field(None, ge=1, description="apply the LM head to at most this many positions at once (saves memory)")
    eval_batch_size: int = Field(8, ge=1)

    def eval_source(self) -> str | None:
        if self.eval_data == "auto":
            return "starter:test" if self.data == "starter:train" else None
        return self.eval_data or None


class SFTConfig(OfflineConfig):
    output_dir: str = Field("runs/sft", description="run folder: config.yaml, metrics.jsonl, checkpoints/, final/")
    packing: bool = Field(True, description="pack the examples of a micro-batch into rows (no padding, no attention across examples)")
    pack_length: int | None = Field(None, ge=2, description="tokens per packed row (default: the whole micro-batch in one row)")
    normalize: Literal["tokens", "sequences"] = Field("tokens", description="loss mean over completion tokens or over examples")


class DPOConfig(OfflineConfig):
    output_dir: str = Field("runs/dpo", description="run folder: config.yaml, metrics.jsonl, checkpoints/, final/")
    loss: LossName = Field("sigmoid", description="sigmoid (DPO), ipo, cdpo, robust, hinge, rpo, simpo, orpo, cpo, kto")
    beta: float | None = Field(None, gt=0, description="β (default: 0.1; simpo 2.0)")
    label_smoothing: float | None = Field(None, ge=0, lt=1, description="ε of cdpo / robust (default 0.1)")
    simpo_gamma: float = Field(0.5, description="SimPO's target reward margin γ")
    rpo_alpha: float = Field(1.0, ge=0, description="weight of RPO's NLL term on chosen")
    cpo_alpha: float = Field(1.0, ge=0, description="weight of CPO's NLL term on chosen")
    ipo_length_normalize: bool = Field(True, description="IPO on per-token log-ratios (as the IPO authors and TRL)")
    kto_desirable_weight: float = Field(1.0, gt=0)
    kto_undesirable_weight: float = Field(1.0, gt=0)
    ref: Literal["precomputed", "copy", "adapter"] = Field(
        "precomputed", description="reference log-probs: computed once before training (cached in the run folder), a frozen copy, or the LoRA model with adapters off")
    layout: Literal["auto", "packed", "rows", "separate"] = Field(
        "auto", description="pair layout: packed [prompt, chosen, rejected] rows without padding (auto where the model supports it), one row per pair, or two rows per pair")
    soft_labels: bool = Field(True, description="use the data's soft labels (field 'label', P(chosen ≻ rejected)) as per-pair targets (sigmoid, cdpo)")
    # online / iterative DPO (Guo et al. 2024): pairs sampled from the current policy and labelled on the fly
    online: bool = Field(False, description="online DPO: each step samples 2 responses per prompt from the current policy, labels them (--reward or --feedback-model) and takes a step of --loss")
    reward: str | None = Field(None, description="--online: the reward that labels the pairs: a reward-model folder, a combination file, or module:function")
    feedback_model: str | None = Field(None, description="--online: or an AI labeller asked the constitution's question (a local model, or a name with --feedback-base-url)")
    feedback_base_url: str | None = Field(None, description="--online: an OpenAI-compatible endpoint for --feedback-model")
    constitution: str = Field("default", description="--online with --feedback-model: the constitution file")
    num_principles: int = Field(1, ge=1, description="--online with --feedback-model: principles drawn per pair")
    online_labels: Literal["soft", "hard"] = Field("soft", description="--online: soft P(a ≻ b) = σ(r_a − r_b), or hard (the higher reward wins, ties skipped)")
    prompts: str | None = Field(None, description="--online: the prompt set (default: the prompts of --data)")
    rounds: int | None = Field(None, ge=1, description="--online: iterative rounds; each samples --prompts-per-round prompts, labels them and trains --epochs-per-round over them in minibatches of --batch-size pairs (default: one step per sampled batch of --batch-size prompts, --max-steps steps)")
    prompts_per_round: int = Field(64, ge=1, description="--rounds: prompts sampled per round")
    epochs_per_round: int = Field(1, ge=1, description="--rounds: passes over each round's pairs")
    max_new_tokens: int = Field(64, ge=1, description="--online: tokens per sampled response")
    temperature: float = Field(1.0, gt=0, description="--online: sampling temperature (the log-probs are taken at it)")
    gen_batch_size: int = Field(32, ge=1, description="--online: sequences decoded together")
    decode_dtype: str = Field("auto", description="--online: " + DECODE_DTYPE_HELP)

    @model_validator(mode="after")
    def _check(self):
        name = ALIASES.get(self.loss, self.loss)
        if self.label_smoothing and name not in ("cdpo", "robust"):
            raise ValueError(f"label_smoothing applies to the cdpo and robust losses, not '{self.loss}'")
        if name == "robust" and self.label_smoothing is not None and self.label_smoothing >= 0.5:
            raise ValueError("robust DPO needs label_smoothing < 0.5")
        if self.ref == "adapter" and not self.lora:
            raise ValueError("ref=adapter needs --lora (the reference is the model with its adapters disabled)")
        if self.merge and not self.lora:
            raise ValueError("--merge only applies with --lora")
        if self.online:
            if bool(self.reward) == bool(self.feedback_model):
                raise ValueError("--online needs exactly one labeller: --reward SPEC or --feedback-model MODEL")
            if name == "kto" or LOSSES[name].unpaired:
                raise ValueError(f"--online trains on pairs; the loss '{self.loss}' is unpaired")
        else:
            online_only = [f for f in ("reward", "feedback_model", "feedback_base_url", "prompts", "rounds") if getattr(self, f)]
            if online_only:
                raise ValueError(f"--{online_only[0].replace('_', '-')} applies only with --online")
        return self


# -- shared glue ------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _default_lr(config: OfflineConfig, full: float, lora: float) -> float:
    return config.learning_rate if config.learning_rate is not None else (lora if config.lora else full)


def _settings(config: OfflineConfig, learning_rate: float, *, shuffle: bool = True):
    from preftune.train.loop import LoopSettings

    return LoopSettings(batch_size=config.batch_size, grad_accum=config.grad_accum, max_steps=config.max_steps,
                        num_epochs=config.num_epochs, learning_rate=learning_rate, lr_scheduler=config.lr_scheduler,
                        warmup=config.warmup, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
                        save_every=config.save_every, keep_checkpoints=config.keep_checkpoints, seed=config.seed,
                        shuffle=shuffle, mixed_precision=config.mixed_precision, resume=config.resume or None)


def _load(config: OfflineConfig, path: str, kind: str):
    from preftune.data.convert import load_examples

    result = load_examples(path, config.format if path == config.data else "auto", kind=kind,
                           skip_bad_rows=config.skip_bad_rows, limit=config.limit if path == config.data else None,
                           options=ReadOptions.of(config))
    if result.skipped:
        _say(f"{path}: {result.skip_summary()}")
    return result


def _tokenize(examples: list, encode, config: OfflineConfig, label: str) -> list:
    from preftune.data.convert import tokenize_all

    skipped: list = []
    out = tokenize_all(examples, encode, skip_bad_rows=config.skip_bad_rows, skipped=skipped)
    if skipped:
        _say(f"{label}: skipped {len(skipped)} examples over max_length={config.max_length}")
    if not out:
        raise PreftuneError(f"{label}: no examples left to train on")
    return out


def _start(config: OfflineConfig, who: str):
    """The run folder and the tokenizer, with the prompt format settled once and recorded in the run's config."""
    from preftune.models.prompt_format import decide_chat_template
    from preftune.models.loading import load_tokenizer
    from preftune.runs import RunDir

    tokenizer = load_tokenizer(config.model)
    config = config.model_copy(update={"chat_template": decide_chat_template(tokenizer, config.chat_template, who=who)})
    run = RunDir(config.output_dir, report_to=config.report_to)
    run.save_config(config)
    return config, run, tokenizer


def _model(config: OfflineConfig):
    """The policy in fp32 (master weights; bf16 autocast on CUDA comes from mixed_precision), with LoRA if asked."""
    from preftune.models.loading import load_model
    from preftune.models.lora import apply_lora, trainable_summary

    model = load_model(config.model, dtype="fp32")
    model.config.use_cache = False
    if config.lora:
        model = apply_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                           targets=config.lora_targets)
    _say(f"{config.model}: {trainable_summary(model)}")
    return model


def _finish(run, result, tokenizer, config: OfflineConfig, eval_metrics: dict | None, *, method: str, paper: str,
            data: dict) -> int:
    from preftune.models.lora import save_final
    from preftune.runs import push_to_hub

    if eval_metrics:
        row = {f"eval/{k}": v for k, v in eval_metrics.items()}
        if result.accelerator.is_main_process:
            run.log(result.steps, row)
            (run.path / "eval.json").write_text(json.dumps(eval_metrics, indent=2) + "\n")
        _say("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
    if result.accelerator.is_main_process:
        path = save_final(result.model, tokenizer, run.final_dir, merge=config.merge)
        run.write_model_card(method=method, paper=paper, base_model=config.model, data=data)
        _say(f"saved the final {'merged model' if config.merge else 'adapter' if config.lora else 'model'} to {path}")
    run.close()
    if config.push_to_hub and result.accelerator.is_main_process:
        _say(f"pushed {run.final_dir} to {push_to_hub(run.final_dir, config.push_to_hub, private=config.hub_private)}")
    return 0


# -- sft --------------------------------------------------------------------------------------------------


def run_sft(config: SFTConfig) -> int:
    from preftune.data.tokenize import encode_sft
    from preftune.train.loop import train
    from preftune.train.sft import SFTCollator, SFTItem, SFTStep

    config, run, tokenizer = _start(config, "preftune sft")

    def items(path: str) -> list[SFTItem]:
        examples = _load(config, path, "sft").examples
        encoded = _tokenize(examples, lambda e: encode_sft(tokenizer, e, config.max_length), config, path)
        return [SFTItem(t.input_ids[:t.prompt_length], t.input_ids[t.prompt_length:]) for t in encoded]

    train_items = items(config.data)
    eval_source = config.eval_source()
    eval_items = items(eval_source) if eval_source else []
    model = _model(config)
    collate = SFTCollator(tokenizer.pad_token_id, packing=config.packing, max_row_tokens=config.pack_length)
    step = SFTStep(config.normalize, config.head_chunk_size)
    result = train(model, train_items, collate, step, _settings(config, _default_lr(config, 2e-5, 2e-4)), run,
                   lengths=None if config.packing else [i.length for i in train_items], desc="sft")
    eval_metrics = None
    if eval_items:
        eval_metrics = evaluate_sft(result.model, step, eval_items, collate, batch_size=config.eval_batch_size,
                                    device=result.accelerator.device)
    data = {"training data": f"{config.data} ({len(train_items)} examples)", "held-out data":
            f"{eval_source} ({len(eval_items)} examples)" if eval_items else "none"}
    return _finish(run, result, tokenizer, config, eval_metrics, method="sft" + (" (LoRA)" if config.lora else ""),
                   paper="supervised fine-tuning on demonstrations, Ouyang et al. 2022", data=data)


def evaluate_sft(model, step, items, collate, *, batch_size: int, device) -> dict[str, float]:
    """Mean completion-token NLL (and perplexity) on held-out examples."""
    import math

    import torch

    from preftune.progress import progress

    from preftune.models.modes import eval_mode

    total, weight = 0.0, 0.0
    with eval_mode(model), torch.no_grad():
        for s in progress(range(0, len(items), batch_size), desc="evaluating"):
            batch = collate(items[s:s + batch_size]).to(device)
            out = step(model, batch)
            total += out.loss.item()
            weight += step.weight(batch)
    loss = total / weight
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


# -- dpo family -------------------------------------------------------------------------------------------


def run_dpo(config: DPOConfig) -> int:
    from preftune.data.tokenize import encode_pair, encode_unpaired
    from preftune.losses.preference import get_loss
    from preftune.models.logprobs import resolve_layout
    from preftune.models.reference import frozen_copy
    from preftune.train.dpo import (
        KTOStep,
        LossKnobs,
        PairCollator,
        PairItem,
        PreferenceStep,
        Reference,
        UnpairedCollator,
        UnpairedItem,
        evaluate_pairs,
        mismatch_partners,
    )
    from preftune.train.loop import train

    if config.online:
        from preftune.commands.online import run_online_dpo

        return run_online_dpo(config)
    spec = get_loss(config.loss)
    config, run, tokenizer = _start(config, "preftune dpo")

    def pair_items(path: str, key) -> list[PairItem]:
        pairs = _load(config, path, "preference").examples
        soft = [p for p in pairs if p.label is not None]
        if soft and config.soft_labels and spec.name not in SOFT_LABEL_LOSSES:
            src = soft[0].source
            raise PreftuneError(f"{path}: {len(soft)} pairs carry a soft label (field 'label', first at row "
                                f"{src.row if src else '?'}), which the loss '{spec.name}' cannot use; train with "
                                f"--loss {' or '.join(SOFT_LABEL_LOSSES)}, or --no-soft-labels to treat every pair as hard")
        encoded = _tokenize(pairs, lambda p: (encode_pair(tokenizer, p, config.max_length),
                                              p.label if config.soft_labels else None), config, path)
        return [PairItem(key(j), t.prompt_ids, t.chosen_ids, t.rejected_ids, label) for j, (t, label) in enumerate(encoded)]

    if spec.unpaired:
        examples = _load(config, config.data, "unpaired").examples
        encoded = _tokenize(examples, lambda e: (encode_unpaired(tokenizer, e, config.max_length), e.label), config,
                            config.data)
        kept = [(t.input_ids[:t.prompt_length], t.input_ids[t.prompt_length:], label) for t, label in encoded]
        partners = mismatch_partners(len(kept), config.seed)
        train_items = [UnpairedItem(j, p, c, bool(label), kept[partners[j]][1]) for j, (p, c, label) in enumerate(kept)]
    else:
        train_items = pair_items(config.data, lambda j: j)
    eval_source = config.eval_source()
    eval_items = pair_items(eval_source, lambda j: ("eval", j)) if eval_source else []

    model = _model(config)
    knobs = LossKnobs(beta=config.beta, label_smoothing=config.label_smoothing if config.label_smoothing is not None
                      else (0.1 if spec.name in ("cdpo", "robust") else 0.0), simpo_gamma=config.simpo_gamma,
                      rpo_alpha=config.rpo_alpha, cpo_alpha=config.cpo_alpha, ipo_length_normalize=config.ipo_length_normalize,
                      kto_desirable_weight=config.kto_desirable_weight, kto_undesirable_weight=config.kto_undesirable_weight)
    needs_ref = spec.reference or bool(eval_items)
    reference = None
    if needs_ref:
        ref_model = frozen_copy(model) if config.ref == "copy" else None
        reference = Reference(config.ref, ref_model=ref_model, head_chunk_size=config.head_chunk_size)
    layout = resolve_layout(model, config.layout)
    if layout != config.layout and config.layout != "auto":
        _say(f"layout '{config.layout}' is not supported by this model; using '{layout}'")
    pair_collate = PairCollator(tokenizer.pad_token_id, layout)
    if spec.unpaired:
        collate = UnpairedCollator(tokenizer.pad_token_id, layout)
        step = KTOStep(knobs, reference, config.head_chunk_size)
        eval_step = PreferenceStep("sigmoid", LossKnobs(beta=config.beta), reference, config.head_chunk_size)
    else:
        collate = pair_collate
        step = PreferenceStep(spec.name, knobs, reference, config.head_chunk_size)
        eval_step = step

    def setup(accelerator, plan, steps):
        if reference is None:
            return
        if reference.ref_model is not None:
            reference.ref_model.to(accelerator.device)
        if reference.mode != "precomputed":
            return
        reference.cache_path = run.path / f"ref_logps-{accelerator.process_index}.pt"
        reference.load()
        visit = [train_items[i] for i in plan.indices(steps, accelerator.process_index)] if spec.reference else []
        missing = [it for it in visit if it.key not in reference.cache]
        if missing and steps.start > 0 and not config.lora:
            raise PreftuneError(f"--resume: {len(missing)} examples have no cached reference log-probs in {run.path} "
                                "and the model has moved since; resume with the same data and max_steps")
        reference.precompute(model, visit, collate, batch_size=config.eval_batch_size, device=accelerator.device,
                             desc="reference log-probs (train)")
        if accelerator.is_main_process:
            reference.precompute(model, eval_items, pair_collate, batch_size=config.eval_batch_size,
                                 device=accelerator.device, desc="reference log-probs (eval)")
        reference.save()

    lengths = None if layout == "packed" else [i.length for i in train_items]
    result = train(model, train_items, collate, step, _settings(config, _default_lr(config, 1e-6, 5e-5)), run,
                   lengths=lengths, setup=setup, desc=f"dpo ({spec.name})")
    eval_metrics = None
    if eval_items and result.accelerator.is_main_process:
        eval_metrics = evaluate_pairs(result.model, eval_step, eval_items, pair_collate, batch_size=config.eval_batch_size,
                                      device=result.accelerator.device)
    data = {"training data": f"{config.data} ({len(train_items)} {'examples' if spec.unpaired else 'pairs'})",
            "held-out data": f"{eval_source} ({len(eval_items)} pairs)" if eval_items else "none"}
    return _finish(run, result, tokenizer, config, eval_metrics, method=f"dpo (loss {spec.name})" + (" (LoRA)" if config.lora else ""),
                   paper=spec.paper, data=data)


SFT = Command("sft", "Instruction tuning (SFT) on demonstrations, full or LoRA", SFTConfig, run_sft,
              description="Supervised fine-tuning on prompt/completion data: completion-only loss, optional packing "
                          "(no attention across packed examples), full fine-tuning or LoRA.")
DPO = Command("dpo", "Preference optimisation without RL: DPO, IPO, cDPO, SimPO, ORPO, CPO, KTO, ...", DPOConfig, run_dpo,
              description="Offline preference optimisation on preference pairs (KTO: unpaired labels), with the loss "
                          "chosen by --loss: " + ", ".join(f"{n} ({s.paper})" for n, s in LOSSES.items()) + ".")
