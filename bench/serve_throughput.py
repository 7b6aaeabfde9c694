"""``preftune serve`` throughput: N clients at once against the same N requests sent one at a time.

    OMP_NUM_THREADS=2 flock /tmp/preftune-heavy.lock .venv/bin/python bench/serve_throughput.py --json OUT

The default model is served in this process (uvicorn in a thread, the same app ``preftune serve`` runs) on
loopback; the requests are chat completions of different questions at temperature 1 with a seed each, up to
--max-tokens tokens, sent through :class:`preftune.remote.OpenAIClient` (no cache) with ``concurrency=1`` (one at a
time: every request is its own engine call) and ``concurrency=N`` (the batching queue collects them for
--batch-wait-ms and decodes them together). The two runs alternate, best of --repeats each. Reported: wall time,
completion tokens per second (the server's ``usage``), and the engine calls the queue made.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time

import preftune  # noqa: F401  -- before torch: caps oneDNN so bf16 matmuls are safe

QUESTIONS = [
    "How do I bake bread at home?", "What is the capital of France?", "Write a haiku about rain.",
    "Explain photosynthesis briefly.", "Give me three tips for sleeping better.", "What is 17 times 23?",
    "How can I learn Python quickly?", "Tell me a joke about cats.", "Why is the sky blue?",
    "What should I pack for a beach trip?", "How do vaccines work?", "Name three uses of vinegar.",
    "What is a good name for a goldfish?", "How do I change a bike tyre?", "Summarise the plot of Hamlet.",
    "What is the boiling point of water?",
]


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")
        flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines() if ln.startswith("Flags")), [])
        keep = [f for f in flags if f.startswith(("avx512", "amx", "avx2"))]
        return f"{model}; {' '.join(keep)}"
    except OSError:
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from preftune.models.loading import load_model, load_tokenizer
    from preftune.remote import OpenAIClient
    from preftune.serve.app import ServeOptions, ServerThread, create_app

    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    app = create_app(model, tokenizer, ServeOptions(name="bench", max_batch_size=args.clients, batch_wait_ms=args.batch_wait_ms))
    queue = app.state.server.queue
    bodies = [{"model": "bench", "messages": [{"role": "user", "content": q}], "max_tokens": args.max_tokens,
               "temperature": 1.0, "seed": i} for i, q in enumerate((QUESTIONS * 8)[: args.clients])]
    # a seeded sampling request runs alone (its reply must not depend on who else waits); drop the seed to batch
    bodies = [{k: v for k, v in b.items() if k != "seed"} for b in bodies]
    results: dict[str, list[dict]] = {"one_at_a_time": [], "concurrent": []}
    with ServerThread(app) as server:
        OpenAIClient(server.base_url, api_key_env="").chat_completions(bodies[:2])  # warm-up
        for _ in range(args.repeats):
            for mode, concurrency in (("one_at_a_time", 1), ("concurrent", args.clients)):
                client = OpenAIClient(server.base_url, api_key_env="", concurrency=concurrency, timeout=600)
                queue.batches.clear()
                start = time.perf_counter()
                replies = client.chat_completions(bodies, desc=mode)
                wall = time.perf_counter() - start
                tokens = sum(r["usage"]["completion_tokens"] for r in replies)
                results[mode].append({"wall_s": wall, "completion_tokens": tokens, "tokens_per_s": tokens / wall,
                                      "engine_calls": len(queue.batches), "rows_per_call": [b[1] for b in queue.batches]})
                client.close()
    best = {mode: max(runs, key=lambda r: r["tokens_per_s"]) for mode, runs in results.items()}
    summary = {"model": args.model, "clients": args.clients, "max_tokens": args.max_tokens,
               "batch_wait_ms": args.batch_wait_ms, "torch_threads": torch.get_num_threads(), "cpu": cpu_line(),
               "best": best, "speedup": best["concurrent"]["tokens_per_s"] / best["one_at_a_time"]["tokens_per_s"],
               "runs": results}
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
