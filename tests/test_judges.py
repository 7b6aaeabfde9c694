"""Judges: the reward judge, the local LLM judge in both orders, the HTTP judge against a stub server, human judgements."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from preftune.errors import DataError, PreftuneError
from preftune.eval.judges import (HTTPJudge, HumanJudge, LocalLLMJudge, RewardJudge, build_judge, combine_orders,
                                  letter_probability)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def paris_reward(prompts, responses):
    return [1.0 if "Paris" in r else 0.0 for r in responses]


def test_reward_judge_known_answer():
    prompts = ["What is the capital of France?"] * 3
    a = ["It is Paris.", "Lyon, I think.", "Paris"]
    b = ["Lyon.", "Paris of course.", "Paris!"]
    bt = RewardJudge(paris_reward).compare(prompts, a, b)
    # r_a - r_b = 1, -1, 0 -> sigma(1) = 0.731059, sigma(-1) = 0.268941, 0.5
    assert bt.preferences == pytest.approx([sigmoid(1), sigmoid(-1), 0.5])
    assert bt.details["mean_reward_a"] == pytest.approx(2 / 3)
    hard = RewardJudge(paris_reward, mode="hard").compare(prompts, a, b)
    assert hard.preferences == [1.0, 0.0, 0.5]
    # temperature 2: sigma(1/2) = 0.622459
    assert RewardJudge(paris_reward, temperature=2.0).compare(prompts[:1], a[:1], b[:1]).preferences[0] == pytest.approx(0.6224593)


def test_reward_judge_errors():
    with pytest.raises(PreftuneError, match="reward judge: unknown mode 'best' \\(choose from bradley_terry, hard\\)"):
        RewardJudge(paris_reward, mode="best")
    with pytest.raises(PreftuneError, match="2 prompts, 1 responses A and 2 responses B"):
        RewardJudge(paris_reward).compare(["x", "y"], ["a"], ["b", "c"])


def test_combine_orders_hand_computed():
    # item 1: P_A(a,b) = 0.9, P_A(b,a) = 0.3 -> 0.5*(0.9 + 0.7) = 0.8 ; item 2: 0.6 and 0.6 -> 0.5*(0.6 + 0.4) = 0.5
    pref, details = combine_orders([0.9, 0.6], [0.3, 0.6])
    assert pref.tolist() == pytest.approx([0.8, 0.5])
    assert details["first_position_rate"] == pytest.approx((0.6 + 0.6) / 2)
    assert details["order_agreement"] == pytest.approx(0.5)  # item 2 says "first" in both orders


class StubJudgeModel(torch.nn.Module):
    """Next-token logits: 'A' gets 1 (a bias for the first slot) + 2 if answer A mentions Paris; 'B' gets 2 if answer B
    does; every other token -1e4 (so only the two letters carry probability)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.a_id = tokenizer("A", add_special_tokens=False)["input_ids"][0]
        self.b_id = tokenizer("B", add_special_tokens=False)["input_ids"][0]

    def forward(self, input_ids, attention_mask=None, **kwargs):
        out = torch.full((input_ids.shape[0], 1, len(self.tokenizer)), -1e4)
        for i, (ids, mask) in enumerate(zip(input_ids, attention_mask)):
            text = self.tokenizer.decode(ids[mask.bool()])
            first = text.split("[Answer A]")[1].split("[Answer B]")[0]
            second = text.split("[Answer B]")[1]
            out[i, 0, self.a_id] = 1.0 + (2.0 if "Paris" in first else 0.0)
            out[i, 0, self.b_id] = 2.0 if "Paris" in second else 0.0
        return type("Out", (), {"logits": out})()


def test_local_llm_judge_cancels_position_bias_on_a_stub(chatml_tokenizer):
    judge = LocalLLMJudge(StubJudgeModel(chatml_tokenizer), chatml_tokenizer)
    res = judge.compare(["Capital of France?", "Capital of France?"], ["Paris.", "Lyon."], ["Lyon.", "Lyon."])
    # item 1, a = Paris first: logits A 3, B 0 -> p1 = sigma(3) = 0.952574; swapped (Lyon first): A 1, B 2 -> p2 = sigma(-1)
    # P(a > b) = 0.5 * (0.952574 + 1 - 0.268941) = 0.841817
    # item 2, two equal answers: p1 = p2 = sigma(1) = 0.731 (pure position bias) -> exactly 0.5 after both orders
    assert res.preferences[0] == pytest.approx(0.5 * (sigmoid(3) + 1 - sigmoid(-1)), abs=1e-6)
    assert res.preferences[1] == pytest.approx(0.5, abs=1e-9)
    assert res.details["p_a_first"] == pytest.approx([sigmoid(3), sigmoid(1)], abs=1e-6)
    assert res.details["first_position_rate"] == pytest.approx(0.5 * (0.5 * (sigmoid(3) + sigmoid(-1)) + sigmoid(1)), abs=1e-6)


