"""``preftune ppo | rloo | grpo | reinforce | best-of-n | rejection-sampling``: configs and glue.

The reward (``--reward``) is anything :func:`preftune.rewards.loading.load_reward` takes: a folder saved by
``preftune reward``, a combination file, or ``module:function`` / ``path/file.py:function``.
Prompts (``--prompts``, default ``starter:train``) are the prompts of any file of the data formats; plain-text
prompts are presented as the policy was trained (:mod:`preftune.models.prompt_format`: the choice recorded with the
model, else the chat template when the tokenizer has one; ``--no-chat-template`` keeps them raw).
"""

from __future__ import annotations

import json
import sys
from typing import Literal

from pydantic import Field, model_validator

from preftune.config import CHAT_TEMPLATE_HELP, DECODE_DTYPE_HELP, BaseConfig, Command, with_launch_options
from preftune.errors import PreftuneError


def _say(message: str) -> None:
    print(message, file=sys.stderr)


class _Common(BaseConfig):
    model: str = Field("smollm2-135m-instruct", description="policy to start from (normally the SFT model)")
    reward: str | dict = Field(..., description="reward: a reward-model folder, a combination .yaml/.json (or the combination itself as a mapping), or module:function")
    prompts: str = Field("starter:train", description="prompt set: a data file (its prompts are used) or starter[:train|:test]")
    prompts_format: str = Field("auto", description="data format of the prompt file")
    limit: int | None = Field(None, ge=1, description="use at most this many prompts")
    max_prompt_length: int = Field(512, ge=1, description="prompts longer than this (in tokens) are skipped and counted")
    chat_template: bool | None = Field(None, description=CHAT_TEMPLATE_HELP)
    output_dir: str = Field("runs/online", description="run folder")
    batch_size: int = Field(8, ge=1, description="prompts per step")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(1.0, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: off")
    stop: list[str] = Field(default_factory=list, description="stop strings")
    gen_batch_size: int = Field(32, ge=1, description="sequences decoded together")
    decode_dtype: str = Field("auto", description=DECODE_DTYPE_HELP)
    seed: int = Field(0)
    dtype: str = Field("auto", description="models only read (sampler, reference): auto (fp32 on CPU, bf16 on CUDA), fp32, bf16; "
                       "a trained policy keeps fp32 master weights (--mixed-precision)")
    device: str = Field("auto")


@with_launch_options
class OnlineConfig(_Common):
    """Options shared by PPO and the critic-free methods."""

    ref_model: str | None = Field(None, description="reference model (default: a frozen copy of --model; with --lora the adapters switched off)")
    mixed_precision: Literal["auto", "no", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA over fp32 master weights, fp32 on CPU")
    steps: int = Field(100, ge=1, description="RL steps (rollout + update)")
    num_samples: int = Field(1, ge=1, description="responses per prompt (k)")
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout")
    minibatch_size: int = Field(8, ge=1, description="responses per optimizer step")
    forward_batch_size: int = Field(16, ge=1, description="responses per no-grad forward pass in the rollout")
    single_pass: bool = Field(True, description="one epoch of one minibatch: take the old log-probs from the training "
                              "forward instead of a separate no-grad pass (--no-single-pass: always the separate pass)")
    learning_rate: float | None = Field(None, gt=0, description="default 1e-6 (full) / 1e-5 (LoRA)")
    max_grad_norm: float | None = Field(1.0)
    kl_coef: float = Field(0.05, ge=0, description="beta of the KL penalty to the reference")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="per-token KL estimator in the reward")
    adaptive_kl: bool = Field(False, description="adapt beta towards kl_target (Ziegler et al. 2019)")
    kl_target: float = Field(6.0, gt=0)
    kl_horizon: int = Field(10000, ge=1)
    clip_range: float = Field(0.2, gt=0)
    whiten: bool = Field(True, description="whiten advantages over the rollout")
    no_eos_penalty: float = Field(0.0, ge=0, description="subtracted from the reward of responses that end without EOS")
    ptx_coef: float = Field(0.0, ge=0, description="PPO-ptx: weight of the log-likelihood of --ptx-data")
    ptx_data: str | None = Field(None, description="SFT / pretraining data for the ptx term")
    ptx_batch_size: int = Field(4, ge=1)
    lora: bool = Field(False)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: none)")
    resume: bool | str = Field(False, description="--resume: the newest checkpoint of output_dir; or a checkpoint path")
    sample_every: int = Field(10, ge=0, description="write a table of sample responses every N steps (0: never)")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self):
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ValueError("ptx_coef > 0 needs --ptx-data")
        return self


