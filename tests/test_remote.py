"""The OpenAI-compatible client against small fake servers on loopback: retries with back-off on 429/5xx, a timeout
honoured, connection errors, the concurrency limit, the response cache, and RemoteChatModel's requests."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from preftune.errors import PreftuneError
from preftune.generation.engine import SamplingParams
from preftune.remote import OpenAIClient, RemoteChatModel, RemoteError, choice_probabilities, request_key
from preftune.serve.app import ServerThread


def reply(text: str, **extra) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", **extra}]}


def fake_server(handler):
    """A server whose /v1/chat/completions answers ``await handler(call_number, body)`` -> (status, json, headers)."""
    app = FastAPI()
    app.state.calls = []
    app.state.in_flight = 0
    app.state.max_in_flight = 0

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.calls.append({"body": body, "auth": request.headers.get("authorization")})
        app.state.in_flight += 1
        app.state.max_in_flight = max(app.state.max_in_flight, app.state.in_flight)
        try:
            status, payload, headers = await handler(len(app.state.calls), body)
        finally:
            app.state.in_flight -= 1
        return JSONResponse(payload, status_code=status, headers=headers)

    return app


def test_retries_429_and_500_then_succeeds():
    async def flaky(n, body):
        if n == 1:
            return 429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"}
        if n == 2:
            return 500, {"error": {"message": "boom"}}, {}
        return 200, reply("ok"), {}

    app = fake_server(flaky)
    with ServerThread(app) as server:
        client = OpenAIClient(server.base_url, api_key_env="", backoff=0.01)
        out = client.chat_completion("m", [{"role": "user", "content": "hi"}], max_tokens=3)
    assert out == reply("ok")
    assert len(app.state.calls) == 3
    assert client.stats == {"sent": 3, "cached": 0, "retries": 2}
    assert app.state.calls[0]["body"] == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


def test_gives_up_after_max_retries_and_does_not_retry_a_bad_request():
    async def down(n, body):
        if body["messages"][0]["content"] == "bad":
            return 400, {"error": {"message": "messages.0.role: no such role", "type": "invalid_request_error"}}, {}
        return 503, {"error": {"message": "overloaded"}}, {}

    app = fake_server(down)
    with ServerThread(app) as server:
        client = OpenAIClient(server.base_url, api_key_env="", max_retries=2, backoff=0.01)
        with pytest.raises(RemoteError) as err:
            client.chat_completion("m", [{"role": "user", "content": "x"}])
        assert str(err.value) == (f"{server.base_url}/chat/completions: no answer after 3 tries; the last answered 503: "
                                  "overloaded")
        assert len(app.state.calls) == 3
        with pytest.raises(RemoteError) as err:
            client.chat_completion("m", [{"role": "user", "content": "bad"}])
        assert str(err.value) == f"{server.base_url}/chat/completions answered 400: messages.0.role: no such role"
        assert err.value.status == 400
        assert len(app.state.calls) == 4  # asked once


def test_timeout_is_honoured():
    async def slow(n, body):
        await asyncio.sleep(3)
        return 200, reply("late"), {}

    app = fake_server(slow)
    with ServerThread(app) as server:
        client = OpenAIClient(server.base_url, api_key_env="", timeout=0.3, max_retries=1, backoff=0.01)
        start = time.monotonic()
        with pytest.raises(RemoteError, match=r"no answer after 2 tries; the last timed out after 0.3 s \(ReadTimeout\)"):
            client.chat_completion("m", [{"role": "user", "content": "x"}])
        elapsed = time.monotonic() - start
    assert 0.6 <= elapsed < 2.0  # two tries of 0.3 s, not the server's 3 s
    assert len(app.state.calls) == 2


def test_connection_refused_is_retried_then_reported():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    client = OpenAIClient(f"http://127.0.0.1:{port}/v1", api_key_env="", max_retries=2, backoff=0.01)
    with pytest.raises(RemoteError, match=r"no answer after 3 tries; the last could not reach the server \(ConnectError"):
        client.chat_completion("m", [{"role": "user", "content": "x"}])
    assert client.stats["sent"] == 3


def test_concurrency_limit_and_order():
    async def echo(n, body):
        await asyncio.sleep(0.2)
        return 200, reply(body["messages"][0]["content"].upper()), {}

    app = fake_server(echo)
    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(9)]
    with ServerThread(app) as server:
        client = OpenAIClient(server.base_url, api_key_env="", concurrency=3)
        start = time.monotonic()
        out = client.chat_completions(bodies)
        elapsed = time.monotonic() - start
    assert [o["choices"][0]["message"]["content"] for o in out] == [f"Q{i}" for i in range(9)]
    assert app.state.max_in_flight == 3
    assert 0.6 <= elapsed < 1.5  # 9 requests of 0.2 s, 3 at a time


def test_cache_rerun_costs_nothing(tmp_path):
    async def echo(n, body):
        return 200, reply(f"answer {n}"), {}

    app = fake_server(echo)
    bodies = [{"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], "temperature": 0} for i in range(5)]
    with ServerThread(app) as server:
        first = OpenAIClient(server.base_url, api_key_env="", cache_dir=tmp_path).chat_completions(bodies)
        assert len(app.state.calls) == 5
        again = OpenAIClient(server.base_url, api_key_env="", cache_dir=tmp_path)
        second = again.chat_completions(bodies)
        assert len(app.state.calls) == 5  # nothing asked again
        assert again.stats == {"sent": 0, "cached": 5, "retries": 0}
        # a different parameter is a different request
        again.chat_completion("m", [{"role": "user", "content": "q0"}], temperature=0.5)
        assert len(app.state.calls) == 6
    assert second == first
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 6 and all(p.suffix == ".json" and not p.name.startswith(".") for p in files)
    key = request_key("/chat/completions", bodies[0])
    entry = json.loads((tmp_path / key[:2] / f"{key}.json").read_text())
    assert entry == {"path": "/chat/completions", "request": bodies[0], "response": first[0]}


def test_api_key_header_and_missing_key(monkeypatch):
    async def ok(n, body):
        return 200, reply("A"), {}

    app = fake_server(ok)
    monkeypatch.setenv("PREFTUNE_TEST_KEY", "sk-123")
    with ServerThread(app) as server:
        OpenAIClient(server.base_url, api_key_env="PREFTUNE_TEST_KEY").chat_completion("m", [])
        OpenAIClient(server.base_url, api_key_env="").chat_completion("m", [])
    assert [c["auth"] for c in app.state.calls] == ["Bearer sk-123", None]
    monkeypatch.delenv("PREFTUNE_TEST_KEY")
    with pytest.raises(PreftuneError, match="the environment variable PREFTUNE_TEST_KEY holding the API key is not set"):
        OpenAIClient("http://127.0.0.1:1/v1", api_key_env="PREFTUNE_TEST_KEY")
    with pytest.raises(PreftuneError, match="needs a base URL like http://127.0.0.1:8000/v1, got 'localhost:8000'"):
        OpenAIClient("localhost:8000", api_key_env="")


def test_choice_probabilities():
    top = [{"token": "A", "logprob": math.log(0.3)}, {"token": " A", "logprob": math.log(0.1)},
           {"token": "B", "logprob": math.log(0.2)}, {"token": "C", "logprob": math.log(0.4)}]
    r = {"choices": [{"message": {"content": "C"}, "logprobs": {"content": [{"token": "C", "top_logprobs": top}]}}]}
    assert choice_probabilities(r, ["A", "B"]) == pytest.approx([0.4 / 0.6, 0.2 / 0.6])
    assert choice_probabilities(r, ["A", "B", "C"]) == pytest.approx([0.4, 0.2, 0.4])
    # no logprobs: the reply's first word; the longest choice it starts with
    assert choice_probabilities(reply(" Yes, because"), ["Y", "Yes", "No"]) == [0.0, 1.0, 0.0]
    assert choice_probabilities(reply("Maybe"), ["A", "B"]) is None
    assert choice_probabilities({"choices": []}, ["A", "B"]) is None


def test_remote_chat_model_requests():
    async def answer(n, body):
        if body.get("logprobs"):
            text = body["messages"][-1]["content"]
            if text == "unreadable":
                return 200, reply("Hmm"), {}
            top = [{"token": "A", "logprob": math.log(0.6)}, {"token": "B", "logprob": math.log(0.2)}]
            if text == "no B":
                top = top[:1]
            return 200, reply("A", logprobs={"content": [{"token": "A", "logprob": math.log(0.6), "top_logprobs": top}]}), {}
        k = body.get("n", 1)
        return 200, {"choices": [{"index": i, "message": {"content": f"{body['messages'][-1]['content']}#{i}"}}
                                 for i in reversed(range(k))]}, {}

    app = fake_server(answer)
    a, b = [{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]
    with ServerThread(app) as server:
        model = RemoteChatModel(server.base_url, "judge", api_key_env="")
        assert model.name == "judge"
        out = model.chat([a, b, a, a], SamplingParams(max_new_tokens=5, temperature=0.7, top_k=4, seed=3, stop=("\n",)))
        # one request per distinct conversation, asking for as many replies as it appears
        assert out == ["a#0", "b#0", "a#1", "a#2"]
        bodies = sorted((c["body"] for c in app.state.calls), key=lambda x: x["messages"][0]["content"])
        assert bodies[0] == {"model": "judge", "messages": a, "max_tokens": 5, "temperature": 0.7, "top_p": 1.0,
                             "top_k": 4, "stop": ["\n"], "seed": 3, "n": 3}
        assert "n" not in bodies[1]
        with pytest.warns(UserWarning, match="1 of 3 replies named none of the choices"):
            lp = model.choice_logprobs([a, [{"role": "user", "content": "no B"}], [{"role": "user", "content": "unreadable"}]],
                                       ["A", "B"])
        assert app.state.calls[-1]["body"]["top_logprobs"] == 20 and app.state.calls[-1]["body"]["max_tokens"] == 1
    assert lp[0] == pytest.approx([math.log(0.75), math.log(0.25)])
    assert lp[1] == [0.0, -math.inf]
    assert lp[2] == pytest.approx([math.log(0.5)] * 2)
    assert model.unreadable == 1


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way leaves no entry (and no temporary file) behind."""
    from preftune.remote import ResponseCache

    cache = ResponseCache(tmp_path)
    body = {"model": "m", "messages": []}

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        cache.put("/chat/completions", body, {"x": 1})
    assert [p for p in Path(tmp_path).rglob("*") if p.is_file()] == []
    assert cache.get("/chat/completions", body) is None
