"""One client for every remote model: any OpenAI-compatible endpoint (OpenAI, vLLM's server, ``preftune serve``).

::

    client = OpenAIClient("http://127.0.0.1:8000/v1", api_key_env="", cache_dir="runs/cache")
    reply = client.chat_completion("my-model", [{"role": "user", "content": "Hi"}], max_tokens=16, temperature=0)
    replies = client.chat_completions([body, body, ...], desc="labelling")    # concurrently, in order

    model = RemoteChatModel("http://127.0.0.1:8000/v1", "my-model", api_key_env="")   # the ChatModel interface
    model.chat([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=16))
    model.choice_logprobs([conversation], ["A", "B"])

What the client does for every request (on httpx):

* at most ``concurrency`` requests in flight (a semaphore shared by every thread using the client);
* a ``timeout`` in seconds on connecting, on each read and on each write;
* up to ``max_retries`` retries on 429, 408, 409 and 5xx answers, timeouts and connection errors, waiting
  ``backoff * 2**attempt`` seconds (at most ``max_backoff``; a server's ``Retry-After`` when longer) times a random
  factor in [0.5, 1] — exponential back-off with jitter, so that many clients do not retry in step; any other 4xx is
  the caller's mistake and raises :class:`RemoteError` at once with the server's message;
* with ``cache_dir``, a response cache on disk: one JSON file per request, named by the SHA-256 of the request's path
  and body (model, messages and every parameter), written to a temporary file and renamed into place, so that a file
  is either whole or absent. An interrupted run resumes without asking again for what it already has, and a rerun
  costs nothing. The key leaves out the base URL and the key, so a cache outlives a server restarted on another
  port; keep one cache folder per endpoint when two endpoints serve different models under the same name. A sampled
  (temperature > 0) request is cached like any other: asking the same thing again gives the same sample, so callers
  that want several samples ask for them in one request (``n``) or vary ``seed``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx

from preftune.generation.chat import ChatModel, LocalChatModel
from preftune.errors import PreftuneError
from preftune.generation.engine import SamplingParams
from preftune.progress import progress

#: statuses worth asking again besides 5xx (the server's own failures): request timeout, conflict (a lock), rate limit
RETRY_STATUSES = frozenset({408, 409, 429})


class RemoteError(PreftuneError):
    """A remote endpoint refused a request or could not be reached; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