class PPOConfig(OnlineConfig):
    output_dir: str = Field("runs/ppo")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    value_clip: float | None = Field(0.2, description="clip the value loss around the rollout's values (none: off)")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    value_model: Literal["head", "separate"] = Field("head", description="a value head on the policy, or a separate critic (a copy of --model)")


class PGConfig(OnlineConfig):
    num_samples: int = Field(4, ge=1, description="responses per prompt (k)")
    whiten: bool = Field(False, description="whiten the sequence advantages (REINFORCE / RLOO)")


class RLOOConfig(PGConfig):
    output_dir: str = Field("runs/rloo")

    @model_validator(mode="after")
    def _k(self):
        if self.num_samples < 2:
            raise ValueError("RLOO needs num_samples >= 2 (the leave-one-out baseline)")
        return self


class GRPOConfig(PGConfig):
    output_dir: str = Field("runs/grpo")
    kl_coef: float = Field(0.04, ge=0, description="beta of the k3 KL term in the loss")
    scale_rewards: bool = Field(True, description="divide advantages by the group's std (off: Dr. GRPO)")

    @model_validator(mode="after")
    def _k(self):
        if self.num_samples < 2:
            raise ValueError("GRPO needs num_samples >= 2 (group-normalised advantages)")
        return self


class REINFORCEConfig(PGConfig):
    output_dir: str = Field("runs/reinforce")
    num_samples: int = Field(1, ge=1)
    baseline_decay: float = Field(0.9, ge=0, lt=1, description="moving-average baseline decay")


class BestOfNConfig(_Common):
    n: int = Field(4, ge=1, description="samples per prompt")
    output: str = Field("best_of_n.jsonl", description="JSON lines: prompt, best response, its reward, every reward")
    reward_batch_size: int = Field(32, ge=1)


@with_launch_options
class RejectionSamplingConfig(BestOfNConfig):
    output_dir: str = Field("runs/rejection-sampling", description="run folder (the best-of-N data goes to best_of_n.jsonl there)")
    output: str | None = Field(None, description="also write the best-of-N JSON lines here")
    min_reward: float | None = Field(None, description="keep only best responses with at least this reward")
    num_epochs: float = Field(1.0, gt=0)
    sft_batch_size: int = Field(4, ge=1)
    learning_rate: float | None = Field(None, gt=0, description="default 2e-5 (full) / 2e-4 (LoRA)")
    lora: bool = Field(False)
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    save_every: int = Field(0, ge=0)
    resume: bool | str = Field(False)


# -- glue ---------------------------------------------------------------------------------------------------


def load_prompts(config: _Common, tokenizer) -> tuple[list, list[list[int]]]:
    """The prompts of ``config.prompts`` (deduplicated, in file order) and their token ids."""
    from preftune.data.tokenize import encode_prompt
    from preftune.eval.data import distinct_prompts

    prompts = distinct_prompts(config.prompts, config.prompts_format, limit=config.limit)
    kept, ids, skipped = [], [], 0
    for p in prompts:
        t = encode_prompt(tokenizer, p)  # in the format settled on the tokenizer (start_online)
        if len(t) > config.max_prompt_length:
            skipped += 1
            continue
        kept.append(p)
        ids.append(t)
    if skipped:
        _say(f"{config.prompts}: skipped {skipped} prompts over max_prompt_length={config.max_prompt_length} tokens")
    if not kept:
        raise PreftuneError(f"{config.prompts}: no prompts left")
    return kept, ids


