"""Load test of `preftune annotate serve` on loopback: N concurrent annotators × M submissions each (httpx async).

Each simulated annotator loops: ``GET /api/next`` (its next item), ``POST /api/submit`` (an answer with a fresh
client-made id). Afterwards the database is checked: every acknowledged submission present exactly once, no
assignment answered twice, and the count of rows equal to the count of acknowledgements. Reports p50 / p95 / p99
latency of both calls and the submissions per second.

    python bench/annotate_load.py --annotators 50 --submissions 40 --json bench/results/annotate_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_line() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{fields.get('Model name', '?').strip()}, {os.cpu_count()} logical CPUs, flags: {' '.join(wanted)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int, overlap: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "preftune.cli", "annotate", "serve", "--db", str(db), "--port", str(port),
                             "--overlap", str(overlap)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


async def annotator(base: str, token: str, who: int, submissions: int, lat_next: list, lat_submit: list, acked: list) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for n in range(submissions):
            t = time.perf_counter()
            r = await client.get("/api/next")
            lat_next.append(time.perf_counter() - t)
            r.raise_for_status()
            item = r.json()["item"]
            if item is None:
                raise SystemExit(f"annotator {who} ran out of items after {n}")
            sid = f"load-{who:03d}-{n:05d}"
            t = time.perf_counter()
            r = await client.post("/api/submit", json={"submission_id": sid, "assignment_id": item["assignment_id"],
                                                       "answer": {"choice": "left" if (who + n) % 3 else "right"}})
            lat_submit.append(time.perf_counter() - t)
            r.raise_for_status()
            acked.append(sid)


def pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1), "max_ms": round(float(a.max()), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--submissions", type=int, default=40)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from preftune.feedback.store import FeedbackStore

    folder = Path(tempfile.mkdtemp(prefix="annotate-load-"))
    db = folder / "feedback.sqlite"
    store = FeedbackStore(db, overlap=args.overlap)
    n_items = args.annotators * args.submissions // args.overlap + args.submissions
    store.add_items("pairwise", [(f"prompt {i}", [f"answer a {i}", f"answer b {i}"]) for i in range(n_items)])
    tokens = [store.add_annotator(f"ann{i:03d}") for i in range(args.annotators)]
    store.add_annotator("admin", admin=True)
    store.close()

    port = free_port()
    server = start_server(db, port, args.overlap)
    lat_next: list[float] = []
    lat_submit: list[float] = []
    acked: list[str] = []
    try:
        async def run_all():
            await asyncio.gather(*(annotator(f"http://127.0.0.1:{port}", t, i, args.submissions, lat_next, lat_submit, acked)
                                   for i, t in enumerate(tokens)))

        t0 = time.perf_counter()
        asyncio.run(run_all())
        wall = time.perf_counter() - t0
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    conn = sqlite3.connect(db)
    rows = Counter(r[0] for r in conn.execute("SELECT submission_id FROM submissions"))
    doubly = conn.execute("SELECT COUNT(*) FROM (SELECT assignment_id FROM submissions WHERE undone = 0 "
                          "GROUP BY assignment_id HAVING COUNT(*) > 1)").fetchone()[0]
    expected = args.annotators * args.submissions
    result = {
        "annotators": args.annotators, "submissions_each": args.submissions, "overlap": args.overlap,
        "acknowledged": len(acked), "rows": sum(rows.values()),
        "lost": sum(1 for s in acked if rows[s] == 0), "duplicated": sum(1 for c in rows.values() if c > 1),
        "assignments_answered_twice": doubly,
        "wall_s": round(wall, 2), "submissions_per_s": round(len(acked) / wall, 1),
        "submit": pct(lat_submit), "next": pct(lat_next), "cpu": cpu_line(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = (len(acked) == expected and result["rows"] == expected and result["lost"] == 0 and result["duplicated"] == 0
          and doubly == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
