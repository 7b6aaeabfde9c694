"""preftune DPO against TRL's DPOTrainer, side by side, on the same pairs, model and settings.

    python bench/dpo_vs_trl.py --json OUT [--pairs 64] [--max-length 512] [--batch-size 4] [--threads 2]

Both sides: the default model (SmolLM2-135M-Instruct), the first N pairs of ../shared/data/hh_harmless/pairs.jsonl.gz
(conversational: the shared dialogue is the prompt), full fine-tuning, fp32 on CPU, sigmoid loss, β 0.1, lr 1e-6
constant after no warm-up, one epoch of N/batch steps. Each side runs in its own child process (so its peak RSS
is its own); the throughput is pairs / wall time of everything after the model is loaded (tokenisation, the
reference log-probs, training, saving for preftune; dataset preparation and train() for TRL).
Writes {"preftune_pairs_per_s", "trl_pairs_per_s", "ratio", "preftune_peak_rss_gb", "trl_peak_rss_gb",
"step1_loss_abs_diff", ...}.
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
HH = REPO.parent / "shared" / "data" / "hh_harmless" / "pairs.jsonl.gz"


def write_pairs(n: int, out: Path) -> int:
    sys.path.insert(0, str(REPO))
    from preftune.data.convert import load_examples

    pairs = load_examples(HH, "hh", limit=n).examples
    with out.open("w") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                                "rejected": [{"role": "assistant", "content": p.rejected}]}) + "\n")
    return len(pairs)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB


def side_preftune(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from preftune.cli import main
    from preftune.models.loading import load_model

    load_model()  # convert / warm the cache outside the timed region, as TRL's side loads before timing
    out = Path(args.workdir) / "preftune-run"
    steps = args.pairs // args.batch_size
    start = time.perf_counter()
    code = main(["dpo", "--data", args.data, "--output-dir", str(out), "--max-length", str(args.max_length),
                 "--batch-size", str(args.batch_size), "--max-steps", str(steps), "--learning-rate", "1e-6",
                 "--warmup", "0", "--lr-scheduler", "constant", "--beta", "0.1", "--loss", "sigmoid", "--seed", "0"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"preftune dpo exited with {code}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in rows if r["step"] == 1 and "loss" in r)
    return {"pairs_per_s": args.pairs / seconds, "seconds": seconds, "step1_loss": step1["loss"],
            "peak_rss_gb": peak_rss_gb(), "steps": steps}


def side_trl(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    from trl import DPOConfig, DPOTrainer

    from preftune.models.loading import load_model, load_tokenizer

    model, tok = load_model(), load_tokenizer()
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
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "pairs.jsonl"
        n = write_pairs(args.pairs, data)
        assert n == args.pairs, f"only {n} pairs"
        for side in ("preftune", "trl"):
            out = Path(work) / f"{side}.json"
            cmd = [sys.executable, __file__, "--side", side, "--json", str(out), "--data", str(data), "--workdir", work,
                   "--pairs", str(args.pairs), "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads)]
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
                     "precision": "fp32", "fine_tuning": "full"},
    }
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