_PAPERS = {"ppo": "PPO with a per-token KL penalty, Ziegler et al. 2019; Ouyang et al. 2022",
           "rloo": "RLOO, Ahmadian et al. 2024", "grpo": "GRPO, Shao et al. 2024", "reinforce": "REINFORCE, Williams 1992"}


def _reward_name(config: _Common) -> str:
    """The reward as the model card names it: a path or module:function, or a combination written as JSON."""
    return json.dumps(config.reward) if isinstance(config.reward, dict) else config.reward


def _tokenizer(config: _Common, who: str):
    """The policy's tokenizer with the prompt format settled once; the config records the choice."""
    from preftune.models.prompt_format import decide_chat_template
    from preftune.models.loading import load_tokenizer

    tokenizer = load_tokenizer(config.model)
    choice = decide_chat_template(tokenizer, config.chat_template, who=who)
    return config.model_copy(update={"chat_template": choice}), tokenizer


def _device(config) -> str:
    """``--device``; under a multi-process launch on GPUs, each process's own GPU (LOCAL_RANK)."""
    import os

    import torch

    from preftune.distributed import world_size

    if config.device == "auto" and world_size() > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return config.device


def _policy(config, lora: bool, *, trained: bool = True):
    """The policy: a trained one in fp32 master weights (the precision policy of every trainer,
    :mod:`preftune.train.precision`: bf16 autocast on a GPU instead of bf16 weights), one only sampled in --dtype."""
    from preftune.models.loading import load_model
    from preftune.models.lora import apply_lora

    model = load_model(config.model, dtype="fp32" if trained else config.dtype, device=_device(config))
    model.config.use_cache = False
    if lora:
        model = apply_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=getattr(config, "lora_dropout", 0.0))
    return model


def _reward(config):
    from preftune.rewards.loading import load_reward

    return load_reward(config.reward)


