"""preftune DPO against TRL's DPOTrainer, side by side, on the same pairs, model and settings.

    python bench/dpo_vs_trl.py --json OUT [--pairs 64] [--max-length 512] [--batch-size 4] [--threads 2]

Both sides: the default model (SmolLM2-135M-Instruct), the first N pairs of ../shared/data/hh_harmless/pairs.jsonl.gz
(conversational: the shared dialogue is the prompt), full fine-tuning, fp32 on CPU, sigmoid loss, β 0.1, lr 1e-6
constant after no warm-up, one epoch of N/batch steps. Each side runs in its own child process (so its peak RSS
is its own); the throughput is pairs / wall time of everything after the model is loaded (tokenisation, the
reference log-probs, training, saving for preftune; dataset preparation and train() for TRL).
Writes {"preftune_pairs_per_s", "trl_pairs_per_s", "ratio", "preftune_peak_rss_gb", "trl_peak_rss_gb",
"step1_loss_abs_diff", ...}.

Share of the peak (issue 18): the parent records the CPU and probes the fp32 (and native bf16) matmul peak before
the sides run ("cpu", "peak_gflops"), tokenises the pairs once with preftune's tokenizer ("tokens"), and charges
both sides the same model FLOPs (bench/_hardware.py): policy training 6·N per token plus the reference forward
2·N per token (with the attention term), each pair's prompt once. A side's time is not split between its
reference pass and its training here, so the keys are "preftune_mfu_whole_run" / "trl_mfu_whole_run" (and
"*_achieved_gflops_whole_run") over the same wall time as the pairs/s. preftune's reference log-probs are computed
before its training loop, so its update alone is timed too ("preftune_mfu_update": 6·N per token over the loop's
seconds); TRL's reference forward runs inside its steps, so it has no update-alone figure. ``--model DIR`` runs both sides on another
model (a tiny one checks the wiring).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
HH = REPO.parent / "shared" / "data" / "hh_harmless" / "pairs.jsonl.gz"


def write_pairs(n: int, out: Path) -> list:
    sys.path.insert(0, str(REPO))
    from preftune.data.convert import load_examples

    pairs = load_examples(HH, "hh", limit=n).examples
    with out.open("w") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                                "rejected": [{"role": "assistant", "content": p.rejected}]}) + "\n")
    return pairs


def pair_lengths(pairs, tokenizer) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts of each pair: the chat-templated prompt (encode_prompt) and each
    completion with its one EOS (encode_completion), as preftune tokenises them; the count both sides are charged."""
    from preftune.data.tokenize import encode_completion, encode_prompt

    return [(len(encode_prompt(tokenizer, p.prompt)), len(encode_completion(tokenizer, p.chosen)),
             len(encode_completion(tokenizer, p.rejected))) for p in pairs]


def model_flops(shape, lengths: list[tuple[int, int, int]], pairs_trained: int) -> float:
    """DPO's model FLOPs for ``pairs_trained`` pairs (one epoch): per pair the policy's training (3 × the pair's
    forward) and the reference model's forward (1 ×): 4 × pair_forward_flops, the mean pair of ``lengths``."""
    from _hardware import pair_forward_flops

    per_pair = sum(4 * pair_forward_flops(shape, p, c, r) for p, c, r in lengths) / len(lengths)
    return per_pair * pairs_trained


def share_of_peak(p: dict, t: dict, hardware: dict, shape, lengths, pairs_trained: int, max_length: int) -> dict:
    """The issue-18 keys of the summary: the machine, the token counts and each side's achieved GFLOP/s and share of
    the fp32 peak over its whole timed run (the same model FLOPs for both)."""
    from _hardware import FORMULA, rates

    flops = model_flops(shape, lengths, pairs_trained)
    peak = hardware["peak_gflops"]["fp32"]
    out = {"cpu": hardware["cpu"], "peak_gflops": hardware["peak_gflops"], "model_shape": vars(shape),
           "tokens": {"pairs": len(lengths), "pairs_trained": pairs_trained,
                      "prompt": sum(x[0] for x in lengths), "chosen": sum(x[1] for x in lengths),
                      "rejected": sum(x[2] for x in lengths),
                      "pairs_over_max_length": sum(x[0] + max(x[1], x[2]) > max_length for x in lengths),
                      "source": "the bench's pairs tokenised once in the parent with preftune's tokenizer "
                                "(encode_prompt, encode_completion); both sides train on the same pairs"},
           "model_flops": {"gflop": round(flops / 1e9, 3),
                           "counted": "policy training (6N per token) + reference forward (2N per token), attention "
                                      "term included, each pair's prompt once; " + FORMULA}}
    for name, side in (("preftune", p), ("trl", t)):
        r = rates(flops, side["seconds"], peak)
        out[f"{name}_achieved_gflops_whole_run"], out[f"{name}_mfu_whole_run"] = r["achieved_gflops"], r["mfu"]
    if p.get("train_loop_seconds"):  # preftune's reference pass runs before its loop: the update alone is timed
        r = rates(flops * 3 / 4, p["train_loop_seconds"], peak)  # training alone: 3 of the 4 pair forwards
        out["preftune_achieved_gflops_update"], out["preftune_mfu_update"] = r["achieved_gflops"], r["mfu"]
        out["model_flops"]["update_gflop"] = r["model_gflop"]
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB


