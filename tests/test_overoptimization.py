"""Reward over-optimisation (preftune.rl.overoptimization, preftune overoptimization): the best-of-n KL formula
against the exact KL of a tiny model's enumerated distribution and a Monte-Carlo estimate from real best-of-n
sampling; the unbiased best-of-n estimator on hand-computed cases; the command end to end on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from preftune.errors import PreftuneError
from preftune.rl import overoptimization as oo


def test_bon_kl_formula_values():
    assert oo.bon_kl(1) == 0.0
    assert oo.bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert oo.bon_kl(16) == pytest.approx(2.772588722 - 0.9375)
    with pytest.raises(PreftuneError, match="n must be at least 1, got 0"):
        oo.bon_kl(0)


def test_exact_bon_kl_hand_computed_and_an_upper_bound():
    # two equally likely outcomes: best-of-2 picks the better one with prob 3/4
    # KL = 1/4 log(1/4 / 1/2) + 3/4 log(3/4 / 1/2)
    assert oo.bon_distribution([0.5, 0.5], [0.0, 1.0], 2) == pytest.approx([0.25, 0.75])
    exact = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert oo.exact_bon_kl([0.5, 0.5], [0.0, 1.0], 2) == pytest.approx(exact)
    assert exact == pytest.approx(0.130812, abs=1e-6) and exact < oo.bon_kl(2)  # the formula bounds it from above
    # many small atoms: the discrete KL approaches the formula
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(20000))
    r = rng.permutation(20000).astype(float)
    for n in (2, 8, 32):
        assert oo.exact_bon_kl(p, r, n) == pytest.approx(oo.bon_kl(n), abs=2e-3)
    with pytest.raises(PreftuneError, match="rewards must be distinct"):
        oo.bon_distribution([0.5, 0.5], [1.0, 1.0], 2)


def test_bon_expectation_hand_computed():
    proxy, gold = [3.0, 1.0, 2.0], [10.0, 20.0, 30.0]
    assert oo.bon_expectation(proxy, gold, 1) == pytest.approx(20.0)  # the plain mean
    # subsets of 2: {0,1} -> 0 (10), {0,2} -> 0 (10), {1,2} -> 2 (30)
    assert oo.bon_expectation(proxy, gold, 2) == pytest.approx(50 / 3)
    assert oo.bon_expectation(proxy, gold, 3) == pytest.approx(10.0)
    assert oo.bon_expectation(proxy, proxy, 2) == pytest.approx((3 + 3 + 2) / 3)
    # a tie in the proxy goes to the earlier sample
    assert oo.bon_expectation([1.0, 1.0], [5.0, 7.0], 2) == 5.0
    assert oo.bon_weights(4, 2) == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6])
    with pytest.raises(PreftuneError, match="n must be between 1 and the 3 samples, got 4"):
        oo.bon_weights(3, 4)


def _enumerate_two_tokens(model, prompt: list[int], eos: int) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Every completion of at most 2 tokens and its exact probability under ``model`` (fp32 forward passes)."""
    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].double(), -1)
        vocab = first.shape[0]
        firsts = [a for a in range(vocab) if a != eos]
        batch = torch.tensor([prompt + [a] for a in firsts])
        second = torch.log_softmax(model(batch).logits[:, -1].double(), -1)  # [V-1, V]
    outcomes: list[tuple[int, ...]] = [(eos,)]
    logp = [float(first[eos])]
    for row, a in enumerate(firsts):
        outcomes += [(a, b) for b in range(vocab)]
        logp += (first[a] + second[row]).tolist()
    return outcomes, np.exp(np.array(logp))