def test_local_llm_judge_is_antisymmetric_on_a_real_tiny_model(chatml_tokenizer):
    from preftune.models.loading import tiny_model

    model = tiny_model(len(chatml_tokenizer), seed=3)
    judge = LocalLLMJudge(model, chatml_tokenizer, batch_size=2)
    prompts = ["How do I bake bread?", "What is 2 + 2?", "Hello"]
    a = ["Mix flour, water, salt and yeast.", "It is 4.", "Hello world!"]
    b = ["I can't help with that.", "5", "Thanks, have a nice day."]
    ab = judge.compare(prompts, a, b).preferences
    ba = judge.compare(prompts, b, a).preferences
    # both orders averaged: judging (b, a) gives exactly 1 - judging (a, b)
    assert [x + y for x, y in zip(ab, ba)] == pytest.approx([1.0] * 3, abs=1e-6)
    assert all(0.0 <= p <= 1.0 for p in ab)


# -- HTTP ---------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        text = body["messages"][0]["content"]
        first = text.split("[Answer A]")[1].split("[Answer B]")[0]
        if "unreadable" in text:
            reply = {"choices": [{"message": {"content": "Hmm"}}]}
        elif "text-only" in text:
            reply = {"choices": [{"message": {"content": "A" if "Paris" in first else "B"}}]}
        else:  # log-probs: P(A) = 0.8 when A mentions Paris, else 0.2; a leading-space token variant is summed in
            pa = 0.8 if "Paris" in first else 0.2
            top = [{"token": "A", "logprob": math.log(pa * 0.75)}, {"token": " A", "logprob": math.log(pa * 0.25)},
                   {"token": "B", "logprob": math.log(1 - pa)}]
            reply = {"choices": [{"message": {"content": "A"}, "logprobs": {"content": [{"token": "A", "top_logprobs": top}]}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.seen = []
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_http_judge_reads_logprobs_both_orders(judge_server, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    judge = HTTPJudge(judge_server, "judge-model", api_key_env="TEST_JUDGE_KEY")
    res = judge.compare(["Capital of France?"], ["Paris."], ["Lyon."])
    # a first: P(A) = 0.8; swapped (Lyon first): P(A) = 0.2 -> 0.5 * (0.8 + 1 - 0.2) = 0.8
    assert res.preferences == pytest.approx([0.8])
    assert res.details["unreadable"] == 0
    assert len(_Handler.seen) == 2
    assert _Handler.seen[0]["path"] == "/v1/chat/completions"
    assert _Handler.seen[0]["auth"] == "Bearer sk-test"
    assert _Handler.seen[0]["body"]["model"] == "judge-model"
    assert _Handler.seen[0]["body"]["max_tokens"] == 1


def test_http_judge_text_fallback_and_unreadable(judge_server):
    judge = HTTPJudge(judge_server, "m", api_key_env="")
    res = judge.compare(["text-only", "unreadable"], ["Paris.", "x"], ["Lyon.", "y"])
    # text-only: "A" then (swapped) "B" -> 0.5 * (1 + 1 - 0) = 1 ; unreadable: both orders count 0.5 -> 0.5
    assert res.preferences == pytest.approx([1.0, 0.5])
    assert res.details["unreadable"] == 2
    assert _Handler.seen[0]["auth"] is None


def test_http_judge_missing_key(monkeypatch):
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(PreftuneError, match="the environment variable NO_SUCH_JUDGE_KEY holding the API key is not set"):
        HTTPJudge("http://localhost:1/v1", "m", api_key_env="NO_SUCH_JUDGE_KEY")


def test_letter_probability_variants():
    assert letter_probability({"choices": [{"message": {"content": " B because"}}]}) == 0.0
    assert letter_probability({"choices": []}) is None
    top = [{"token": "A", "logprob": math.log(0.3)}, {"token": "B", "logprob": math.log(0.1)}]
    assert letter_probability({"choices": [{"logprobs": {"content": [{"top_logprobs": top}]}}]}) == pytest.approx(0.75)


# -- people -------------------------------------------------------------------------------------------------


def test_human_judge_from_feedback_file():
    judge = HumanJudge(FIXTURES / "human_judgements.jsonl")
    res = judge.compare(["Capital of France?", "Capital of France?", "2+2?"], ["Paris.", "Lyon.", "4"], ["Lyon.", "Paris.", "5"])
    # row 1 (a = Paris, b = Lyon) preference "a" and row 2 the same pair judged 0.5 ("tie") -> mean 0.75;
    # the reversed pair reads 1 - 0.75 = 0.25; "2+2?" stored as (5, 4) with "b" -> reversed: 1 - 0 = 1.
    assert res.preferences == pytest.approx([0.75, 0.25, 1.0])
    with pytest.raises(PreftuneError, match=r"human judge: .*human_judgements.jsonl has no judgement for 1 of 1 pairs \(first: item 0"):
        judge.compare(["unknown"], ["a"], ["b"])


def test_human_judge_bad_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response_a": "a", "response_b": "b", "preference": "maybe"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 1, field 'preference': preference must be 'a', 'b', 'tie' or a number in \[0, 1\], got 'maybe'"):
        HumanJudge(bad)


def test_build_judge_specs():
    assert isinstance(build_judge("reward:tests.test_judges:paris_reward"), RewardJudge)
    assert isinstance(build_judge(f"human:{FIXTURES / 'human_judgements.jsonl'}"), HumanJudge)
    with pytest.raises(PreftuneError, match="unknown judge 'oracle' \\(choose from reward:SPEC, llm, llm:MODEL, http:MODEL, human:FILE\\)"):
        build_judge("oracle")
    with pytest.raises(PreftuneError, match="judge 'http' needs a model name"):
        build_judge("http")
