"""`preftune annotate add-annotator | stats | export`, the items `annotate serve` adds, and `preftune reward` /
`preftune dpo` reading a feedback database directly (tiny models)."""

from __future__ import annotations

import json

import pytest

from preftune.cli import main
from preftune.feedback.store import FeedbackStore


@pytest.fixture
def files(tmp_path):
    prompts = [{"prompt": f"What is {i} + {i}?"} for i in range(3)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    cands = [{"prompt": f"What is {i} + {i}?", "response": f"It is {2 * i + k}.", "generator": "m", "seed": 0, "sample": k}
             for i in range(3) for k in range(3)]
    (tmp_path / "cands.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cands))
    return tmp_path


def test_serve_items_from_prompts_and_candidates(files, capsys):
    from preftune.commands.annotate import ServeConfig, load_items

    db = files / "f.sqlite"
    store = FeedbackStore(db)
    config = ServeConfig(db=str(db), prompts=str(files / "prompts.jsonl"), candidates=str(files / "cands.jsonl"),
                         tasks=["pairwise", "ranking", "rating", "rules"], pairs_per_prompt=2, ranking_size=3)
    load_items(config, store)
    out = capsys.readouterr().out
    assert "pairwise: 6 new items (0 already" in out and "ranking: 3 new items" in out and "rating: 9 new items" in out
    assert store.count_items() == {"pairwise": 6, "ranking": 3, "rating": 9, "rules": 9}
    load_items(config, store)  # a restarted server adds nothing twice
    assert "pairwise: 0 new items (6 already in" in capsys.readouterr().out
    from preftune.feedback.rules import load_rules

    item = store.next_assignment(store.authenticate(store.add_annotator("x")))
    assert item.task == "pairwise" and item.prompt == "What is 0 + 0?"
    rules_row = store._conn().execute("SELECT rules FROM items WHERE task = 'rules' LIMIT 1").fetchone()[0]
    assert json.loads(rules_row) == [r.text for r in load_rules()]


def test_serve_needs_candidates_for_its_prompts(files, capsys):
    assert main(["annotate", "serve", "--db", str(files / "f.sqlite"), "--prompts", str(files / "prompts.jsonl")]) == 2
    assert "--prompts needs the responses to judge: --candidates FILE or --model M --num-samples K" in capsys.readouterr().err
    (files / "few.jsonl").write_text(json.dumps({"prompt": "What is 0 + 0?", "response": "0"}) + "\n")
    assert main(["annotate", "serve", "--db", str(files / "f.sqlite"), "--prompts", str(files / "prompts.jsonl"),
                 "--candidates", str(files / "few.jsonl")]) == 2
    assert "few.jsonl: no candidate response for the prompt 'What is 1 + 1?'" in capsys.readouterr().err
    assert main(["annotate", "serve", "--db", str(files / "empty.sqlite")]) == 2
    assert "empty.sqlite has no items: give --prompts with --candidates or --model" in capsys.readouterr().err


def test_default_rules_and_bad_rule_files(tmp_path):
    from preftune.errors import PreftuneError
    from preftune.feedback.rules import load_rules

    rules = load_rules()
    assert len(rules) == 8 and rules[0].name == "no-made-up-facts" and len({r.name for r in rules}) == 8
    (tmp_path / "r.yaml").write_text("- be kind\n- {name: short, text: Keep it short.}\n")
    assert [(r.name, r.text) for r in load_rules(tmp_path / "r.yaml")] == [("be kind", "be kind"), ("short", "Keep it short.")]
    (tmp_path / "dup.yaml").write_text("rules: [a, a]\n")
    with pytest.raises(PreftuneError, match="rule 'a' appears twice"):
        load_rules(tmp_path / "dup.yaml")
    (tmp_path / "bad.yaml").write_text("rules: [a, 3]\n")
    with pytest.raises(PreftuneError, match="rule 2 must be text or a mapping with a 'name'"):
        load_rules(tmp_path / "bad.yaml")


def _annotated(files):
    db = files / "f.sqlite"
    store = FeedbackStore(db, seed=0)
    store.add_items("pairwise", [(f"What is {i} + {i}?", [f"It is {2 * i}.", f"It is {2 * i + 1}."]) for i in range(3)])
    who = store.authenticate(store.add_annotator("ann"))
    for n in range(3):
        item = store.next_assignment(who)
        store.submit(who, f"cli-{n:05d}", item.id, {"choice": "left" if item.shown[0] == 0 else "right", "strength": "clearly"})
    return db


def test_add_annotator_prints_a_private_link(files, capsys):
    db = _annotated(files)
    assert main(["annotate", "add-annotator", "zoe", "--db", str(db), "--port", "8123"]) == 0
    link = capsys.readouterr().out.strip()
    assert link.startswith("http://127.0.0.1:8123/a/")
    assert FeedbackStore(db).authenticate(link.rsplit("/", 1)[1]).name == "zoe"
    assert main(["annotate", "add-annotator", "zoe", "--db", str(db)]) == 2
    assert "there is already an annotator named 'zoe'" in capsys.readouterr().err


def test_stats_and_export_commands(files, capsys):
    db = _annotated(files)
    assert main(["annotate", "stats", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "3 submissions" in out and "ann: pairwise 3, skipped 0" in out
    assert main(["annotate", "stats", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"ann": {"pairwise": 3}}
    out_file = files / "pairs.jsonl"
    assert main(["annotate", "export", "--db", str(db), "--task", "pairwise", "--out", str(out_file)]) == 0
    assert f"wrote 3 rows to {out_file}" in capsys.readouterr().out
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert rows[0] == {"prompt": "What is 0 + 0?", "chosen": "It is 0.", "rejected": "It is 1.", "margin": pytest.approx(2 / 3)}
    assert main(["annotate", "export", "--db", str(files / "none.sqlite"), "--task", "rating", "--out", str(out_file)]) == 2
    assert "no feedback database" in capsys.readouterr().err
    assert main(["annotate", "export", "--db", str(db), "--task", "votes", "--out", str(out_file)]) == 2


@pytest.mark.parametrize("command", ["reward", "dpo"])
def test_trainers_read_the_feedback_database(files, tiny_lm, tmp_path, command):
    db = _annotated(files)
    out = tmp_path / command
    assert main([command, "--model", str(tiny_lm), "--data", str(db), "--output-dir", str(out), "--max-steps", "1",
                 "--batch-size", "2", "--learning-rate", "1e-3"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1]


def shorter_reward(prompts, responses):
    return [-float(len(r)) for r in responses]


def test_stats_agreement_of_a_judge_with_the_people(tmp_path, capsys):
    db = tmp_path / "j.sqlite"
    store = FeedbackStore(db, seed=2)
    store.add_items("pairwise", [("p0", ["short", "much longer answer"]), ("p1", ["a longer one here", "tiny"]), ("p2", ["mid", "x"]),
                                 ("p3", ["same", "tied"])])
    who = store.authenticate(store.add_annotator("ann"))
    for n, winner in enumerate([0, 1, 0, "tie"]):  # the shorter, the shorter, the longer; a tie (no decisive majority)
        item = store.next_assignment(who)
        choice = "tie" if winner == "tie" else ("left" if item.shown[0] == winner else "right")
        store.submit(who, f"judge-{n:04d}", item.id, {"choice": choice})
    assert main(["annotate", "stats", "--db", str(db), "--judges", "[reward:tests.test_feedback_cli:shorter_reward]", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    # P(first ≻ second) = σ(r_first − r_second) with r = −length: agrees on p0 and p1, not on p2
    assert stats["judges"] == {"reward:tests.test_feedback_cli:shorter_reward": {"items": 3, "agreement": pytest.approx(2 / 3)}}
    assert main(["annotate", "stats", "--db", str(db), "--judges", "[reward:tests.test_feedback_cli:shorter_reward]"]) == 0
    assert ("judge reward:tests.test_feedback_cli:shorter_reward: agrees with the people's majority on 0.667 of 3 decisive "
            "pairwise items") in capsys.readouterr().out


def test_serve_generates_candidates_with_a_model(files, tiny_lm, capsys):
    from preftune.commands.annotate import ServeConfig, load_items

    db = files / "g.sqlite"
    store = FeedbackStore(db)
    config = ServeConfig(db=str(db), prompts=str(files / "prompts.jsonl"), model=str(tiny_lm), num_samples=3, temperature=1.0,
                         max_new_tokens=6, tasks=["ranking", "rating"])
    load_items(config, store)
    rows = store._conn().execute("SELECT task, prompt, responses FROM items ORDER BY id").fetchall()
    ranking = [r for r in rows if r[0] == "ranking"]
    rating = [r for r in rows if r[0] == "rating"]
    # one ranking item per prompt with its distinct sampled answers (2 or 3), one rating item per answer
    assert [json.loads(r[1]) for r in ranking] == [f"What is {i} + {i}?" for i in range(3)]
    assert all(2 <= len(json.loads(r[2])) <= 3 for r in ranking)
    assert len(rating) == sum(len(json.loads(r[2])) for r in ranking)
    from preftune.errors import PreftuneError

    with pytest.raises(PreftuneError, match="give either --candidates FILE or --model M"):
        load_items(ServeConfig(db=str(db), prompts="x", model="m", candidates="c"), store)