def test_bon_kl_formula_against_a_tiny_model(chatml_tokenizer):
    """Exact KL(best-of-n ‖ π) of a tiny model's distribution over 2-token completions (enumerated: 1 + 399 x 400
    outcomes) agrees with log n − (n−1)/n within 0.005 nats; a Monte-Carlo estimate from best-of-n sampling with the
    generation engine agrees with the exact value within 4 standard errors."""
    from preftune.generation.engine import HFEngine, SamplingParams
    from preftune.models.loading import tiny_model

    model = tiny_model(len(chatml_tokenizer), seed=3)
    prompt = chatml_tokenizer("What is 2 + 2?", add_special_tokens=False)["input_ids"]
    eos = chatml_tokenizer.eos_token_id
    outcomes, probs = _enumerate_two_tokens(model, prompt, eos)
    assert probs.sum() == pytest.approx(1.0, abs=1e-9)
    rewards = np.random.default_rng(0).permutation(len(outcomes)).astype(float)  # a distinct reward per outcome
    for n in (2, 4, 8, 16):
        assert oo.exact_bon_kl(probs, rewards, n) == pytest.approx(oo.bon_kl(n), abs=5e-3)

    n, groups = 4, 1500
    index = {o: i for i, o in enumerate(outcomes)}
    engine = HFEngine(model, chatml_tokenizer, batch_size=1024, show_progress=False, decode_dtype="float32")
    out = engine.generate([prompt] * (n * groups), SamplingParams(max_new_tokens=2, temperature=1.0, seed=11))
    ids = [index[tuple(s)] for s in out.sequences]
    q = oo.bon_distribution(probs, rewards, n)
    log_ratio = []
    for g in range(groups):
        best = max(ids[g * n:(g + 1) * n], key=lambda i: rewards[i])
        log_ratio.append(math.log(q[best]) - math.log(probs[best]))
    estimate, se = float(np.mean(log_ratio)), float(np.std(log_ratio) / math.sqrt(groups))
    exact = oo.exact_bon_kl(probs, rewards, n)
    assert se < 0.03
    assert abs(estimate - exact) < 4 * se
    assert abs(estimate - oo.bon_kl(n)) < 4 * se + 5e-3


def test_label_pairs_counts_ties_and_identical():
    def gold(prompt, response):
        return float(len(response))

    rows, counts = oo.label_pairs(["p1", "p2", "p3"], ["aaa", "bb", "same"], ["a", "cc", "same"], gold)
    assert counts == {"pairs": 3, "labelled": 1, "ties": 1, "identical": 1}
    assert rows == [{"prompt": "p1", "chosen": "aaa", "rejected": "a", "gold_chosen": 3.0, "gold_rejected": 1.0}]


def test_rl_curve_checks_the_steps():
    tracker = oo.GoldTracker(lambda p, r: [1.0] * len(r), lambda p, r: [2.0] * len(r))
    assert tracker(["x", "y"], ["a", "b"]).tolist() == [1.0, 1.0]
    pts = oo.rl_curve([{"step": 1, "kl": 0.25, "reward_mean": 1.0}], tracker)
    assert [p.as_dict() for p in pts] == [{"method": "rl", "x": 1, "kl": 0.25, "proxy": 1.0, "gold": 2.0, "sqrt_kl": 0.5}]
    with pytest.raises(PreftuneError, match="2 logged steps but 1 scored rollouts"):
        oo.rl_curve([{"step": 1, "kl": 0.0, "reward_mean": 0.0}] * 2, tracker)


