"""`preftune annotate serve` as a real server process: killed with SIGKILL in the middle of a burst of submissions
and restarted, it has every acknowledged submission exactly once, and retries of the unacknowledged ones never
duplicate."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from preftune.feedback.store import FeedbackStore

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "preftune.cli", "annotate", "serve", "--db", str(db), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 60 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_burst_loses_and_duplicates_nothing(tmp_path):
    db = tmp_path / "feedback.sqlite"
    store = FeedbackStore(db, overlap=1)
    store.add_items("pairwise", [(f"prompt {i}", [f"a{i}", f"b{i}"]) for i in range(400)])
    tokens = [store.add_annotator(f"ann{i}") for i in range(6)]
    store.add_annotator("admin", admin=True)
    store.close()

    port = free_port()
    server = start_server(db, port)
    base = f"http://127.0.0.1:{port}"
    acked: list[tuple[str, str, int]] = []       # (token, submission id, assignment id) the server acknowledged
    unacked: list[tuple[str, str, int]] = []     # sent, reply never seen (the kill came first)
    lock = threading.Lock()
    kill_after = 60

    def annotate(token: str, who: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
            for n in range(200):
                try:
                    item = client.get("/api/next").json()["item"]
                except httpx.HTTPError:
                    return
                sid = f"burst-{who}-{n:05d}"
                try:
                    r = client.post("/api/submit", json={"submission_id": sid, "assignment_id": item["assignment_id"],
                                                         "answer": {"choice": "left"}})
                except httpx.HTTPError:
                    with lock:
                        unacked.append((token, sid, item["assignment_id"]))
                    return
                assert r.status_code == 200, r.text
                with lock:
                    acked.append((token, sid, item["assignment_id"]))

    def killer() -> None:
        while True:
            with lock:
                if len(acked) >= kill_after:
                    break
            time.sleep(0.001)
        os.kill(server.pid, signal.SIGKILL)

    threads = [threading.Thread(target=annotate, args=(t, i)) for i, t in enumerate(tokens)] + [threading.Thread(target=killer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    server.wait(timeout=10)
    assert server.returncode == -signal.SIGKILL
    assert len(acked) >= kill_after and len(acked) < 6 * 200  # killed mid-burst

    server = start_server(db, port)  # the restarted server recovers the WAL
    try:
        counts = Counter(r[0] for r in sqlite3.connect(db).execute("SELECT submission_id FROM submissions"))
        assert all(counts[sid] == 1 for _, sid, _ in acked), "an acknowledged submission is missing or doubled"
        assert max(counts.values()) == 1
        # the clients retry what they never saw acknowledged, with the same ids: nothing is doubled
        for token, sid, assignment in unacked + acked[:5]:
            r = httpx.post(f"{base}/api/submit", headers={"Authorization": f"Bearer {token}"}, timeout=10,
                           json={"submission_id": sid, "assignment_id": assignment, "answer": {"choice": "left"}})
            assert r.status_code == 200 and r.json()["submission_id"] == sid
        counts = Counter(r[0] for r in sqlite3.connect(db).execute("SELECT submission_id FROM submissions"))
        assert all(counts[sid] == 1 for _, sid, _ in acked + unacked) and max(counts.values()) == 1
        assert sum(counts.values()) == len(acked) + len(unacked)
    finally:
        stop(server)
