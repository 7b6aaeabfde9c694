"""preftune PPO against TRL 0.28's PPO trainer (`trl.experimental.ppo`; TRL 1.x has none).

    OMP_NUM_THREADS=2 flock /tmp/preftune_heavy.lock .venv/bin/python bench/ppo_vs_trl.py --json OUT

TRL 0.28 runs in its own virtual environment, bench/.venv-trl028, which this script creates on first use:
a venv whose only own package is trl==0.28.0 (installed with --no-deps); a .pth file puts the main venv's
site-packages after it, so torch / transformers / accelerate / datasets are the main venv's and the main
venv itself is never modified (TRL 1.16 there is shadowed only inside the bench venv).

Settings, the same on both sides: the default model as policy (full fine-tuning, fp32, CPU, 2 threads), a reward
model = the default model with a freshly initialised scalar head (seeded, saved once, loaded by both), 32 chat
prompts (64: eight steps), batch 8 prompts per PPO step, 48 new tokens at temperature 1, one PPO epoch with one minibatch,
kl_coef 0.05, learning rate 1e-6. TRL trains a separate value model (its design); preftune uses its default, a
value head on the policy (one forward pass gives log-probs and values). Writes
{"preftune_samples_per_s", "trl_samples_per_s", "ratio"}: steady-state rates over steps 2..n (the first step of a
process is a warm-up on both sides; see rloo_vs_trl.py), with the all-steps ratio ("ratio_all_steps") and each
step's time beside them. Both processes keep freed memory for reuse (preftune/memory.py: preftune's online trainer
does it; the TRL worker is given the same setting, so the comparison is not of allocators).

Share of the peak (issue 18): before the sides run, the CPU ("cpu") and the fp32 (and native bf16) matmul peak
("peak_gflops") are measured; both sides are charged the same model FLOPs per step (bench/_online_common.py
share_of_peak: generation, the reference and reward-model forwards, one epoch of policy training; TRL's separate
value network is its design and not counted) from the token counts each side generated (preftune: its rollouts'
ids; TRL: the responses batch_generation returned, cut after the first EOS, and the prompts without their left
padding). Keys: "preftune_mfu_update" (preftune's update alone), "{preftune,trl}_mfu_after_generation" (the split
both allow), "*_mfu_whole_step", "*_mfu_generation", details under "share_of_peak". ``--model DIR`` runs both
sides on another model (a tiny one checks the wiring; its reward model is built beside the result).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-trl028"
sys.path.insert(0, str(HERE))
import preftune  # noqa: E402,F401  -- before torch: caps oneDNN so the bf16 sampler is safe


def ensure_trl028() -> Path:
    python = VENV / "bin" / "python"
    if python.exists():
        check = subprocess.run([str(python), "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
        if check.stdout.strip() == "0.28.0":
            return python
    subprocess.run([sys._base_executable, "-m", "venv", str(VENV)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "main_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "trl==0.28.0"], check=True)
    return python


def reward_model_dir(out: Path, model: str | None = None) -> Path:
    """The default model (or ``model``) with a seeded, freshly initialised scalar head, saved once for both sides."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from preftune.models.loading import load_tokenizer, resolve_model_path

    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(model), num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = load_tokenizer(model).pad_token_id
    rm.save_pretrained(out)
    load_tokenizer(model).save_pretrained(out)
    return out


class SeqClsReward:
    """Score prompt + response with a sequence-classification model at the last real token (what TRL's get_reward does)."""

    is_reward_function = True

    def __init__(self, path: Path, tokenizer):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        self.tok = tokenizer

    def __call__(self, prompts, responses):
        import torch

        from preftune.data.tokenize import encode_completion, encode_prompt

        seqs = [encode_prompt(self.tok, p) + encode_completion(self.tok, r) for p, r in zip(prompts, responses)]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), self.tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = self.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(-1) - 1
            return self.model.score(logits[torch.arange(len(seqs)), last]).squeeze(-1).float()