def _retryable(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


def _server_message(response: httpx.Response) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error") or body.get("detail")
        if message:
            return str(message)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return response.text[:300]


def request_key(path: str, body: dict) -> str:
    """The cache key of a request: SHA-256 of its path and its body as canonical JSON (sorted keys)."""
    canonical = json.dumps({"path": path, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Responses on disk, one JSON file per request (``KEY[:2]/KEY.json`` holding the request and the response)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, path: str, body: dict) -> dict | None:
        file = self._file(request_key(path, body))
        try:
            entry = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: ask again (the rename below makes a torn file impossible, but a disk can fail)
        if entry.get("path") != path or entry.get("request") != body:
            return None
        return entry["response"]

    def put(self, path: str, body: dict, response: dict) -> None:
        file = self._file(request_key(path, body))
        file.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"path": path, "request": body, "response": response}, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def api_key_from_env(api_key_env: str | None) -> str | None:
    """The key in the environment variable ``api_key_env``; None for an empty name (a server that needs no key)."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise PreftuneError(f"the environment variable {api_key_env} holding the API key is not set (set it, or pass an "
                            "empty api_key_env for a server that needs no key, such as preftune serve)")
    return key


class OpenAIClient:
    """An OpenAI-compatible HTTP API (see the module docstring for the concurrency, retries and the cache)."""

    def __init__(self, base_url: str, *, api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 60,
                 max_retries: int = 5, concurrency: int = 8, cache_dir: str | os.PathLike | None = None,
                 backoff: float = 0.5, max_backoff: float = 30.0):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise PreftuneError(f"an OpenAI-compatible endpoint needs a base URL like http://127.0.0.1:8000/v1, got {base_url!r}")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise PreftuneError(f"concurrency must be >= 1, max_retries >= 0 and timeout > 0 (got {concurrency}, "
                                f"{max_retries}, {timeout})")
        self.base_url = base_url.rstrip("/")
        self.timeout, self.max_retries, self.concurrency = float(timeout), int(max_retries), int(concurrency)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        headers = {"Content-Type": "application/json"}
        key = api_key_from_env(api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(self.timeout),
                                  limits=httpx.Limits(max_connections=self.concurrency,
                                                      max_keepalive_connections=self.concurrency))
        self._slots = threading.Semaphore(self.concurrency)
        self.cache = ResponseCache(cache_dir) if cache_dir else None
        self._lock = threading.Lock()
        self.stats = {"sent": 0, "cached": 0, "retries": 0}  # requests sent (tries included), cache hits, retries

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _wait(self, attempt: int, response: httpx.Response | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
        if response is not None:
            try:
                delay = max(delay, min(float(response.headers.get("retry-after", 0)), 60.0))
            except ValueError:
                pass
        time.sleep(delay)

    def request(self, path: str, body: dict) -> dict:
        """POST ``body`` (JSON) to ``base_url + path``: from the cache when there, else asked (retried) and cached."""
        if self.cache is not None:
            hit = self.cache.get(path, body)
            if hit is not None:
                self._count("cached")
                return hit
        url = self.base_url + path
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count("retries")
            response = None
            try:
                with self._slots:
                    self._count("sent")
                    response = self._http.post(path, json=body)
            except httpx.TimeoutException as err:
                last = f"timed out after {self.timeout:g} s ({type(err).__name__})"
            except httpx.TransportError as err:
                last = f"could not reach the server ({type(err).__name__}: {err})"
            else:
                if response.status_code == 200:
                    try:
                        data = response.json()
                    except ValueError:
                        last = f"answered 200 with a body that is not JSON: {response.text[:200]!r}"
                    else:
                        if self.cache is not None:
                            self.cache.put(path, body, data)
                        return data
                elif _retryable(response.status_code):
                    last = f"answered {response.status_code}: {_server_message(response)}"
                else:
                    raise RemoteError(f"{url} answered {response.status_code}: {_server_message(response)}",
                                      status=response.status_code)
            if attempt < self.max_retries:
                self._wait(attempt, response)
        raise RemoteError(f"{url}: no answer after {self.max_retries + 1} tries; the last {last}")

    def map(self, path: str, bodies: Sequence[dict], *, desc: str = "requests") -> list[dict]:
        """:meth:`request` for every body, ``concurrency`` at a time, answers in the order of ``bodies``."""
        bodies = list(bodies)
        if not bodies:
            return []
        results: list[dict | None] = [None] * len(bodies)
        bar = progress(total=len(bodies), desc=desc)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            futures = {pool.submit(self.request, path, body): i for i, body in enumerate(bodies)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                bar.close()
        return results  # type: ignore[return-value]

    # -- the two endpoints ------------------------------------------------------------------------------------

    def chat_completion(self, model: str, messages: list[dict], **params: Any) -> dict:
        """One ``/chat/completions`` request; ``params`` are the API's (``max_tokens``, ``temperature``, ``logprobs``,
        ``top_logprobs``, ``n``, ``stop``, ``seed``...)."""
        return self.request("/chat/completions", {"model": model, "messages": messages, **params})

    def completion(self, model: str, prompt: str | list[str], **params: Any) -> dict:
        """One ``/completions`` request (raw text, no chat template); ``logprobs`` is a count there."""
        return self.request("/completions", {"model": model, "prompt": prompt, **params})

    def chat_completions(self, bodies: Sequence[dict], *, desc: str = "chat completions") -> list[dict]:
        """Many ``/chat/completions`` request bodies, concurrently; answers in order."""
        return self.map("/chat/completions", bodies, desc=desc)

    def completions(self, bodies: Sequence[dict], *, desc: str = "completions") -> list[dict]:
        return self.map("/completions", bodies, desc=desc)


# -- reading answers ------------------------------------------------------------------------------------------


def choice_probabilities(response: dict, choices: Sequence[str], index: int = 0) -> list[float] | None:
    """P(each choice) over ``choices`` from the first token of one chat-completion answer (choice ``index``).

    From ``logprobs.content[0].top_logprobs`` when present: a choice's mass is the summed probability of the tokens
    that spell it up to surrounding spaces (``"A"`` and ``" A"``), normalised over the choices. Else, or when no
    choice is among them, the reply's text: 1 for the choice it starts with (the longest when several match). None
    when neither says anything.
    """
    try:
        choice = response["choices"][index]
    except (KeyError, IndexError, TypeError):
        return None
    content = (choice.get("logprobs") or {}).get("content") or []
    if content:
        mass = dict.fromkeys(choices, 0.0)
        for entry in content[0].get("top_logprobs") or [content[0]]:
            token = str(entry.get("token", "")).strip()
            if token in mass:
                mass[token] += math.exp(float(entry.get("logprob", -math.inf)))
        total = sum(mass.values())
        if total > 0:
            return [mass[c] / total for c in choices]
    text = str((choice.get("message") or {}).get("content") or "").strip()
    starts = [c for c in choices if c and text.startswith(c)]
    if starts:
        best = max(starts, key=len)
        return [1.0 if c == best else 0.0 for c in choices]
    return None


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


class RemoteChatModel:
    """A model behind an OpenAI-compatible endpoint as a chat model (``name``, ``chat``, ``choice_logprobs``).

    ``chat`` sends one request per distinct conversation, asking for as many replies (``n``) as the conversation
    appears in the batch, so k samples of one prompt are k different samples (and one cache entry).
    ``choice_logprobs`` asks for one token at temperature 0 with ``top_logprobs`` (20, the OpenAI API's most) and
    returns log P(choice) normalised over the choices (:func:`choice_probabilities`); a choice outside the top
    tokens gets -inf; a reply that names no choice at all gets the uniform log(1/K), counted in ``unreadable``.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 cache_dir: str | os.PathLike | None = None, timeout: float = 60, max_retries: int = 5,
                 concurrency: int = 8, top_logprobs: int = 20):
        if not model:
            raise PreftuneError(f"a remote chat model needs the name of the model to ask {base_url} for")
        self.name = model
        self.top_logprobs = int(top_logprobs)
        self.client = OpenAIClient(base_url, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
                                   concurrency=concurrency, cache_dir=cache_dir)
        self.unreadable = 0

    def _sampling(self, params: SamplingParams) -> dict:
        body: dict[str, Any] = {"max_tokens": params.max_new_tokens,
                                "temperature": 0.0 if params.greedy else params.temperature, "top_p": params.top_p}
        if params.top_k and not params.greedy:
            body["top_k"] = params.top_k  # not in OpenAI's API; vLLM and preftune serve take it
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None and not params.greedy:
            body["seed"] = params.seed
        return body

    def chat(self, conversations: Sequence[list[dict[str, str]]], params: SamplingParams) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, conversation in enumerate(conversations):
            groups.setdefault(json.dumps(conversation, sort_keys=True), []).append(i)
        sampling = self._sampling(params)
        keys = list(groups)
        bodies = []
        for key in keys:
            body = {"model": self.name, "messages": json.loads(key), **sampling}
            if len(groups[key]) > 1:
                body["n"] = len(groups[key])
            bodies.append(body)
        replies = self.client.chat_completions(bodies, desc=f"{self.name}: chat")
        out: list[str] = [""] * len(conversations)
        for key, reply in zip(keys, replies):
            choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
            if len(choices) < len(groups[key]):
                raise RemoteError(f"{self.client.base_url}: asked for {len(groups[key])} replies, got {len(choices)}")
            for row, choice in zip(groups[key], choices):
                out[row] = str((choice.get("message") or {}).get("content") or "")
        return out

    def choice_logprobs(self, conversations: Sequence[list[dict[str, str]]], choices: Sequence[str]) -> list[list[float]]:
        choices = list(choices)
        bodies = [{"model": self.name, "messages": list(c), "max_tokens": 1, "temperature": 0.0, "logprobs": True,
                   "top_logprobs": self.top_logprobs} for c in conversations]
        replies = self.client.chat_completions(bodies, desc=f"{self.name}: choices")
        out, unreadable = [], 0
        for reply in replies:
            probs = choice_probabilities(reply, choices)
            if probs is None:
                unreadable += 1
                probs = [1.0 / len(choices)] * len(choices)
            out.append([_log(p) for p in probs])
        if unreadable:
            self.unreadable += unreadable
            warnings.warn(f"{self.name}: {unreadable} of {len(replies)} replies named none of the choices "
                          f"{choices} (counted as uniform)", stacklevel=2)
        return out


def chat_model(spec: str | None, *, base_url: str | None = None, device: str | None = None,
               api_key_env: str = "OPENAI_API_KEY", cache_dir: str | None = None, **local_options) -> ChatModel:
    """A :class:`ChatModel` from a model spec: a local model (hub id, folder, GGUF, the default when ``None``), or
    with ``base_url`` the model of that name on an OpenAI-compatible endpoint (:class:`RemoteChatModel`)."""
    if base_url:
        if not spec:
            raise PreftuneError(f"a remote chat model needs a model name to ask {base_url} for")
        return RemoteChatModel(base_url, spec, api_key_env=api_key_env, cache_dir=cache_dir)
    from preftune.models.loading import load_model, load_tokenizer

    model = load_model(spec, device=device)
    return LocalChatModel(model, load_tokenizer(spec), name=spec or "default", **local_options)
