"""preftune's reward trainer against TRL's RewardTrainer, side by side on HH-RLHF harmless pairs.

Both train the default model (SmolLM2-135M-Instruct, a new scalar head, full fine-tuning, fp32, CPU) for one epoch
on the same 80 % of ``../shared/data/hh_harmless/pairs.jsonl.gz`` (shuffled with ``--seed``), with the same
hyper-parameters (AdamW, learning rate, linear decay, no warm-up, batch size, gradient clipping 1.0, max length),
on the same token ids (preftune's tokenisation: the chat-templated prompt, then the response and one EOS; pairs
over ``--max-length`` are dropped for both), and are evaluated on the other 20 %: pairwise accuracy (chosen
scored above rejected), each model read its own way (preftune at the response's EOS; TRL with transformers'
sequence-classification head, which takes the rightmost token that is not the pad token).

Throughput is training pairs / wall seconds of the training loop alone (no model loading, tokenising or
evaluation). TRL runs without gradient checkpointing (its default turns it on, which is slower; preftune does not
checkpoint either).

    OMP_NUM_THREADS=2 flock /tmp/preftune_heavy.lock python bench/reward_vs_trl.py --json OUT.json [--limit 200 --eval-limit 100]

Writes ``{"preftune_accuracy", "trl_accuracy", "preftune_pairs_per_s", "trl_pairs_per_s", ...}``.

Share of the peak (issue 18): before the sides run, the CPU ("cpu") and the fp32 (and native bf16) matmul peak
("peak_gflops") are measured in this process; the training pairs' token counts ("tokens") come from the same
tokenisation both sides train on, and both are charged the same model FLOPs (bench/_hardware.py: 6·N per token
plus the attention term, each pair's prompt once) over their training-loop seconds: "preftune_achieved_gflops",
"preftune_mfu", "trl_achieved_gflops", "trl_mfu" (the update step alone). ``--model DIR`` runs both sides on
another causal LM (a tiny one checks the wiring).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh_harmless" / "pairs.jsonl.gz"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def load_split(args, tokenizer):
    from preftune.data.convert import load_examples
    from preftune.data.tokenize import encode_completion, encode_prompt

    pairs = load_examples(str(DATA), "hh", kind="preference", skip_bad_rows=True).examples
    random.Random(args.seed).shuffle(pairs)
    cut = int(0.8 * len(pairs))
    train, test = pairs[:cut], pairs[cut:]
    if args.limit:
        train = train[: args.limit]
    if args.eval_limit:
        test = test[: args.eval_limit]

    def fits(p):
        n = len(encode_prompt(tokenizer, p.prompt))
        return n + max(len(encode_completion(tokenizer, p.chosen)), len(encode_completion(tokenizer, p.rejected))) <= args.max_length

    return [p for p in train if fits(p)], [p for p in test if fits(p)], len(pairs)


def pair_lengths(pairs, tokenizer) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts: the token ids both sides train on (see run_trl's ids)."""
    from preftune.data.tokenize import encode_completion, encode_prompt

    return [(len(encode_prompt(tokenizer, p.prompt)), len(encode_completion(tokenizer, p.chosen)),
             len(encode_completion(tokenizer, p.rejected))) for p in pairs]


def share_of_peak(out: dict, hardware: dict, shape, lengths: list[tuple[int, int, int]]) -> dict:
    """The issue-18 keys: the machine, the training tokens, and each side's achieved GFLOP/s and share of the fp32
    peak over its training loop (one epoch of ``lengths``; the same model FLOPs for both sides)."""
    from _hardware import FORMULA, pair_forward_flops, rates

    flops = sum(3 * pair_forward_flops(shape, p, c, r) for p, c, r in lengths)
    res = {"cpu": hardware["cpu"], "peak_gflops": hardware["peak_gflops"], "model_shape": vars(shape),
           "tokens": {"pairs": len(lengths), "prompt": sum(x[0] for x in lengths), "chosen": sum(x[1] for x in lengths),
                      "rejected": sum(x[2] for x in lengths),
                      "source": "the training pairs as both sides receive them (preftune's encode_prompt + "
                                "encode_completion), counted in the parent; one epoch"},
           "model_flops": {"gflop": round(flops / 1e9, 3),
                           "counted": "reward-model training, 6N per token with the attention term, each pair's "
                                      "prompt once; " + FORMULA}}
    for side in ("preftune", "trl"):
        if f"{side}_train_seconds" in out:
            r = rates(flops, out[f"{side}_train_seconds"], hardware["peak_gflops"]["fp32"])
            res[f"{side}_achieved_gflops"], res[f"{side}_mfu"] = r["achieved_gflops"], r["mfu"]
    return res