def _run_online(config: OnlineConfig, algorithm, reward_fn=None) -> int:
    import torch

    from preftune.models.loading import load_model
    from preftune.models.lora import save_final
    from preftune.models.reference import frozen_copy
    from preftune.models.policy import Critic, value_head_for
    from preftune.rl.loop import OnlineSettings, OnlineTrainer
    from preftune.runs import RunDir

    torch.manual_seed(config.seed)
    config, tokenizer = _tokenizer(config, f"preftune {algorithm.name}")
    run = RunDir(config.output_dir, report_to=config.report_to)
    run.save_config(config)
    prompts, prompt_ids = load_prompts(config, tokenizer)
    reward_fn = reward_fn if reward_fn is not None else _reward(config)
    policy = _policy(config, config.lora)
    ref_model = None
    if config.ref_model:
        ref_model = load_model(config.ref_model, dtype=config.dtype, device=_device(config)).requires_grad_(False)
    elif not config.lora:
        ref_model = frozen_copy(policy)
    value_head = critic = None
    if algorithm.needs_values:
        hidden = policy.config.get_text_config().hidden_size
        if getattr(config, "value_model", "head") == "separate":
            critic = Critic(frozen_copy(policy).requires_grad_(True))
        else:
            value_head = value_head_for(hidden).to(next(policy.parameters()).device)
    ptx = None
    if config.ptx_coef > 0:
        from preftune.data.convert import load_examples
        from preftune.data.tokenize import encode_sft

        ex = load_examples(config.ptx_data, "auto", kind="sft").examples
        enc = [encode_sft(tokenizer, e) for e in ex]
        ptx = [(t.input_ids[: t.prompt_length], t.input_ids[t.prompt_length:]) for t in enc]
    lr = config.learning_rate or (1e-5 if config.lora else 1e-6)
    settings = OnlineSettings(
        steps=config.steps, batch_size=config.batch_size, num_samples=config.num_samples,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
        stop=tuple(config.stop), ppo_epochs=config.ppo_epochs, minibatch_size=config.minibatch_size, learning_rate=lr,
        max_grad_norm=config.max_grad_norm, kl_coef=config.kl_coef, adaptive_kl=config.adaptive_kl,
        kl_target=config.kl_target, kl_horizon=config.kl_horizon, ptx_coef=config.ptx_coef,
        ptx_batch_size=config.ptx_batch_size, save_every=config.save_every, sample_every=config.sample_every,
        seed=config.seed, resume=config.resume or None, gen_batch_size=config.gen_batch_size,
        decode_dtype=config.decode_dtype, forward_batch_size=config.forward_batch_size, single_pass=None if config.single_pass else False,
        mixed_precision=config.mixed_precision)
    trainer = OnlineTrainer(policy=policy, tokenizer=tokenizer, algorithm=algorithm, reward_fn=reward_fn, prompts=prompts,
                            prompt_ids=prompt_ids, settings=settings, run=run, ref_model=ref_model, value_head=value_head,
                            critic=critic, ptx_data=ptx)
    last = trainer.train()
    if not trainer.accelerator.is_main_process:  # one process saves
        run.close()
        return 0
    path = save_final(policy, tokenizer, run.final_dir)
    run.write_model_card(method=algorithm.name + (" (LoRA)" if config.lora else ""), paper=_PAPERS.get(algorithm.name, ""),
                         base_model=config.model, data={"prompts": f"{config.prompts} ({len(prompts)} prompts)",
                                                        "reward": _reward_name(config),
                                                        "steps": config.steps})
    if value_head is not None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in value_head.state_dict().items()}, str(path / "value_head.safetensors"))
    _say(f"{algorithm.name}: reward {last.get('reward_mean', float('nan')):.4f}, KL {last.get('kl', float('nan')):.4f}; "
         f"saved the policy to {path}")
    run.close()
    if config.push_to_hub:
        from preftune.runs import push_to_hub

        _say(f"pushed {path} to {push_to_hub(path, config.push_to_hub, private=config.hub_private)}")
    return 0


def run_ppo(config: PPOConfig) -> int:
    from preftune.rl.ppo import PPO, PPOSettings

    algo = PPO(PPOSettings(kl_estimator=config.kl_estimator, gamma=config.gamma, lam=config.lam, clip_range=config.clip_range,
                           value_clip=config.value_clip, vf_coef=config.vf_coef, whiten=config.whiten,
                           no_eos_penalty=config.no_eos_penalty))
    return _run_online(config, algo)


def _run_pg(config: PGConfig, method: str) -> int:
    from preftune.rl.pg import PGSettings, PolicyGradient

    algo = PolicyGradient(PGSettings(method=method, num_samples=config.num_samples, kl_estimator=config.kl_estimator,
                                     clip_range=config.clip_range, whiten=config.whiten, no_eos_penalty=config.no_eos_penalty,
                                     baseline_decay=getattr(config, "baseline_decay", 0.9),
                                     scale_rewards=getattr(config, "scale_rewards", True)))
    return _run_online(config, algo)


def run_rloo(config: RLOOConfig) -> int:
    return _run_pg(config, "rloo")


def run_grpo(config: GRPOConfig) -> int:
    return _run_pg(config, "grpo")


def run_reinforce(config: REINFORCEConfig) -> int:
    return _run_pg(config, "reinforce")


