"""preftune RLOO and GRPO against TRL 1.x RLOOTrainer / GRPOTrainer (the main venv's trl, a test-only dependency).

    OMP_NUM_THREADS=2 flock /tmp/preftune_heavy.lock .venv/bin/python bench/rloo_vs_trl.py --json OUT

Same default model (full fine-tuning, fp32, CPU), the same 16 chat prompts x 4 samples per step, 48 new tokens
at temperature 1 (top-p 1, top-k off), one optimizer step per rollout over all 64 samples (one epoch, one minibatch:
TRL's num_iterations=1, steps_per_generation=1), PPO clip 0.2, the same transparent Python reward, learning rate
1e-6. The KL coefficient is each TRL trainer's own default unless given: RLOO beta 0.05 (RLOOConfig.beta; a
reference model and a KL penalty in the reward), GRPO beta 0.0 (GRPOConfig.beta in TRL 1.16: no reference model;
--grpo-beta 0.04 for the DeepSeekMath setting, where both sides then run a reference pass). Samples/s counts
generated responses per second of training (TRL: its train_runtime; preftune: the loop's steps, after model loading).

Each side runs --steps steps (default 3) in a fresh trainer. The first step of a process is a warm-up on both sides
(every activation buffer is touched for the first time: ~1.2 M page faults, ~5 s here), so the headline ratios
("rloo_ratio", "grpo_ratio") are steady-state: samples per second over steps 2..n, each side's steps timed alone
(TRL: from on_step_begin to on_step_end, which brackets its generation, scoring and update; preftune: its loop's
step). The ratios over all steps, first one included ("*_ratio_all_steps"), and every step's time are reported
too. Both run in one process, preftune first: its online trainer makes glibc keep freed memory
(preftune/memory.py), and TRL's run inherits the same setting.
Writes {"rloo_ratio", "grpo_ratio", ...} and the settings of both sides.

Share of the peak (issue 18): before the sides run, the CPU ("cpu") and the fp32 (and native bf16) matmul peak
("peak_gflops") are measured; both sides are charged the same model FLOPs per step (bench/_online_common.py
share_of_peak: generation, the reference forward when beta > 0, one epoch of training on prompt + response) from
the token counts each side generated (preftune: its rollouts' ids; TRL: what its _generate returned). Keys per
method: "preftune_rloo_mfu_update" (preftune's update alone), "{preftune,trl}_rloo_mfu_after_generation" (the split
both allow: everything after the responses exist), "*_mfu_whole_step", "*_mfu_generation", the same for grpo, and
the details under result[method]["share_of_peak"]. ``--model DIR`` runs both sides on another model (a tiny one
checks the wiring).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import preftune  # noqa: E402,F401  -- before torch: caps oneDNN so the bf16 sampler is safe
import torch  # noqa: E402

from _hardware import ModelShape, hardware_record  # noqa: E402
from _online_common import (QUESTIONS, StepTimer, compare, compare_share, polite_reward, preftune_samples_per_s,  # noqa: E402
                            preftune_timings, share_of_peak, steady_state, trl_timings)


def trl_samples_per_s(kind: str, *, num_prompts: int, num_samples: int, max_new_tokens: int, steps: int, beta: float,
                      model: str | None = None) -> dict:
    from datasets import Dataset

    from preftune.models.loading import load_model, load_tokenizer

    name = model
    tok = load_tokenizer(name)
    model = load_model(name)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS[:num_prompts]] * steps)
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=num_prompts * num_samples,
                  num_generations=num_samples, max_completion_length=max_new_tokens, max_steps=steps,
                  learning_rate=1e-6, beta=beta, temperature=1.0, use_cpu=True, bf16=False, report_to="none",
                  logging_steps=1, save_strategy="no", seed=0)
    if kind == "rloo":
        from trl import RLOOConfig, RLOOTrainer

        trainer = RLOOTrainer(model=model, reward_funcs=polite_reward, args=RLOOConfig(**common), train_dataset=ds,
                              processing_class=tok)
    else:
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(model=model, reward_funcs=polite_reward, args=GRPOConfig(**common), train_dataset=ds,
                              processing_class=tok)
    timer = StepTimer(trainer)
    out = trainer.train()
    runtime = out.metrics["train_runtime"]
    n = steps * num_prompts * num_samples
    return {"samples_per_s": n / runtime, "seconds": runtime, "samples": n,
            **steady_state(timer.step_s, num_prompts * num_samples), "step_s": [round(t, 2) for t in timer.step_s],
            "generate_s": [round(t, 2) for t in timer.generate_s], "step_lengths": timer.lengths,
            "timings_s": {"step": timer.step_s, "generate": timer.generate_s}}


def method_share(ours: dict, theirs: dict, shape, peak: float | None, beta: float) -> dict:
    """Both sides' share of the fp32 peak for one method (the same model FLOPs: no reward model, a reference pass
    when beta > 0, one epoch)."""
    kw = dict(reference_pass=beta > 0, reward_model=False, epochs=1)
    trl_side = trl_timings(theirs)
    return {"preftune": share_of_peak(preftune_timings(ours), shape, peak, **kw),
            "trl": share_of_peak(trl_side, shape, peak, **kw) if trl_side else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", default="rloo,grpo")
    ap.add_argument("--rloo-beta", type=float, default=0.05, help="TRL 1.16 RLOOConfig default")
    ap.add_argument("--grpo-beta", type=float, default=0.0, help="TRL 1.16 GRPOConfig default")
    ap.add_argument("--model", default=None, help="a model folder for both sides (default: the default model)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    hardware = hardware_record(torch.get_num_threads())  # before the sides: this machine's peak, in this run
    shape = ModelShape.from_pretrained(args.model)
    peak = hardware["peak_gflops"]["fp32"]
    from preftune.rl.pg import PGSettings, PolicyGradient

    import trl

    result: dict = {"settings": vars(args) | {
        "trl_version": trl.__version__, "torch_threads": torch.get_num_threads(),
        "both_sides": "same model/prompts/reward, k samples per prompt, max new tokens, temperature 1, top_p 1, top_k 0, "
                      "one epoch (TRL num_iterations=1) of one minibatch of all samples, clip 0.2, lr 1e-6, the beta below",
        "trl_defaults_checked": {"RLOOConfig.beta": 0.05, "GRPOConfig.beta": 0.0, "num_iterations": 1,
                                 "steps_per_generation": 1, "GRPOConfig.loss_type": "dapo (preftune: per-sequence mean; same cost)",
                                 "GRPOConfig.scale_rewards": "group (preftune: scale_rewards=True)"}},
        "cpu": hardware["cpu"], "peak_gflops": hardware["peak_gflops"], "model_shape": vars(shape)}
    dims = dict(num_prompts=args.num_prompts, num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, steps=args.steps)
    for method in args.methods.split(","):
        beta = args.rloo_beta if method == "rloo" else args.grpo_beta
        ours = preftune_samples_per_s(PolicyGradient(PGSettings(method=method, num_samples=args.num_samples)),
                                      minibatch_size=args.num_prompts * args.num_samples, kl_coef=beta, model=args.model,
                                      **dims)
        print(method, "preftune", json.dumps(ours), flush=True)
        theirs = trl_samples_per_s(method, beta=beta, model=args.model, **dims)
        print(method, "trl", json.dumps(theirs), flush=True)
        share = method_share(ours, theirs, shape, peak, beta)
        result[method] = {"preftune": ours, "trl": theirs, "beta": beta, "share_of_peak": share}
        result.update(compare(ours, theirs, method))
        result.update(compare_share(share["preftune"], share["trl"], method))
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if "ratio" in k or "mfu" in k}))


if __name__ == "__main__":
    main()
