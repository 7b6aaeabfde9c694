"""``preftune overoptimization``: gold-labelled policy pairs → a proxy reward model → best-of-n and RL against the
proxy, with gold and proxy reward against KL (:mod:`preftune.rl.overoptimization`, Gao et al. 2022)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

from pydantic import Field

from preftune.config import DECODE_DTYPE_HELP, BaseConfig, Command
from preftune.errors import PreftuneError


def _say(message: str) -> None:
    print(message, file=sys.stderr)


class OveroptimizationConfig(BaseConfig):
    model: str = Field("smollm2-135m-instruct", description="the policy (its samples are labelled; it is optimised)")
    gold: str = Field(..., description="the gold reward: a reward-model folder, a combination .yaml/.json, or module:function")
    proxy: str | None = Field(None, description="an already trained proxy (skips labelling and proxy training)")
    proxy_model: str | None = Field(None, description="base model of the proxy reward model (default: --model)")
    prompts: str = Field("starter:train", description="prompt set: a data file (its prompts) or starter[:train|:test]")
    prompts_format: str = Field("auto")
    label_prompts: int = Field(128, ge=2, description="prompts whose two policy samples the gold labels (the proxy's training pairs)")
    proxy_steps: int | None = Field(None, ge=1, description="proxy training steps (default: --proxy-epochs over the labels)")
    proxy_epochs: float = Field(1.0, gt=0)
    proxy_learning_rate: float = Field(1e-5, gt=0)
    proxy_batch_size: int = Field(8, ge=1)
    proxy_lora: bool = Field(False, description="train the proxy with LoRA adapters")
    proxy_normalize_examples: int = Field(128, ge=2, description="training responses for the proxy's reward normalisation")
    bon_prompts: int = Field(32, ge=1, description="prompts for the best-of-n curve")
    max_n: int = Field(16, ge=1, description="samples per prompt for best-of-n; the curve covers n = 1, 2, 4, ..., max_n")
    rl_method: Literal["rloo", "ppo", "none"] = Field("rloo", description="RL against the proxy (none: best-of-n only)")
    rl_steps: int = Field(20, ge=1)
    rl_batch_size: int = Field(4, ge=1, description="prompts per RL step")
    rl_num_samples: int = Field(4, ge=1, description="samples per prompt (RLOO's k; PPO uses 1 unless set)")
    rl_learning_rate: float = Field(1e-5, gt=0)
    rl_kl_coef: float = Field(0.0, ge=0, description="KL penalty (Gao et al. study the curve mainly without one)")
    rl_prompts: int | None = Field(None, ge=1, description="prompts for RL (default: all of --prompts)")
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(1.0, gt=0, description="sampling temperature (the KL formula assumes sampling at 1.0)")
    reward_batch_size: int = Field(16, ge=1)
    gen_batch_size: int = Field(32, ge=1)
    decode_dtype: str = Field("auto", description=DECODE_DTYPE_HELP)
    output_dir: str = Field("runs/overoptimization", description="labels.jsonl, proxy/, rl/, overoptimization.json/.png, report.html")
    seed: int = Field(0)
    device: str | None = Field(None)
    dtype: str | None = Field(None)


def _prompts(config: OveroptimizationConfig, tokenizer):
    from preftune.commands.online import load_prompts

    options = SimpleNamespace(prompts=config.prompts, prompts_format=config.prompts_format, limit=None,
                              max_prompt_length=512)
    return load_prompts(options, tokenizer)


def run_overoptimization(config: OveroptimizationConfig) -> int:
    import torch

    from preftune.commands.reward import RewardTrainConfig
    from preftune.data.readers import write_jsonl
    from preftune.generation.engine import HFEngine, SamplingParams
    from preftune.models.loading import load_model, load_tokenizer
    from preftune.models.reference import frozen_copy
    from preftune.rewards.loading import load_reward
    from preftune.rl import overoptimization as oo
    from preftune.train.reward import train_reward

    torch.manual_seed(config.seed)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config.model)
    policy = load_model(config.model, dtype=config.dtype, device=config.device)
    prompts, prompt_ids = _prompts(config, tokenizer)
    gold = load_reward(config.gold)
    engine = HFEngine(policy, tokenizer, batch_size=config.gen_batch_size, desc="sampling", decode_dtype=config.decode_dtype)
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed)
    summary: dict = {"model": config.model, "gold": config.gold, "kl_formula": "log n - (n-1)/n"}

    if config.proxy:
        proxy_path = config.proxy
    else:
        m = min(config.label_prompts, len(prompts))
        a, b = oo.sample_pairs(engine, prompts[:m], prompt_ids[:m], params)
        rows, counts = oo.label_pairs(prompts[:m], a, b, gold, batch_size=config.reward_batch_size)
        if len(rows) < 2:
            raise PreftuneError(f"the gold labelled only {len(rows)} of {counts['pairs']} pairs (ties: {counts['ties']}, "
                                f"identical: {counts['identical']}); a proxy needs more (raise --label-prompts)")
        write_jsonl(rows, out / "labels.jsonl")
        _say(f"labelled {counts['labelled']} of {counts['pairs']} pairs with the gold ({counts['ties']} ties, "
             f"{counts['identical']} identical pairs left out)")
        train_summary = train_reward(RewardTrainConfig(
            data=str(out / "labels.jsonl"), format="preference", output_dir=str(out / "proxy"),
            model=config.proxy_model or config.model, learning_rate=config.proxy_learning_rate,
            batch_size=config.proxy_batch_size, num_epochs=config.proxy_epochs, max_steps=config.proxy_steps,
            lora=config.proxy_lora, normalize_examples=config.proxy_normalize_examples, eval_fraction=0.1, seed=config.seed, dtype=config.dtype))
        proxy_path = train_summary["final"]
        summary["labels"] = counts
        summary["proxy_training"] = {k: train_summary.get(k) for k in ("steps", "train_examples", "train_seconds", "eval")}
    proxy = load_reward(proxy_path)
    summary["proxy"] = str(proxy_path)

    start = min(config.label_prompts, len(prompts) - 1) if not config.proxy else 0
    bon_idx = list(range(start, min(start + config.bon_prompts, len(prompts)))) or list(range(min(config.bon_prompts, len(prompts))))
    points, samples = oo.best_of_n_curve(engine, [prompts[i] for i in bon_idx], [prompt_ids[i] for i in bon_idx], proxy, gold,
                                         max_n=config.max_n, params=params, batch_size=config.reward_batch_size)
    write_jsonl(samples, out / "best_of_n_samples.jsonl")
    summary["best_of_n_prompts"] = len(bon_idx)
    _write(summary, points, out)  # before RL: a stopped run keeps the best-of-n curve

    if config.rl_method != "none":
        from preftune.rl.loop import OnlineSettings
        from preftune.runs import RunDir

        rl_prompts = prompts[: config.rl_prompts] if config.rl_prompts else prompts
        rl_ids = prompt_ids[: config.rl_prompts] if config.rl_prompts else prompt_ids
        trainee = frozen_copy(policy).requires_grad_(True)
        trainee.config.use_cache = False
        k = config.rl_num_samples
        settings = OnlineSettings(steps=config.rl_steps, batch_size=config.rl_batch_size, num_samples=k,
                                  max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                  minibatch_size=config.rl_batch_size * k, learning_rate=config.rl_learning_rate,
                                  kl_coef=config.rl_kl_coef, sample_every=max(1, config.rl_steps // 4), seed=config.seed,
                                  gen_batch_size=config.gen_batch_size, decode_dtype=config.decode_dtype)
        tracker = oo.GoldTracker(proxy, gold)
        run = RunDir(out / "rl")
        run.save_config(config)
        points += oo.train_rl(trainee, tokenizer, tracker, rl_prompts, rl_ids, settings, run, method=config.rl_method,
                              ref_model=policy)
        summary["rl"] = {"method": config.rl_method, "steps": config.rl_steps, "prompts_per_step": config.rl_batch_size,
                         "samples_per_prompt": k, "kl_coef": config.rl_kl_coef}

    _write(summary, points, out)
    for p in points:
        _say(f"{p.method} {'n' if p.method == 'best_of_n' else 'step'}={p.x}: KL {p.kl:.3f}, proxy {p.proxy:.3f}, gold {p.gold:.3f}")
    _say(f"wrote {out / 'overoptimization.json'}, overoptimization.png and report.html")
    return 0


def _write(summary: dict, points: list, out: Path) -> None:
    """overoptimization.json, overoptimization.png and report.html, as they stand."""
    from preftune.eval import report as rp

    summary["points"] = [p.as_dict() for p in points]
    (out / "overoptimization.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "overoptimization.png").write_bytes(rp.plot_overoptimization(summary["points"]))
    report = rp.Report("preftune reward over-optimisation", hide_not_run=True)
    add_report_section(report, summary, str(out / "overoptimization.json"))
    report.write(out)


def add_report_section(report, summary: dict, source: str = "") -> None:
    from preftune.eval import report as rp

    text = ("Gold and proxy reward against KL(π ‖ π_init) (Gao et al. 2022). The proxy reward model was trained on "
            "policy samples labelled by the gold reward; the policy is then optimised against the proxy by best-of-n "
            "(KL = log n − (n−1)/n, rewards estimated without bias from max_n samples per prompt) and by RL (KL: the "
            "sampled estimate of each step's rollout). Where the proxy keeps rising while the gold flattens or falls, "
            "the policy exploits the proxy's errors.")
    if source:
        text += f"\n\nFrom {source}."
    rows = [{"method": p["method"], "n / step": p["x"], "KL": round(p["kl"], 4), "sqrt KL": round(p["sqrt_kl"], 3),
             "proxy": round(p["proxy"], 4), "gold": round(p["gold"], 4)} for p in summary["points"]]
    tables = [("gold and proxy reward against KL", rows)]
    if summary.get("labels"):
        lab, tr = summary["labels"], summary.get("proxy_training") or {}
        ev = (tr.get("eval") or {})
        tables.insert(0, ("the proxy", [{"labelled pairs": lab["labelled"], "ties left out": lab["ties"],
                                         "identical left out": lab["identical"], "training steps": tr.get("steps"),
                                         "held-out accuracy vs gold labels": ev.get("accuracy")}]))
    report.add("overoptimization", text=text, tables=tables,
               images=[("gold and proxy reward against sqrt KL", rp.plot_overoptimization(summary["points"]))], data=summary)


OVEROPTIMIZATION = Command("overoptimization", "Reward over-optimisation: gold and proxy reward against KL (best-of-n, RLOO)",
                           OveroptimizationConfig, run_overoptimization)