def trl_worker(args) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from _online_common import QUESTIONS
    from preftune.data.tokenize import encode_prompt
    from preftune.models.loading import load_tokenizer, resolve_model_path
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    from _online_common import steady_state

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    # the same allocator setting as preftune's side (its online trainer keeps freed memory: preftune/memory.py)
    from preftune.memory import retain_freed_memory

    retain_freed_memory()
    tok = load_tokenizer(args.model)
    tok.padding_side = "left"
    path = resolve_model_path(args.model)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rm = AutoModelForSequenceClassification.from_pretrained(args.rm, dtype=torch.float32)
    vm = AutoModelForSequenceClassification.from_pretrained(args.rm, dtype=torch.float32)
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS[: args.num_prompts]]
    ds = Dataset.from_dict({"input_ids": prompts})
    config = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
                       gradient_accumulation_steps=1, num_ppo_epochs=1, num_mini_batches=1,
                       total_episodes=args.num_prompts, response_length=args.max_new_tokens, temperature=1.0,
                       learning_rate=1e-6, kl_coef=0.05, stop_token="eos", use_cpu=True, bf16=False, report_to="none",
                       num_sample_generations=0, save_strategy="no", seed=0, local_rollout_forward_batch_size=args.batch_size)
    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         train_dataset=ds, value_model=vm)
    # its own loop calls only on_train_begin / on_step_end: a step is the time between two of those marks
    marks: list[float] = []
    generate_s: list[float] = []

    class Marks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    trainer.add_callback(Marks())
    generate = ppo_module.batch_generation
    lengths: list[dict] = []

    def timed_generation(*a, **kw):
        t0 = time.perf_counter()
        try:
            out = generate(*a, **kw)
        finally:
            generate_s.append(time.perf_counter() - t0)
        queries = a[1] if len(a) > 1 else kw["queries"]
        lengths.append(ppo_lengths(queries, out[0], tok.pad_token_id, tok.eos_token_id))
        return out

    ppo_module.batch_generation = timed_generation
    t = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - t
    step_s = [b - a for a, b in zip(marks, marks[1:])]
    Path(args.json).write_text(json.dumps({"samples_per_s": args.num_prompts / elapsed, "seconds": elapsed,
                                           "samples": args.num_prompts, **steady_state(step_s, args.batch_size),
                                           "step_s": [round(x, 2) for x in step_s],
                                           "generate_s": [round(x, 2) for x in generate_s], "step_lengths": lengths,
                                           "timings_s": {"step": step_s, "generate": generate_s}}))


def ppo_lengths(queries, query_responses, pad_id: int, eos_id: int) -> dict:
    """Token counts of one TRL PPO generation: each prompt without its left padding, each response up to and
    including its first EOS (TRL's stop_token="eos" truncation), as preftune counts its own rollouts.
    ``queries`` [B, P] left-padded; ``query_responses`` [B, P + R]."""
    width = queries.shape[1]
    prompts = []
    for row in queries.tolist():
        lead = next((i for i, t in enumerate(row) if t != pad_id), len(row))
        prompts.append(len(row) - lead)
    completions = []
    for row in query_responses[:, width:].tolist():
        completions.append(row.index(eos_id) + 1 if eos_id in row else len(row))
    return {"prompt": prompts, "completion": completions}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--trl-worker", action="store_true")
    ap.add_argument("--rm", default=None)
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--model", default=None, help="a model folder for both sides (default: the default model)")
    args = ap.parse_args()
    if args.trl_worker:
        return trl_worker(args)
    import torch

    from _hardware import ModelShape, hardware_record
    from _online_common import compare, compare_share, preftune_samples_per_s, preftune_timings, share_of_peak, trl_timings
    from preftune.models.loading import load_tokenizer
    from preftune.rl.ppo import PPO, PPOSettings

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    hardware = hardware_record(torch.get_num_threads())  # before the sides: this machine's peak, in this run
    shape = ModelShape.from_pretrained(args.model)
    rm_cache = HERE / ".cache" / "ppo-rm" if args.model is None else Path(tempfile.mkdtemp()) / "ppo-rm"
    rm = reward_model_dir(rm_cache, args.model)
    result: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("trl_worker", "rm")},
                    "cpu": hardware["cpu"], "peak_gflops": hardware["peak_gflops"], "model_shape": vars(shape)}
    import _online_common

    reward = SeqClsReward(rm, load_tokenizer(args.model))
    _online_common.polite_reward = lambda p, r: reward(p, r)  # the same reward model on both sides
    steps = args.num_prompts // args.batch_size
    ours = preftune_samples_per_s(PPO(PPOSettings()), num_prompts=args.batch_size, num_samples=1,
                                  max_new_tokens=args.max_new_tokens, steps=steps, minibatch_size=args.batch_size,
                                  value_head=True, model=args.model)
    print("preftune", json.dumps(ours), flush=True)
    result["preftune"] = ours
    result["preftune_samples_per_s"] = ours["samples_per_s"]
    # the same work for both sides: generation, the reference and reward-model forwards, one epoch of training
    work = dict(reference_pass=True, reward_model=True, epochs=1)
    peak = hardware["peak_gflops"]["fp32"]
    result["share_of_peak"] = {"preftune": share_of_peak(preftune_timings(ours), shape, peak, **work), "trl": None}
    if not args.skip_trl:
        python = ensure_trl028()
        out = Path(tempfile.mkdtemp()) / "trl.json"
        subprocess.run([str(python), __file__, "--trl-worker", "--json", str(out), "--rm", str(rm),
                        "--num-prompts", str(args.num_prompts), "--batch-size", str(args.batch_size),
                        "--max-new-tokens", str(args.max_new_tokens), *(["--model", args.model] if args.model else [])],
                       check=True,
                       # the main venv's editable install of preftune is not seen through the .pth chain: put the repo on the path
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))})
        theirs = json.loads(out.read_text())
        print("trl", json.dumps(theirs), flush=True)
        result["trl"] = theirs
        result.update(compare(ours, theirs))
        trl_side = trl_timings(theirs)
        result["share_of_peak"]["trl"] = share_of_peak(trl_side, shape, peak, **work) if trl_side else None
    result.update(compare_share(result["share_of_peak"]["preftune"], result["share_of_peak"]["trl"]))
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