def run_online_dpo(config) -> int:
    """``preftune dpo --online`` (a :class:`preftune.commands.offline.DPOConfig`): the online loop with the
    :class:`preftune.rl.dpo.OnlineDPO` algorithm, two samples per prompt, labelled by ``--reward`` or the AI labeller.

    Without ``--rounds``: one optimizer step per sampled batch of ``--batch-size`` prompts (Guo et al. 2024), for
    ``--max-steps`` steps (default 100). With ``--rounds N``: N rounds of ``--prompts-per-round`` prompts, each trained
    ``--epochs-per-round`` times in minibatches of ``--batch-size`` pairs. The reference is a frozen copy of --model
    (with --lora: the adapters switched off)."""
    from preftune.rl.dpo import OnlineDPO, OnlineDPOSettings

    algo = OnlineDPO(OnlineDPOSettings(loss=config.loss, beta=config.beta, labels=config.online_labels,
                                       label_smoothing=config.label_smoothing if config.label_smoothing is not None else 0.0,
                                       simpo_gamma=config.simpo_gamma, rpo_alpha=config.rpo_alpha, cpo_alpha=config.cpo_alpha,
                                       ipo_length_normalize=config.ipo_length_normalize))
    iterative = config.rounds is not None
    prompts_per_step = config.prompts_per_round if iterative else config.batch_size
    online = OnlineConfig(
        model=config.model, reward=config.reward or f"ai-feedback:{config.feedback_model}",
        prompts=config.prompts or config.data, prompts_format="auto" if config.prompts else config.format,
        limit=config.limit, output_dir=config.output_dir, batch_size=prompts_per_step,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, gen_batch_size=config.gen_batch_size,
        decode_dtype=config.decode_dtype, seed=config.seed,
        steps=config.rounds if iterative else (config.max_steps or 100), num_samples=2,
        ppo_epochs=config.epochs_per_round if iterative else 1,
        minibatch_size=2 * min(config.batch_size, prompts_per_step) if iterative else 2 * prompts_per_step,
        learning_rate=config.learning_rate or (5e-5 if config.lora else 1e-6), max_grad_norm=config.max_grad_norm,
        # the loop computes reference log-probs whenever its KL coefficient is non-zero: β is DPO's KL weight
        kl_coef=algo.beta, lora=config.lora, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout, save_every=config.save_every, resume=config.resume,
        report_to=config.report_to, push_to_hub=config.push_to_hub, hub_private=config.hub_private)
    reward_fn = None
    if config.feedback_model:
        from preftune.cai.constitution import load_constitution
        from preftune.cai.label import LabelSettings, PairwiseLabelReward
        from preftune.remote import chat_model

        labeller = chat_model(config.feedback_model, base_url=config.feedback_base_url)
        reward_fn = PairwiseLabelReward(load_constitution(config.constitution), labeller,
                                        LabelSettings(num_principles=config.num_principles, seed=config.seed))
    return _run_online(online, algo, reward_fn=reward_fn)


def _best_of_n(config: BestOfNConfig, model, tokenizer, *, process: int = 0, processes: int = 1):
    """Best-of-N on the prompt set, or on process ``process``'s contiguous share of it (of ``processes``)."""
    from preftune.rl.best_of_n import best_of_n

    prompts, prompt_ids = load_prompts(config, tokenizer)
    lo, hi = process * len(prompts) // processes, (process + 1) * len(prompts) // processes
    prompts, prompt_ids = prompts[lo:hi], prompt_ids[lo:hi]
    return best_of_n(model, tokenizer, _reward(config), prompts, prompt_ids, n=config.n,
                     max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                     top_k=config.top_k, stop=tuple(config.stop), seed=config.seed, batch_size=config.gen_batch_size,
                     reward_batch_size=config.reward_batch_size, decode_dtype=config.decode_dtype)


