"""An OpenAI-compatible server over a local causal LM (what ``preftune serve MODEL`` runs).

Endpoints: ``POST /v1/chat/completions`` (the model's chat template, through
:func:`preftune.data.tokenize.encode_prompt`), ``POST /v1/completions`` (raw text, no template), both streaming
with server-sent events when ``"stream": true``, with ``logprobs`` / ``top_logprobs``; ``GET /v1/models`` and
``GET /v1/models/{id}``; ``GET /health``. Requests of concurrent clients are batched into one engine call
(:mod:`preftune.serve.batching`).

Bad input never reaches the model: a body over ``max_body_bytes`` is 413; JSON that does not parse, a field of the
wrong type or range, an unknown field, ``max_tokens`` over the server's limit, a prompt that with ``max_tokens`` does
not fit the context are 400; an unknown model is 404; a wrong key 401; a full queue 503. Every error is the OpenAI
API's JSON, ``{"error": {"message", "type", "param", "code"}}``.

Not supported (each a clear 400): tools / function calls, ``logit_bias``, ``response_format``, presence and
frequency penalties other than 0, ``echo``, and ``logprobs`` together with ``stream``. A stream whose client goes
away does not stop its rows: they finish with their batch.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from preftune.data.tokenize import encode_prompt
from preftune.errors import PreftuneError
from preftune.generation.engine import HFEngine, SamplingParams
from preftune.generation.stream import TextStream
from preftune.serve.batching import BatchingQueue, Generated, QueueFull
from preftune.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, error_body


@dataclass
class ServeOptions:
    """What the server accepts. ``context_length=None``: the model's ``max_position_embeddings``."""

    name: str
    context_length: int | None = None
    max_tokens: int = 2048  # most completion tokens one request may ask for
    default_max_tokens: int = 256  # a request that names no max_tokens (capped to the room left in the context)
    max_n: int = 16
    max_prompts: int = 64  # prompts in one /v1/completions request
    max_stop: int = 4
    max_top_logprobs: int = 20  # the OpenAI API's limit
    max_body_bytes: int = 4_000_000
    max_batch_size: int = 16
    batch_wait_ms: float = 5.0
    max_pending: int = 512  # sequences waiting at most (then 503)
    api_key: str | None = None  # when set, requests must carry "Authorization: Bearer KEY"
    decode_dtype: str = "auto"


def model_context_length(model, tokenizer) -> int:
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 10**7:
        return value
    raise PreftuneError("the model's context length is not in its config; pass --context-length")