def test_overoptimization_command_end_to_end(tmp_path, chatml_tokenizer):
    from preftune.cli import main
    from preftune.models.loading import tiny_model

    model = tiny_model(len(chatml_tokenizer), seed=0)
    model.save_pretrained(tmp_path / "model")
    chatml_tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "gold.py").write_text("def vowels(prompt, response):\n"
                                      "    return sum(c in 'aeiou' for c in response) / max(len(response), 1)\n")
    out = tmp_path / "oo"
    torch.set_num_threads(1)
    assert main(["overoptimization", "--model", str(tmp_path / "model"), "--gold", f"{tmp_path / 'gold.py'}:vowels",
                 "--label-prompts", "16", "--proxy-steps", "2", "--bon-prompts", "3", "--max-n", "4", "--rl-steps", "2",
                 "--rl-batch-size", "2", "--rl-num-samples", "2", "--max-new-tokens", "6", "--output-dir", str(out),
                 "--decode-dtype", "float32"]) == 0
    summary = json.loads((out / "overoptimization.json").read_text())
    bon = [p for p in summary["points"] if p["method"] == "best_of_n"]
    assert [p["x"] for p in bon] == [1, 2, 4]
    assert [p["kl"] for p in bon] == pytest.approx([0.0, math.log(2) - 0.5, math.log(4) - 0.75])
    samples = [json.loads(line) for line in (out / "best_of_n_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 4
    # n = 1 is the plain mean; n = 4 = max_n is the mean over prompts of the gold of each prompt's proxy-best sample
    assert bon[0]["gold"] == pytest.approx(np.mean([s["gold"] for s in samples]))
    best = [max(samples[j * 4:(j + 1) * 4], key=lambda s: s["proxy"]) for j in range(3)]
    assert bon[2]["gold"] == pytest.approx(np.mean([s["gold"] for s in best]))
    assert bon[2]["proxy"] == pytest.approx(np.mean([s["proxy"] for s in best]))
    rl = [p for p in summary["points"] if p["method"] == "rl"]
    assert [p["x"] for p in rl] == [1, 2]
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert summary["labels"]["labelled"] == len(labels) and all(r["gold_chosen"] > r["gold_rejected"] for r in labels)
    assert (out / "proxy" / "final" / "preftune_reward.json").exists()
    assert (out / "overoptimization.png").read_bytes()[:4] == b"\x89PNG"
    html = (out / "report.html").read_text()
    assert "Reward over-optimisation" in html and "gold and proxy reward against KL" in html
    ev = tmp_path / "eval"
    assert main(["eval", "--output-dir", str(ev), "--overoptimization", str(out / "overoptimization.json")]) == 0
    section = json.loads((ev / "report.json").read_text())["sections"]["overoptimization"]
    assert [r["n / step"] for r in section["tables"][-1]["rows"]] == [1, 2, 4, 1, 2]

    # an existing proxy skips labelling and training; PPO instead of RLOO
    out2 = tmp_path / "oo_ppo"
    assert main(["overoptimization", "--model", str(tmp_path / "model"), "--gold", f"{tmp_path / 'gold.py'}:vowels",
                 "--proxy", str(out / "proxy" / "final"), "--bon-prompts", "2", "--max-n", "2", "--rl-method", "ppo",
                 "--rl-steps", "1", "--rl-batch-size", "2", "--rl-num-samples", "1", "--max-new-tokens", "4",
                 "--output-dir", str(out2), "--decode-dtype", "float32"]) == 0
    summary2 = json.loads((out2 / "overoptimization.json").read_text())
    assert "labels" not in summary2 and not (out2 / "labels.jsonl").exists()
    assert [(p["method"], p["x"]) for p in summary2["points"]] == [("best_of_n", 1), ("best_of_n", 2), ("rl", 1)]
    assert summary2["rl"]["method"] == "ppo"


def test_benchmark_gold_rule_hand_computed():
    from pathlib import Path

    from preftune.rewards.loading import load_reward

    # loaded the way the benchmark names it (a file:function reward spec)
    fn = load_reward(f"{Path(__file__).resolve().parents[1] / 'bench' / 'overoptimization_gold.py'}:gold")

    def gold(prompt, response):
        return fn([prompt], [response]).item()

    # content words of the prompt (4+ letters): bake, bread, home -> all used (relevance 1); 12 distinct words of 12
    assert gold("How do I bake bread at home?", "Mix flour, water, salt and yeast, then bake the bread at home.") == 1.0
    assert gold("x", "the the the the") == -0.75  # no content words (relevance 0), variety 1/4
    assert gold("bake bread", "") == -1.0