def side_preftune(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from preftune.cli import main
    from preftune.models.loading import load_model

    load_model(args.model)  # convert / warm the cache outside the timed region, as TRL's side loads before timing
    import preftune.train.loop as loop

    inner, loop_seconds = loop.train, []

    def timed_train(*a, **kw):  # the training loop alone (run_dpo imports train when it runs, so this is what it calls)
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            loop_seconds.append(time.perf_counter() - t0)

    loop.train = timed_train
    out = Path(args.workdir) / "preftune-run"
    steps = args.pairs // args.batch_size
    model = ["--model", args.model] if args.model else []
    start = time.perf_counter()
    code = main(["dpo", *model, "--data", args.data, "--output-dir", str(out), "--max-length", str(args.max_length),
                 "--batch-size", str(args.batch_size), "--max-steps", str(steps), "--learning-rate", "1e-6",
                 "--warmup", "0", "--lr-scheduler", "constant", "--beta", "0.1", "--loss", "sigmoid", "--seed", "0"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"preftune dpo exited with {code}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in rows if r["step"] == 1 and "loss" in r)
    return {"pairs_per_s": args.pairs / seconds, "seconds": seconds, "step1_loss": step1["loss"],
            "peak_rss_gb": peak_rss_gb(), "steps": steps, "train_loop_seconds": sum(loop_seconds)}


def side_trl(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    from trl import DPOConfig, DPOTrainer

    from preftune.models.loading import load_model, load_tokenizer

    model, tok = load_model(args.model), load_tokenizer(args.model)
    model.train()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    ds = datasets.Dataset.from_list(rows)
    steps = args.pairs // args.batch_size
    config = DPOConfig(output_dir=str(Path(args.workdir) / "trl-run"), per_device_train_batch_size=args.batch_size,
                       max_steps=steps, learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0,
                       max_length=args.max_length, beta=0.1, loss_type=["sigmoid"], logging_steps=1,
                       save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0,
                       dataloader_num_workers=0, disable_tqdm=False)
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=ds, processing_class=tok)
    trainer.train()
    seconds = time.perf_counter() - start
    step1 = next(r for r in trainer.state.log_history if "loss" in r)
    return {"pairs_per_s": args.pairs / seconds, "seconds": seconds, "step1_loss": step1["loss"],
            "peak_rss_gb": peak_rss_gb(), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, help="where to write the result")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="a model folder for both sides (default: the default model)")
    ap.add_argument("--side", choices=["preftune", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:  # a child: run one side, print its figures
        result = side_preftune(args) if args.side == "preftune" else side_trl(args)
        Path(args.json).write_text(json.dumps(result))
        return
    if not HH.exists():
        raise SystemExit(f"{HH} is absent: the benchmark needs ../shared/data beside the checkout")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PREFTUNE_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    from _hardware import ModelShape, hardware_record
    from preftune.models.loading import load_tokenizer

    hardware = hardware_record(args.threads)  # before the sides: the peak of this machine, in this run
    shape = ModelShape.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "pairs.jsonl"
        pairs = write_pairs(args.pairs, data)
        assert len(pairs) == args.pairs, f"only {len(pairs)} pairs"
        lengths = pair_lengths(pairs, load_tokenizer(args.model))
        for side in ("preftune", "trl"):
            out = Path(work) / f"{side}.json"
            cmd = [sys.executable, __file__, "--side", side, "--json", str(out), "--data", str(data), "--workdir", work,
                   "--pairs", str(args.pairs), "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads), *(["--model", args.model] if args.model else [])]
            print(f"[bench] {side} ...", flush=True)
            subprocess.run(cmd, check=True, env=env, cwd=REPO)
            results[side] = json.loads(out.read_text())
            print(f"[bench] {side}: {results[side]}", flush=True)
    p, t = results["preftune"], results["trl"]
    summary = {
        "preftune_pairs_per_s": round(p["pairs_per_s"], 4),
        "trl_pairs_per_s": round(t["pairs_per_s"], 4),
        "ratio": round(p["pairs_per_s"] / t["pairs_per_s"], 3),
        "preftune_peak_rss_gb": round(p["peak_rss_gb"], 3),
        "trl_peak_rss_gb": round(t["peak_rss_gb"], 3),
        "step1_loss_abs_diff": abs(p["step1_loss"] - t["step1_loss"]),
        "preftune_step1_loss": p["step1_loss"], "trl_step1_loss": t["step1_loss"],
        "preftune_seconds": round(p["seconds"], 1), "trl_seconds": round(t["seconds"], 1),
        "settings": {"pairs": args.pairs, "max_length": args.max_length, "batch_size": args.batch_size,
                     "threads": args.threads, "steps": p["steps"], "loss": "sigmoid", "beta": 0.1, "lr": 1e-6,
                     "precision": "fp32", "fine_tuning": "full", "model": args.model or "default"},
        **share_of_peak(p, t, hardware, shape, lengths, p["steps"] * args.batch_size, args.max_length),
    }
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