def write_pairs(pairs, path: Path) -> None:
    with path.open("w") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")


def run_preftune(args, train, test, work: Path) -> dict:
    from preftune.commands.reward import RewardTrainConfig
    from preftune.train.reward import train_reward

    write_pairs(train, work / "train.jsonl")
    write_pairs(test, work / "test.jsonl")
    config = RewardTrainConfig(data=str(work / "train.jsonl"), eval_data=str(work / "test.jsonl"),
                               output_dir=str(work / "preftune_run"), format="preference", objective="bradley_terry",
                               learning_rate=args.lr, batch_size=args.batch_size, num_epochs=1, max_length=args.max_length,
                               lr_scheduler="linear", warmup=0.0, max_grad_norm=1.0, seed=args.seed,
                               normalize=False, layout=args.layout, max_row_tokens=args.max_row_tokens,
                               **({"model": args.model} if args.model else {}))
    summary = train_reward(config)
    return {"preftune_accuracy": summary["eval"]["accuracy"], "preftune_ece": summary["eval"]["ece"],
            "preftune_train_seconds": summary["train_seconds"],
            "preftune_pairs_per_s": summary["train_examples"] / summary["train_seconds"],
            "preftune_last_loss": summary["last_metrics"].get("loss")}


def run_trl(args, train, test, tokenizer, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from preftune.data.tokenize import encode_completion, encode_prompt
    from preftune.models.loading import resolve_model_path

    def ids(p):
        prompt = encode_prompt(tokenizer, p.prompt)
        return prompt + encode_completion(tokenizer, p.chosen), prompt + encode_completion(tokenizer, p.rejected)

    rows = [dict(zip(("chosen_ids", "rejected_ids"), ids(p))) for p in train]
    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(args.model), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    config = RewardConfig(output_dir=str(work / "trl_run"), learning_rate=args.lr, per_device_train_batch_size=args.batch_size,
                          num_train_epochs=1, lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0,
                          weight_decay=0.0, max_length=args.max_length, gradient_checkpointing=False, bf16=False,
                          use_cpu=True, report_to="none", save_strategy="no", logging_steps=10, seed=args.seed,
                          dataloader_num_workers=0, disable_tqdm=os.environ.get("PREFTUNE_NO_PROGRESS") == "1")
    trainer = RewardTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    model = trainer.model.eval()
    wins = 0.0
    with torch.inference_mode():
        for p in test:
            c, r = ids(p)
            rc = model(input_ids=torch.tensor([c])).logits[0, 0].item()
            rr = model(input_ids=torch.tensor([r])).logits[0, 0].item()
            wins += 1.0 if rc > rr else 0.5 if rc == rr else 0.0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"trl_accuracy": wins / len(test), "trl_train_seconds": seconds, "trl_pairs_per_s": len(train) / seconds,
            "trl_last_logged_loss": losses[-1] if losses else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--limit", type=int, default=None, help="train on at most N pairs of the 80 %% split")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N pairs of the 20 %% split")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", default="auto", choices=["auto", "packed", "rows", "separate"])
    parser.add_argument("--max-row-tokens", type=int, default=None)
    parser.add_argument("--only", choices=["preftune", "trl"], default=None, help="run one side only")
    parser.add_argument("--model", default=None, help="a causal LM folder for both sides (default: the default model)")
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"skipped: {DATA} is absent (it lives in ../shared beside the checkout)", file=sys.stderr)
        return 0
    from _hardware import ModelShape, hardware_record  # imports preftune before torch

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from preftune.models.loading import load_tokenizer

    hardware = hardware_record(torch.get_num_threads())  # before the sides: this machine's peak, in this run
    tokenizer = load_tokenizer(args.model)
    train, test, total = load_split(args, tokenizer)
    out = {"train_pairs": len(train), "eval_pairs": len(test), "dataset_pairs": total, "max_length": args.max_length,
           "batch_size": args.batch_size, "learning_rate": args.lr, "epochs": 1, "limit": args.limit,
           "eval_limit": args.eval_limit, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "preftune"):
            out.update(run_preftune(args, train, test, work))
            out["preftune_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        if args.only in (None, "trl"):
            out.update(run_trl(args, train, test, tokenizer, work))
            out["peak_rss_gb_after_both"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if "trl_pairs_per_s" in out and "preftune_pairs_per_s" in out:
        out["throughput_ratio"] = out["preftune_pairs_per_s"] / out["trl_pairs_per_s"]
    out.update(share_of_peak(out, hardware, ModelShape.from_pretrained(args.model), pair_lengths(train, tokenizer)))
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
