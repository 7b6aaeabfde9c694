"""The README's human-feedback walk-through, command by command, on a tiny model (the person answering is a function
calling the app's API, as the page does)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from preftune.cli import main
from preftune.feedback.app import create_app
from preftune.feedback.store import FeedbackStore


def answer_everything(db, token, choose) -> int:
    """Answer every item in the queue of ``token`` through the HTTP API; returns how many."""
    client = TestClient(create_app(FeedbackStore(db)))
    headers = {"Authorization": f"Bearer {token}"}
    n = 0
    while (item := client.get("/api/next", headers=headers).json()["item"]) is not None:
        r = client.post("/api/submit", headers=headers, json={"submission_id": f"walk-{n:06d}", "assignment_id": item["assignment_id"],
                                                              "answer": choose(item)})
        assert r.status_code == 200, r.text
        n += 1
    return n


def shorter(item):
    if item["task"] == "ranking":
        return {"order": sorted(range(len(item["responses"])), key=lambda i: len(item["responses"][i]))}
    a, b = (len(t) for t in item["responses"])
    return {"choice": "tie"} if a == b else {"choice": "left" if a < b else "right"}


def test_walkthrough(tmp_path, monkeypatch, capsys):
    from preftune.models.loading import tiny_model, tiny_tokenizer

    monkeypatch.chdir(tmp_path)
    tok = tiny_tokenizer("chatml")
    tiny_model(len(tok)).save_pretrained("tiny")
    tok.save_pretrained("tiny")
    gen = ["--max-new-tokens", "12"]
    # 1. candidates
    assert main(["generate", "--model", "tiny", "--prompts", "starter:train", "--limit", "6", "--num-samples", "4",
                 "--temperature", "0.8", "--output", "cands.jsonl", *gen]) == 0
    # 2. an annotator
    assert main(["annotate", "add-annotator", "alice", "--db", "feedback.sqlite"]) == 0
    link = capsys.readouterr().out.strip().splitlines()[-1]
    # 3. serve (the server itself runs in the SIGKILL and browser tests; here its items and the API in process)
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: None)
    assert main(["annotate", "serve", "--db", "feedback.sqlite", "--prompts", "starter:train", "--limit", "6",
                 "--candidates", "cands.jsonl", "--tasks", "pairwise", "ranking", "--pairs-per-prompt", "2"]) == 0
    out = capsys.readouterr().out
    assert "admin statistics page (keep it private): http://127.0.0.1:8000/stats/" in out and "annotators: alice" in out
    assert answer_everything("feedback.sqlite", link.rsplit("/", 1)[1], shorter) > 0
    # 4. statistics and exports
    assert main(["annotate", "stats", "--db", "feedback.sqlite"]) == 0
    assert main(["annotate", "export", "--db", "feedback.sqlite", "--task", "pairwise", "--out", "pairs.jsonl"]) == 0
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(len(p["chosen"]) < len(p["rejected"]) for p in pairs)  # the annotator's taste, pair by pair
    # 5. DPO on the database
    assert main(["dpo", "--model", "tiny", "--data", "feedback.sqlite", "--lora", "--merge", "--max-steps", "2",
                 "--output-dir", "runs/mine"]) == 0
    # 6. both sides, judged through the app, then eval with the human judge (sampled: the tiny model's greedy
    #    answers are blank lines, and two steps barely move it: two seeds make the sides differ)
    sampled = ["--temperature", "1.0", "--seed"]
    assert main(["generate", "--model", "runs/mine/final", "--prompts", "starter:test", "--limit", "3", "--output", "tuned.jsonl", *gen, *sampled, "3"]) == 0
    assert main(["generate", "--model", "tiny", "--prompts", "starter:test", "--limit", "3", "--output", "default.jsonl", *gen, *sampled, "4"]) == 0
    (tmp_path / "both.jsonl").write_text((tmp_path / "tuned.jsonl").read_text() + (tmp_path / "default.jsonl").read_text())
    assert main(["annotate", "add-annotator", "alice", "--db", "judge.sqlite"]) == 0
    judge_link = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["annotate", "serve", "--db", "judge.sqlite", "--prompts", "starter:test", "--limit", "3",
                 "--candidates", "both.jsonl"]) == 0
    capsys.readouterr()
    tuned = [json.loads(line)["response"] for line in (tmp_path / "tuned.jsonl").read_text().splitlines()]
    default = [json.loads(line)["response"] for line in (tmp_path / "default.jsonl").read_text().splitlines()]
    differ = sum(a != b and a.strip() != "" and b.strip() != "" for a, b in zip(tuned, default))
    assert answer_everything("judge.sqlite", judge_link.rsplit("/", 1)[1], shorter) == differ
    assert main(["annotate", "export", "--db", "judge.sqlite", "--task", "judgements", "--out", "human.jsonl"]) == 0
    assert differ >= 1
    # the README's note: evaluate on the prompts whose answers differ (the others have no pair to judge)
    rows_t = (tmp_path / "tuned.jsonl").read_text().splitlines()
    rows_d = (tmp_path / "default.jsonl").read_text().splitlines()
    keep = [i for i, (a, b) in enumerate(zip(tuned, default)) if a != b and a.strip() and b.strip()]
    (tmp_path / "tuned.jsonl").write_text("".join(rows_t[i] + "\n" for i in keep))
    (tmp_path / "default.jsonl").write_text("".join(rows_d[i] + "\n" for i in keep))
    assert main(["eval", "--generations", "tuned.jsonl", "--baseline-generations", "default.jsonl", "--judges", "human:human.jsonl",
                 "--no-bertscore", "--bootstrap-samples", "100", "--output-dir", "runs/mine-eval"]) == 0
    report = json.loads((tmp_path / "runs/mine-eval/report.json").read_text())
    prefs = report["sections"]["win_rates"]["data"]["preferences"]["human:human.jsonl"]
    expected = [0.5 if len(tuned[i]) == len(default[i]) else float(len(tuned[i]) < len(default[i])) for i in keep]
    assert prefs == expected
