"""``preftune serve MODEL`` (an OpenAI-compatible server, :mod:`preftune.serve.app`) and ``preftune chat MODEL``
(a terminal chat, :mod:`preftune.serve.terminal`)."""

from __future__ import annotations

import importlib.util
import os
import sys

from pydantic import Field

from preftune.config import DECODE_DTYPE_HELP, BaseConfig, Command
from preftune.errors import PreftuneError

VLLM_HINT = ("On a machine with a GPU and vLLM installed (pip install 'preftune[vllm]'), vLLM's own OpenAI-compatible "
             "server is much faster and speaks the same API: `vllm serve MODEL_FOLDER --host 127.0.0.1 --port 8000 "
             "--served-model-name NAME` (MODEL_FOLDER a Hugging Face folder, e.g. a run's final/; a LoRA run: merge it "
             "first). Everything here that calls an endpoint (eval --judges http:NAME, the remote client) works with either.")


class ServeConfig(BaseConfig):
    model: str = Field(description="model: the default (smollm2-135m-instruct), a local folder (a run's final/), a GGUF file or a hub id")
    host: str = Field("127.0.0.1", description="address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    served_model_name: str | None = Field(None, description="the model's name in the API (default: MODEL as given)")
    api_key_env: str | None = Field(None, description="environment variable holding a key that requests must send (default: none)")
    context_length: int | None = Field(None, ge=2, description="most tokens of prompt + completion (default: the model's)")
    max_tokens: int = Field(2048, ge=1, description="most completion tokens one request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="completion tokens of a request that names no max_tokens")
    max_n: int = Field(16, ge=1, description="most choices (n) per request")
    max_top_logprobs: int = Field(20, ge=0, description="most top_logprobs per token (the OpenAI API allows 20)")
    max_body_bytes: int = Field(4_000_000, ge=1024, description="largest request body accepted (413 above)")
    max_batch_size: int = Field(16, ge=1, description="most sequences decoded together")
    batch_wait_ms: float = Field(5.0, ge=0, description="how long a request waits for others to join its batch")
    max_pending: int = Field(512, ge=1, description="most sequences waiting (503 above)")
    decode_dtype: str = Field("auto", description=DECODE_DTYPE_HELP)
    device: str | None = Field(None, description="cpu, cuda, ... (default: auto)")
    dtype: str | None = Field(None, description="fp32, bf16, ... (default: fp32 on CPU, bf16 on CUDA)")
    log_level: str = Field("info", description="uvicorn's log level: critical, error, warning, info, debug")


def _vllm_available() -> bool:
    try:
        import torch

        return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    except ImportError:
        return False


def build_app(config: ServeConfig):
    """The app for ``config`` (the model loaded); separate from :func:`run_serve` so tests can serve it in a thread."""
    from preftune.models.loading import load_model, load_tokenizer
    from preftune.serve.app import ServeOptions, create_app

    api_key = None
    if config.api_key_env:
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            raise PreftuneError(f"--api-key-env {config.api_key_env}: that environment variable is not set")
    if config.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"preftune serve: warning: listening on {config.host} with no key; anyone who can reach this port can "
              "use the model (set --api-key-env)", file=sys.stderr)
    model = load_model(config.model, device=config.device, dtype=config.dtype)
    tokenizer = load_tokenizer(config.model)
    options = ServeOptions(
        name=config.served_model_name or config.model, context_length=config.context_length, max_tokens=config.max_tokens,
        default_max_tokens=config.default_max_tokens, max_n=config.max_n, max_top_logprobs=config.max_top_logprobs,
        max_body_bytes=config.max_body_bytes, max_batch_size=config.max_batch_size, batch_wait_ms=config.batch_wait_ms,
        max_pending=config.max_pending, api_key=api_key, decode_dtype=config.decode_dtype)
    return create_app(model, tokenizer, options)


def run_serve(config: ServeConfig) -> int:
    import uvicorn

    if _vllm_available():
        print(f"preftune serve: note: vLLM and a GPU are here. {VLLM_HINT}", file=sys.stderr)
    app = build_app(config)
    name = app.state.server.options.name
    print(f"preftune serve: '{name}' on http://{config.host}:{config.port}/v1 (OpenAI-compatible: /chat/completions, "
          "/completions, /models); Ctrl-C stops it", file=sys.stderr)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level)
    return 0


SERVE = Command(
    "serve", "An OpenAI-compatible server for a model (chat, completions, streaming, log-probs)", ServeConfig, run_serve,
    positional=("model",),
    description=("Serve MODEL over an OpenAI-compatible HTTP API on 127.0.0.1 (FastAPI + uvicorn): POST /v1/chat/completions "
                 "(the model's chat template) and /v1/completions (raw text), streaming with server-sent events, "
                 "logprobs / top_logprobs; GET /v1/models. Concurrent requests are batched by the generation engine. "
                 "Bad requests get the OpenAI API's error JSON (400, 404 unknown model, 413 body too large, 503 busy). "
                 "Any OpenAI client works: OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none'); "
                 "`preftune eval --judges http:MODEL --judge-base-url http://127.0.0.1:8000/v1 --judge-api-key-env ''`.\n\n"
                 + VLLM_HINT))


# -- chat ---------------------------------------------------------------------------------------------------


class ChatConfig(BaseConfig):
    model: str = Field(description="model: the default (smollm2-135m-instruct), a local folder (a run's final/), a GGUF file or a hub id")
    system: str | None = Field(None, description="system message (change it in the chat with /system TEXT)")
    max_new_tokens: int = Field(256, ge=1, description="most tokens per reply")
    temperature: float = Field(0.7, ge=0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling threshold")
    top_k: int = Field(0, ge=0, description="top-k filter (0: off)")
    seed: int | None = Field(None, description="sampling seed (default: a different conversation each time)")
    decode_dtype: str = Field("auto", description=DECODE_DTYPE_HELP)
    device: str | None = Field(None, description="cpu, cuda, ... (default: auto)")
    dtype: str | None = Field(None, description="fp32, bf16, ... (default: fp32 on CPU, bf16 on CUDA)")


def run_chat(config: ChatConfig) -> int:
    from preftune.generation.engine import HFEngine, SamplingParams
    from preftune.models.loading import load_model, load_tokenizer
    from preftune.serve.app import model_context_length
    from preftune.serve.terminal import ChatSession, chat_loop

    model = load_model(config.model, device=config.device, dtype=config.dtype)
    tokenizer = load_tokenizer(config.model)
    if getattr(tokenizer, "chat_template", None) is None:
        raise PreftuneError(f"{config.model}: its tokenizer has no chat template, so it cannot chat "
                            "(preftune generate takes plain prompts)")
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                            top_k=config.top_k, seed=config.seed, do_sample=config.temperature > 0)
    engine = HFEngine(model, tokenizer, batch_size=1, show_progress=False, decode_dtype=config.decode_dtype)
    session = ChatSession(engine, tokenizer, params, system=config.system, context_length=model_context_length(model, tokenizer),
                          name=config.model)
    chat_loop(session)
    return 0


CHAT = Command("chat", "Talk to a model in the terminal (history, /reset, /system, streamed replies)", ChatConfig, run_chat,
               positional=("model",),
               description=("A chat with MODEL in the terminal: each line is a user turn, the reply streams as it is "
                            "generated, the conversation goes through the model's chat template. /reset forgets it, "
                            "/system TEXT sets the system message, /exit quits (so does end of input: the chat can be "
                            "driven from a pipe)."))