def run_best_of_n(config: BestOfNConfig) -> int:
    from preftune.models.loading import load_model
    from preftune.rl.best_of_n import write_jsonl

    config, tokenizer = _tokenizer(config, "preftune best-of-n")
    model = load_model(config.model, dtype=config.dtype, device=config.device)
    results = _best_of_n(config, model, tokenizer)
    write_jsonl(results, config.output)
    mean_best = sum(r.best_reward for r in results) / len(results)
    mean_first = sum(r.rewards[0] for r in results) / len(results)
    _say(f"best-of-{config.n}: mean reward {mean_best:.4f} (a single sample: {mean_first:.4f}); wrote {config.output}")
    return 0


def run_rejection_sampling(config: RejectionSamplingConfig) -> int:
    from preftune.models.lora import save_final
    from preftune.rl.best_of_n import rejection_sampling_items, write_jsonl
    from preftune.runs import RunDir
    from preftune.train.loop import LoopSettings, make_accelerator, train
    from preftune.train.precision import precision_policy
    from preftune.train.sft import SFTCollator, SFTStep

    config, tokenizer = _tokenizer(config, "preftune rejection-sampling")
    run = RunDir(config.output_dir)
    run.save_config(config)
    lr = config.learning_rate or (2e-4 if config.lora else 2e-5)
    settings = LoopSettings(batch_size=config.sft_batch_size, num_epochs=config.num_epochs, learning_rate=lr,
                            save_every=config.save_every, seed=config.seed, resume=config.resume or None)
    accelerator = make_accelerator(precision_policy(settings.mixed_precision).autocast)
    model = _policy(config, config.lora)
    # under a multi-process launch each process samples a contiguous share of the prompts; gathered in rank order,
    # every process then holds all results in prompt order, and the SFT loop shards them again
    results = _best_of_n(config, model, tokenizer, process=accelerator.process_index,
                         processes=accelerator.num_processes)
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
    if accelerator.is_main_process:
        write_jsonl(results, run.path / "best_of_n.jsonl")
        if config.output:
            write_jsonl(results, config.output)
    items = rejection_sampling_items(results, tokenizer, min_reward=config.min_reward)
    if not items:
        raise PreftuneError(f"no best response reached min_reward={config.min_reward}; nothing to fine-tune on")
    _say(f"rejection sampling: fine-tuning on {len(items)} best-of-{config.n} responses")
    result = train(model, items, SFTCollator(tokenizer.pad_token_id), SFTStep(), settings, run,
                   accelerator=accelerator, desc="rejection-sampling sft")
    if accelerator.is_main_process:
        path = save_final(result.model, tokenizer, run.final_dir)
        run.write_model_card(method="rejection-sampling fine-tuning" + (" (LoRA)" if config.lora else ""),
                             paper="Touvron et al. 2023 (Llama 2), sec. 3.2.3", base_model=config.model,
                             data={"prompts": f"{config.prompts} ({len(results)} prompts)", "reward": _reward_name(config),
                                   "samples per prompt": config.n, "fine-tuned on": f"{len(items)} best responses"})
        _say(f"saved the fine-tuned model to {path}")
        if config.push_to_hub:
            from preftune.runs import push_to_hub

            _say(f"pushed {path} to {push_to_hub(path, config.push_to_hub, private=config.hub_private)}")
    run.close()
    return 0


PPO = Command("ppo", "RLHF with PPO against a reward, with a per-token KL penalty (and PPO-ptx)", PPOConfig, run_ppo)
RLOO = Command("rloo", "REINFORCE leave-one-out: k samples per prompt, no critic", RLOOConfig, run_rloo)
GRPO = Command("grpo", "Group relative policy optimisation: group-normalised advantages, KL in the loss", GRPOConfig, run_grpo)
REINFORCE = Command("reinforce", "REINFORCE with a baseline", REINFORCEConfig, run_reinforce)
BEST_OF_N = Command("best-of-n", "Sample N responses per prompt and keep the best by reward", BestOfNConfig, run_best_of_n)
REJECTION_SAMPLING = Command("rejection-sampling", "Sample, rank with the reward, fine-tune on the best (Llama 2)",
                             RejectionSamplingConfig, run_rejection_sampling)