def _validation_error(err: ValidationError) -> APIError:
    problems = err.errors()
    first = problems[0]
    loc = [str(p) for p in first["loc"]]
    param = ".".join(loc) or None
    if first["type"] == "extra_forbidden":
        return APIError(400, f"unknown field '{param}': preftune serve does not support it", param=param,
                        code="unknown_field")
    # a value of a union type (content: str | list of parts; stop: str | list) reports one problem per member
    messages = []
    for p in problems[:3]:
        where = ".".join(str(x) for x in p["loc"])
        got = f" (got {p['input']!r:.60})" if "input" in p and not isinstance(p["input"], (dict, list)) else ""
        messages.append(f"{where}: {p['msg']}{got}")
    return APIError(400, "; ".join(messages), param=param, code="invalid_value")


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    too_large = APIError(413, f"the request body is over {limit} bytes, the most this server accepts (--max-body-bytes)",
                         code="request_too_large")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _error_response(body: dict, status: int, headers=None) -> Response:
    """JSON with non-ASCII escaped: an error message quoting the request (even a lone surrogate) always encodes."""
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class OpenAIServer:
    """The state behind the app: the model, its engine, the batching queue and the limits."""

    def __init__(self, model, tokenizer, options: ServeOptions):
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.context_length = options.context_length or model_context_length(model, tokenizer)
        self.engine = HFEngine(model, tokenizer, batch_size=options.max_batch_size, show_progress=False,
                               decode_dtype=options.decode_dtype)
        self.queue = BatchingQueue(self.engine, max_batch_size=options.max_batch_size, wait_ms=options.batch_wait_ms,
                                   max_pending=options.max_pending)
        self.created = int(time.time())
        self._token_text: dict[int, str] = {}

    # -- checks ---------------------------------------------------------------------------------------------

    def check_key(self, request: Request) -> None:
        if not self.options.api_key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.options.api_key.encode()):
            raise APIError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    def check_model(self, name: str) -> None:
        if name != self.options.name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves '{self.options.name}' (GET /v1/models)",
                           param="model", code="model_not_found")

    async def parse(self, request: Request, cls: type[BaseModel]):
        self.check_key(request)
        raw = await _read_body(request, self.options.max_body_bytes)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise APIError(400, f"the request body is not valid JSON ({err})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
        try:
            body = cls.model_validate(data)
        except ValidationError as err:
            raise _validation_error(err) from None
        self.check_model(body.model)
        return body

    def sampling(self, body, prompt_lengths: Sequence[int], top_logprobs: int) -> SamplingParams:
        """The request's :class:`SamplingParams` after every limit was checked (400 otherwise)."""
        o = self.options
        if body.presence_penalty or body.frequency_penalty:
            field = "presence_penalty" if body.presence_penalty else "frequency_penalty"
            raise APIError(400, f"{field} is not supported by preftune serve (only 0)", param=field, code="unsupported")
        if body.n > o.max_n:
            raise APIError(400, f"n is {body.n}; this server makes at most {o.max_n} choices per request", param="n")
        stops = body.stops()
        if len(stops) > o.max_stop or any(not s for s in stops):
            raise APIError(400, f"stop takes at most {o.max_stop} non-empty strings, got {list(stops)!r:.200}", param="stop")
        if top_logprobs > o.max_top_logprobs:
            raise APIError(400, f"top_logprobs is {top_logprobs}; this server gives at most {o.max_top_logprobs}",
                           param="top_logprobs" if isinstance(body, ChatCompletionRequest) else "logprobs")
        field, asked = "max_tokens", body.max_tokens
        if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
            field, asked = "max_completion_tokens", body.max_completion_tokens
        longest = max(prompt_lengths)
        if min(prompt_lengths) == 0:
            raise APIError(400, "the prompt is empty: it must have at least one token", param="prompt")
        if longest >= self.context_length:
            raise APIError(400, f"the prompt is {longest} tokens; this model reads at most {self.context_length} tokens, "
                           "prompt and completion together",
                           param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                           code="context_length_exceeded")
        if asked is None:
            max_new = min(o.default_max_tokens, o.max_tokens, self.context_length - longest)
        elif asked > o.max_tokens:
            raise APIError(400, f"{field} is {asked}; this server allows at most {o.max_tokens} (preftune serve --max-tokens)",
                           param=field)
        elif longest + asked > self.context_length:
            raise APIError(400, f"the prompt ({longest} tokens) and {field} ({asked}) make {longest + asked} tokens; this "
                           f"model reads at most {self.context_length}", param=field, code="context_length_exceeded")
        else:
            max_new = asked
        # below 1e-4 the scaled logits overflow float32 (NaN probabilities): that is greedy decoding, the limit T -> 0
        greedy = body.temperature < 1e-4
        try:
            return SamplingParams(max_new_tokens=max_new, temperature=0.0 if greedy else body.temperature, top_p=body.top_p,
                                  top_k=body.top_k, stop=stops, seed=body.seed, do_sample=not greedy,
                                  top_logprobs=top_logprobs)
        except PreftuneError as err:
            raise APIError(400, str(err)) from None

    # -- generation -----------------------------------------------------------------------------------------

    def submit(self, prompts: list[list[int]], params: SamplingParams, on_token=None):
        try:
            return self.queue.submit(prompts, params, on_token)
        except QueueFull as err:
            raise APIError(503, str(err), type="server_error", code="server_busy") from None

    async def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generated]:
        future = self.submit(prompts, params)
        try:
            return await asyncio.wrap_future(future)
        except PreftuneError as err:
            raise APIError(400, str(err)) from None

    def token_text(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self._token_text[token] = self.tokenizer.decode([token])
        return text

    def visible_tokens(self, g: Generated) -> int:
        """How many of ``g``'s tokens make its text: not an ending EOS, not the tokens of a stop string."""
        n = len(g.token_ids)
        if g.finished and n and g.token_ids[-1] in self.engine.eos_ids:
            return n - 1
        if g.finished:  # ended by a stop string: keep the tokens that start before the text's end
            for i in range(n):
                if len(self.tokenizer.decode(g.token_ids[: i + 1], skip_special_tokens=True)) >= len(g.text):
                    return i + 1 if len(g.text) else 0
        return n

    def chat_logprobs(self, g: Generated) -> dict:
        content = []
        for i in range(self.visible_tokens(g)):
            token = self.token_text(g.token_ids[i])
            top = [{"token": self.token_text(t), "logprob": lp, "bytes": list(self.token_text(t).encode())}
                   for t, lp in (g.top_logprobs[i] if g.top_logprobs else [])]
            content.append({"token": token, "logprob": g.logprobs[i], "bytes": list(token.encode()), "top_logprobs": top})
        return {"content": content}

    def completion_logprobs(self, g: Generated) -> dict:
        tokens, offsets, top, offset = [], [], [], 0
        for i in range(self.visible_tokens(g)):
            text = self.token_text(g.token_ids[i])
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if g.top_logprobs:
                entry: dict[str, float] = {}
                for t, lp in g.top_logprobs[i]:
                    entry.setdefault(self.token_text(t), lp)
                top.append(entry)
        n = len(tokens)
        return {"tokens": tokens, "token_logprobs": g.logprobs[:n], "top_logprobs": top if g.top_logprobs else None,
                "text_offset": offsets}

    @staticmethod
    def usage(prompt_lengths: Sequence[int], rows: Sequence[Generated]) -> dict:
        prompt, completion = sum(prompt_lengths), sum(len(r.token_ids) for r in rows)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def stream(self, prompts: list[list[int]], params: SamplingParams, chunk, finish_chunk,
                     usage_chunk) -> AsyncIterator[str]:
        """Server-sent events of one request: ``chunk(row, text)`` for every piece of text as it is generated,
        ``finish_chunk(row, reason)`` at the end of each row, ``usage_chunk(rows)`` (None: no usage), ``[DONE]``."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_token(row: int, token: int) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (row, token))
            except RuntimeError:  # the event loop is gone (shutting down): the batch's other rows carry on
                pass

        future = self.submit(prompts, params, on_token)  # a full queue is a 503 before the stream starts
        def on_done(_) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, None)
            except RuntimeError:
                pass

        future.add_done_callback(on_done)
        streams = [TextStream(self.tokenizer, stop=params.stop, eos_ids=self.engine.eos_ids) for _ in prompts]

        async def events_out() -> AsyncIterator[str]:
            for row in range(len(prompts)):
                first = chunk(row, None)
                if first is not None:
                    yield _sse(first)
            while (item := await events.get()) is not None:
                row, token = item
                delta = streams[row].push(token)
                if delta:
                    yield _sse(chunk(row, delta))
            try:
                rows = future.result()
            except Exception as err:  # noqa: BLE001 -- the status is sent already: the error goes in the stream
                yield _sse(error_body(f"generation failed: {err}", type="server_error"))
                yield _sse("[DONE]")
                return
            for row, g in enumerate(rows):
                rest = streams[row].finish(g.text)
                if rest:
                    yield _sse(chunk(row, rest))
                yield _sse(finish_chunk(row, "stop" if g.finished else "length"))
            usage = usage_chunk(rows)
            if usage is not None:
                yield _sse(usage)
            yield _sse("[DONE]")

        return events_out()

    # -- the endpoints --------------------------------------------------------------------------------------

    async def chat_completions(self, request: Request):
        body: ChatCompletionRequest = await self.parse(request, ChatCompletionRequest)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if body.logprobs and body.stream:
            raise APIError(400, "logprobs with stream is not supported by preftune serve; ask without stream",
                           param="logprobs", code="unsupported")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        try:
            ids = await run_in_threadpool(encode_prompt, self.tokenizer, messages)
        except Exception as err:  # noqa: BLE001 -- a template that refuses these messages (roles, order) is bad input
            raise APIError(400, f"the model's chat template cannot render these messages: {err}", param="messages") from None
        top = (body.top_logprobs or 0) if body.logprobs else 0
        params = self.sampling(body, [len(ids)], top)
        prompts = [ids] * body.n
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": self.options.name}
        if body.stream:
            def chunk(row, text):
                delta = {"role": "assistant", "content": ""} if text is None else {"content": text}
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": row, "delta": delta, "logprobs": None, "finish_reason": None}]}

            def finish(row, reason):
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": row, "delta": {}, "logprobs": None, "finish_reason": reason}]}

            def usage(rows):
                if not (body.stream_options and body.stream_options.include_usage):
                    return None
                return {**head, "object": "chat.completion.chunk", "choices": [], "usage": self.usage([len(ids)], rows)}

            events = await self.stream(prompts, params, chunk, finish, usage)
            return StreamingResponse(events, media_type="text/event-stream")
        rows = await self.generate(prompts, params)
        choices = [{"index": i, "message": {"role": "assistant", "content": g.text},
                    "logprobs": self.chat_logprobs(g) if body.logprobs else None,
                    "finish_reason": "stop" if g.finished else "length"} for i, g in enumerate(rows)]
        return {**head, "object": "chat.completion", "choices": choices, "usage": self.usage([len(ids)], rows)}

    async def completions(self, request: Request):
        body: CompletionRequest = await self.parse(request, CompletionRequest)
        if body.echo:
            raise APIError(400, "echo is not supported by preftune serve", param="echo", code="unsupported")
        if body.logprobs is not None and body.stream:
            raise APIError(400, "logprobs with stream is not supported by preftune serve; ask without stream",
                           param="logprobs", code="unsupported")
        texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not texts or len(texts) > self.options.max_prompts:
            raise APIError(400, f"prompt takes a string or 1 to {self.options.max_prompts} strings, got {len(texts)}",
                           param="prompt")
        try:
            ids = await run_in_threadpool(lambda: [encode_prompt(self.tokenizer, t, use_chat_template=False) for t in texts])
        except Exception as err:  # noqa: BLE001 -- text the tokenizer cannot encode (a lone surrogate) is bad input
            raise APIError(400, f"the prompt cannot be tokenised: {err}", param="prompt") from None
        params = self.sampling(body, [len(i) for i in ids], body.logprobs or 0)
        prompts = [p for p in ids for _ in range(body.n)]  # choice index = prompt index * n + sample
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": self.options.name}
        if body.stream:
            def chunk(row, text):
                if text is None:
                    return None
                return {**head, "choices": [{"index": row, "text": text, "logprobs": None, "finish_reason": None}]}

            def finish(row, reason):
                return {**head, "choices": [{"index": row, "text": "", "logprobs": None, "finish_reason": reason}]}

            def usage(rows):
                if not (body.stream_options and body.stream_options.include_usage):
                    return None
                return {**head, "choices": [], "usage": self.usage([len(i) for i in ids], rows)}

            events = await self.stream(prompts, params, chunk, finish, usage)
            return StreamingResponse(events, media_type="text/event-stream")
        rows = await self.generate(prompts, params)
        choices = [{"index": i, "text": g.text,
                    "logprobs": self.completion_logprobs(g) if body.logprobs is not None else None,
                    "finish_reason": "stop" if g.finished else "length"} for i, g in enumerate(rows)]
        return {**head, "choices": choices, "usage": self.usage([len(i) for i in ids], rows)}

    def model_card(self) -> dict:
        return {"id": self.options.name, "object": "model", "created": self.created, "owned_by": "preftune",
                "max_model_len": self.context_length}


def create_app(model, tokenizer, options: ServeOptions) -> FastAPI:
    """The FastAPI app serving ``model`` under ``options.name`` (the batching worker runs while the app does)."""
    server = OpenAIServer(model, tokenizer, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(server.queue.close)

    app = FastAPI(title="preftune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return _error_response(err.body(), err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        message = f"{request.method} {request.url.path}: {err.detail}"
        return _error_response(error_body(message, code="not_found" if err.status_code == 404 else None),
                               err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception):
        return _error_response(error_body(f"internal error: {type(err).__name__}: {err}", type="server_error"), 500)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await server.chat_completions(request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await server.completions(request)

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_key(request)
        return {"object": "list", "data": [server.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str, request: Request):
        server.check_key(request)
        server.check_model(model_id)
        return server.model_card()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    return app


class ServerThread:
    """Run an app with uvicorn in a thread on ``host`` and a free port (tests, benchmarks, notebooks)::

        with ServerThread(app) as server:
            OpenAIClient(server.base_url, api_key_env="")...
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise PreftuneError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
