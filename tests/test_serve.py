"""``preftune serve`` on a tiny model, started on loopback by the tests: the ``openai`` package's own client (chat,
streaming, completions, models), log-probs against the engine's, RemoteChatModel and HTTPJudge against the local
scoring, bad requests (OpenAI error JSON with the right status), batching of concurrent clients, a killed-and-resumed
run that asks nothing twice, and the command itself in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from preftune.data.tokenize import encode_prompt
from preftune.generation.engine import HFEngine, SamplingParams
from preftune.serve.app import ServeOptions, ServerThread, create_app

REPO = Path(__file__).resolve().parents[1]
NAME = "tiny"


class Counting:
    """An ASGI wrapper that records every POST body and can hold the ``hang_at``-th one until ``release`` is set."""

    def __init__(self, app):
        self.app, self.bodies, self.hang_at, self.release = app, [], None, threading.Event()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        raw, more = b"", True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            self.bodies.append(json.loads(raw))
        except ValueError:
            self.bodies.append(raw)
        if self.hang_at is not None and len(self.bodies) == self.hang_at:
            while not self.release.is_set():
                await asyncio.sleep(0.02)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


@pytest.fixture(scope="module")
def tiny():
    from preftune.models.loading import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer("chatml")
    return tiny_model(len(tokenizer)), tokenizer


@pytest.fixture(scope="module")
def served(tiny):
    model, tokenizer = tiny
    options = ServeOptions(name=NAME, decode_dtype="float32", context_length=256, max_tokens=64, max_n=4,
                           max_top_logprobs=len(tokenizer), max_body_bytes=20_000, batch_wait_ms=2)
    app = create_app(model, tokenizer, options)
    counting = Counting(app)
    with ServerThread(counting) as server:
        server.app, server.counting = app, counting
        yield server


@pytest.fixture
def counting(served):
    served.counting.bodies.clear()
    served.counting.hang_at = None
    served.counting.release.clear()
    return served.counting


def engine_out(tiny, prompt, params, chat=True):
    model, tokenizer = tiny
    ids = encode_prompt(tokenizer, prompt) if chat else encode_prompt(tokenizer, prompt, use_chat_template=False)
    engine = HFEngine(model, tokenizer, decode_dtype="float32", show_progress=False)
    return engine.generate([ids], params), ids


HELLO = [{"role": "user", "content": "How do I bake bread?"}]


def test_openai_client_chat_streaming_completions_models(served, tiny):
    from openai import OpenAI

    client = OpenAI(base_url=served.base_url, api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == [NAME]
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=7)
    ref, ids = engine_out(tiny, HELLO, params)
    chat = client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=24, temperature=1.0, seed=7)
    assert chat.choices[0].message.content == ref.texts[0]
    assert chat.choices[0].finish_reason == ("stop" if ref.finished[0] else "length")
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (len(ids), len(ref.sequences[0]))
    assert len(ref.texts[0]) > 10  # sampled text, not an empty reply

    stream = client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=24, temperature=1.0, seed=7, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == ref.texts[0]
    assert len(pieces) >= 5  # token by token, not one block
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [chat.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == len(ref.sequences[0])

    cref, cids = engine_out(tiny, "The quick brown", SamplingParams(max_new_tokens=10, temperature=1.0, seed=3), chat=False)
    completion = client.completions.create(model=NAME, prompt="The quick brown", max_tokens=10, temperature=1.0, seed=3)
    assert completion.choices[0].text == cref.texts[0]
    assert completion.usage.prompt_tokens == len(cids)
    streamed = client.completions.create(model=NAME, prompt="The quick brown", max_tokens=10, temperature=1.0, seed=3, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cref.texts[0]


def test_logprobs_are_the_engines(served, tiny):
    ref, _ = engine_out(tiny, HELLO, SamplingParams(max_new_tokens=6, do_sample=False, top_logprobs=3))
    r = httpx.post(f"{served.base_url}/chat/completions", json={
        "model": NAME, "messages": HELLO, "max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 3}).json()
    content = r["choices"][0]["logprobs"]["content"]
    tokenizer = tiny[1]
    assert [c["token"] for c in content] == [tokenizer.decode([t]) for t in ref.sequences[0]]
    assert [c["logprob"] for c in content] == pytest.approx(ref.logprobs[0], abs=1e-6)
    for c, top in zip(content, ref.top_logprobs[0]):
        assert [t["logprob"] for t in c["top_logprobs"]] == pytest.approx([lp for _, lp in top], abs=1e-6)
        assert c["top_logprobs"][0]["token"] == c["token"]  # greedy: the most likely token was taken
    r = httpx.post(f"{served.base_url}/completions", json={"model": NAME, "prompt": "Hello", "max_tokens": 3,
                                                            "temperature": 0, "logprobs": 2}).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    assert lp["text_offset"] == [0, len(lp["tokens"][0]), len(lp["tokens"][0]) + len(lp["tokens"][1])]


def test_remote_chat_model_and_http_judge_match_the_local_model(served, tiny, counting):
    from preftune.eval.judges import HTTPJudge, LocalLLMJudge
    from preftune.generation.scoring import choice_logprobs
    from preftune.remote import RemoteChatModel

    model, tokenizer = tiny
    remote = RemoteChatModel(served.base_url, NAME, api_key_env="", top_logprobs=len(tokenizer))
    conversations = [HELLO, [{"role": "system", "content": "Be safe."}, {"role": "user", "content": "Pick A or B."}]]
    local = choice_logprobs(model, tokenizer, conversations, ["A", "B"]).tolist()
    assert remote.choice_logprobs(conversations, ["A", "B"]) == [pytest.approx(row, abs=1e-4) for row in local]
    assert remote.unreadable == 0

    greedy = remote.chat(conversations, SamplingParams(max_new_tokens=5, do_sample=False))
    assert greedy == [engine_out(tiny, c, SamplingParams(max_new_tokens=5, do_sample=False))[0].texts[0] for c in conversations]
    counting.bodies.clear()
    sampled = remote.chat([HELLO, HELLO, HELLO], SamplingParams(max_new_tokens=12, temperature=1.0, seed=1))
    assert len(counting.bodies) == 1 and counting.bodies[0]["n"] == 3  # one request for three samples
    assert len(set(sampled)) == 3  # three different samples, not one repeated

    prompts, a, b = ["Capital of France?", "2+2?"], ["Paris.", "4"], ["Lyon.", "5"]
    expected = LocalLLMJudge(model, tokenizer).compare(prompts, a, b)
    got = HTTPJudge(served.base_url, NAME, api_key_env="", top_logprobs=len(tokenizer)).compare(prompts, a, b)
    assert got.preferences == pytest.approx(expected.preferences, abs=1e-4)
    assert got.details["unreadable"] == 0
    assert got.details["first_position_rate"] == pytest.approx(expected.details["first_position_rate"], abs=1e-4)


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


USER = [{"role": "user", "content": "hi"}]
BAD = [
    # (body, status, param, code, message)
    (b"{not json", 400, None, "invalid_json", "the request body is not valid JSON"),
    (b"[1, 2]", 400, None, "invalid_json", "the request body must be a JSON object, got list"),
    ({"model": "gpt-4", "messages": USER}, 404, "model", "model_not_found",
     "the model 'gpt-4' does not exist; this server serves 'tiny' (GET /v1/models)"),
    ({"messages": USER}, 400, "model", "invalid_value", "model: Field required"),
    ({"model": NAME, "messages": []}, 400, "messages", "invalid_value", "messages: List should have at least 1 item"),
    ({"model": NAME, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role", "invalid_value",
     "messages.0.role: Input should be 'system', 'developer', 'user' or 'assistant'"),
    ({"model": NAME, "messages": USER, "temperature": 5}, 400, "temperature", "invalid_value",
     "temperature: Input should be less than or equal to 2 (got 5)"),
    ({"model": NAME, "messages": USER, "max_tokens": 0}, 400, "max_tokens", "invalid_value", "max_tokens: Input should be greater than or equal to 1"),
    ({"model": NAME, "messages": USER, "max_tokens": 65}, 400, "max_tokens", None,
     "max_tokens is 65; this server allows at most 64 (preftune serve --max-tokens)"),
    ({"model": NAME, "messages": USER, "max_completion_tokens": 100000}, 400, "max_completion_tokens", None,
     "max_completion_tokens is 100000; this server allows at most 64"),
    ({"model": NAME, "messages": [{"role": "user", "content": "bread " * 100}], "max_tokens": 64}, 400, "max_tokens",
     "context_length_exceeded", "the prompt (215 tokens) and max_tokens (64) make 279 tokens; this model reads at most 256"),
    ({"model": NAME, "messages": [{"role": "user", "content": "bread " * 300}]}, 400, "messages", "context_length_exceeded",
     "this model reads at most 256 tokens, prompt and completion together"),
    ({"model": NAME, "messages": USER, "tools": [{"type": "function"}]}, 400, "tools", "unknown_field",
     "unknown field 'tools': preftune serve does not support it"),
    ({"model": NAME, "messages": USER, "n": 5}, 400, "n", None, "n is 5; this server makes at most 4 choices per request"),
    ({"model": NAME, "messages": USER, "top_logprobs": 2}, 400, "top_logprobs", None, "top_logprobs needs logprobs: true"),
    ({"model": NAME, "messages": USER, "logprobs": True, "stream": True}, 400, "logprobs", "unsupported",
     "logprobs with stream is not supported"),
    ({"model": NAME, "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None, "stop takes at most 4 non-empty strings"),
    ({"model": NAME, "messages": USER, "presence_penalty": 0.5}, 400, "presence_penalty", "unsupported", "presence_penalty is not supported"),
    ({"model": NAME, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, 400,
     "messages.0.content.str", "invalid_value", "messages.0.content.str: Input should be a valid string"),
]


@pytest.mark.parametrize("body, status, param, code, message", BAD, ids=[m[:40] for *_, m in BAD])
def test_bad_chat_requests_get_openai_errors(served, body, status, param, code, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{served.base_url}/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    error = _error(r)
    assert message in error["message"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


def test_bad_completion_requests_and_routes(served):
    url = served.base_url
    cases = [
        (httpx.post(f"{url}/completions", json={"model": NAME, "prompt": ""}), 400, "the prompt is empty"),
        (httpx.post(f"{url}/completions", json={"model": NAME, "prompt": "x", "echo": True}), 400, "echo is not supported"),
        (httpx.post(f"{url}/completions", json={"model": NAME, "prompt": ["x"] * 65}), 400, "prompt takes a string or 1 to 64 strings, got 65"),
        (httpx.post(f"{url}/completions", json={"model": NAME, "prompt": "x", "logprobs": 401}), 400, "top_logprobs is 401; this server gives at most 400"),
        (httpx.get(f"{url}/nothing-here"), 404, "GET /v1/nothing-here: Not Found"),
        (httpx.get(f"{url}/chat/completions"), 405, "GET /v1/chat/completions: Method Not Allowed"),
        (httpx.get(f"{url}/models/other"), 404, "the model 'other' does not exist"),
        (httpx.post(f"{url}/chat/completions", content=b"x" * 20_001), 413, "the request body is over 20000 bytes"),
        # no Content-Length (chunked): counted while it is read
        (httpx.post(f"{url}/chat/completions", content=(b"x" * 5000 for _ in range(5))), 413, "the request body is over 20000 bytes"),
    ]
    surrogate = b'{"model": "tiny", "prompt": "\\ud800 x", "max_tokens": 2}'
    cases += [
        (httpx.post(f"{url}/completions", json={"model": NAME, "prompt": "x", "seed": 2**70}), 400, "seed: Input should be less than or equal to 9223372036854775807"),
        (httpx.post(f"{url}/completions", content=surrogate), 400, "the prompt cannot be tokenised"),
        (httpx.post(f"{url}/completions", content=surrogate.replace(b'"tiny"', b'"\\udfff"')), 404, "does not exist"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert message in _error(response)["message"]
    # a temperature so small that logits / T overflow is greedy decoding (its limit), not NaN probabilities
    tiny_t = httpx.post(f"{url}/completions", json={"model": NAME, "prompt": "Hello", "max_tokens": 4, "temperature": 1e-300})
    greedy = httpx.post(f"{url}/completions", json={"model": NAME, "prompt": "Hello", "max_tokens": 4, "temperature": 0})
    assert tiny_t.status_code == 200 and tiny_t.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
    # still serving after all that
    ok = httpx.post(f"{url}/completions", json={"model": NAME, "prompt": "Hello", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_api_key_required_when_configured(tiny):
    model, tokenizer = tiny
    app = create_app(model, tokenizer, ServeOptions(name=NAME, api_key="sk-local", decode_dtype="float32"))
    with ServerThread(app) as server:
        r = httpx.get(f"{server.base_url}/models")
        assert r.status_code == 401 and _error(r)["code"] == "invalid_api_key"
        r = httpx.get(f"{server.base_url}/models", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = httpx.get(f"{server.base_url}/models", headers={"Authorization": "Bearer sk-local"})
        assert r.json()["data"][0]["id"] == NAME


def test_concurrent_clients_share_one_engine_call(served, tiny):
    queue = served.app.state.server.queue
    prompts = ["Hello", "How do I bake bread?", "What is 2 + 2?", "Thanks"]
    params = SamplingParams(max_new_tokens=8, do_sample=False)
    expected = [engine_out(tiny, [{"role": "user", "content": p}], params)[0].texts[0] for p in prompts]
    queue.wait_s = 0.5  # long enough for all four to arrive
    queue.batches.clear()
    try:
        def ask(p):
            return httpx.post(f"{served.base_url}/chat/completions", json={
                "model": NAME, "messages": [{"role": "user", "content": p}], "max_tokens": 8, "temperature": 0}).json()
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(ask, prompts))
    finally:
        queue.wait_s = 0.002
    assert [r["choices"][0]["message"]["content"] for r in replies] == expected
    assert list(queue.batches) == [(4, 4)]  # four requests, one generate call of four rows

    # a seeded sampling request runs alone: the same seed gives the same reply whoever else is waiting
    body = {"model": NAME, "messages": HELLO, "max_tokens": 12, "temperature": 1.0, "seed": 5}
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: httpx.post(f"{served.base_url}/chat/completions", json=body).json(), range(3)))
    assert len({r["choices"][0]["message"]["content"] for r in replies}) == 1


RESUMABLE_RUN = """
import json, sys
from preftune.remote import RemoteChatModel
model = RemoteChatModel(sys.argv[1], "tiny", api_key_env="", cache_dir=sys.argv[2], concurrency=1, top_logprobs=400)
conversations = [[{"role": "user", "content": f"Question {i}: A or B?"}] for i in range(6)]
print(json.dumps(model.choice_logprobs(conversations, ["A", "B"])))
"""


def test_killed_and_resumed_run_asks_nothing_twice(served, counting, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFTUNE_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-c", RESUMABLE_RUN, served.base_url, str(tmp_path / "cache")]
    counting.hang_at = 4  # the 4th request never gets its answer: the run is killed while waiting for it
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(counting.bodies) < 4:
        assert time.monotonic() < deadline and first.poll() is None, first.stderr.read() if first.poll() is not None else ""
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    counting.release.set()
    asked_before = [b["messages"][0]["content"] for b in counting.bodies]
    assert asked_before == [f"Question {i}: A or B?" for i in range(4)]

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    asked = [b["messages"][0]["content"] for b in counting.bodies]
    # resumed: only the one whose answer never arrived (3) and the two never asked (4, 5)
    assert asked[4:] == [f"Question {i}: A or B?" for i in (3, 4, 5)]
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert len(counting.bodies) == 7  # a rerun asks nothing
    assert json.loads(third.stdout) == json.loads(second.stdout)
    assert len(json.loads(second.stdout)) == 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command(tiny, tmp_path):
    model, tokenizer = tiny
    folder = tmp_path / "tiny-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFTUNE_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "preftune.cli", "serve", str(folder), "--port", str(port),
                             "--served-model-name", "mine", "--log-level", "warning", "--decode-dtype", "float32"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["mine"]
        reply = client.chat.completions.create(model="mine", messages=HELLO, max_tokens=4, temperature=0)
        assert reply.choices[0].finish_reason in ("stop", "length")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"'mine' on http://127.0.0.1:{port}/v1" in err


def test_serve_help_names_vllm():
    from preftune.cli import main
    import io
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["serve", "--help"]) == 0
    assert "vllm serve MODEL_FOLDER --host 127.0.0.1 --port 8000" in out.getvalue()


@pytest.mark.slow
def test_http_judge_through_serve_on_the_default_model(default_tokenizer):
    """The default model served: the http judge (top 20 log-probs, OpenAI's most) agrees with the local LLM judge."""
    from preftune.eval.judges import HTTPJudge, LocalLLMJudge
    from preftune.models.loading import load_model

    model = load_model()
    app = create_app(model, default_tokenizer, ServeOptions(name="smol", decode_dtype="float32"))
    prompts = ["What is the capital of France?", "How do I boil an egg?", "Name a primary colour."]
    a = ["The capital of France is Paris.", "Put it in boiling water for 8 minutes.", "Blue."]
    b = ["I don't know.", "Eggs are laid by hens.", "Bananas are yellow fruit."]
    expected = LocalLLMJudge(model, default_tokenizer).compare(prompts, a, b)
    with ServerThread(app) as server:
        got = HTTPJudge(server.base_url, "smol", api_key_env="").compare(prompts, a, b)
    assert got.details["unreadable"] == 0
    assert got.preferences == pytest.approx(expected.preferences, abs=0.02)


def test_batching_queue_skips_cancelled_requests_and_keeps_running(tiny):
    """A client that goes away while its request waits: the request is dropped, the worker lives on."""
    from preftune.serve.batching import BatchingQueue, QueueFull

    model, tokenizer = tiny
    engine = HFEngine(model, tokenizer, decode_dtype="float32", show_progress=False)
    queue = BatchingQueue(engine, wait_ms=300, max_pending=3)
    ids = encode_prompt(tokenizer, HELLO)
    params = SamplingParams(max_new_tokens=3, do_sample=False)
    try:
        gone = queue.submit([ids], params)
        assert gone.cancel()  # still waiting for others to join its batch
        with pytest.raises(QueueFull, match="the server is busy: 1 sequences are waiting \\(at most 3\\)"):
            queue.submit([ids] * 3, params)
        kept = queue.submit([ids], params)
        rows = kept.result(timeout=30)
        assert rows[0].text == engine.generate([ids], params).texts[0]
        assert list(queue.batches) == [(1, 1)]  # only the request still wanted ran
        assert queue._pending_rows == 0
    finally:
        queue.close()
