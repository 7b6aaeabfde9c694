"""The generation interface and its default backend: batched sampling over a KV cache.

Everything downstream (online RL, best-of-N, evaluation) calls :class:`GenerationEngine` only::

    engine = HFEngine(model, tokenizer, batch_size=16)
    out = engine.generate(prompt_ids, SamplingParams(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=0))
    out.sequences[i]   # completion token ids (the EOS that ended it included)
    out.logprobs[i]    # log pi(token | context) of each sampled token (see below)
    out.texts[i]       # decoded completion, without the EOS and without the stop string
    out.finished[i]    # True when it ended at EOS or a stop string (False: ran out of max_new_tokens)

:class:`HFEngine` runs its own decode loop over any Hugging Face causal LM instead of calling
``model.generate``, so that it can

* return the sampling log-probs of each token (``log_softmax(logits / temperature)``, i.e. the policy
  at that temperature *before* top-k / top-p truncation; with greedy decoding the raw log-probs);
* stop each sequence on its own (EOS or a stop string) and drop finished rows from the batch, so a
  long straggler does not keep paying for the others;
* compute the LM head at the last position only during prefill (``logits_to_keep=1``); for Llama-family
  models, prefill and decode through :mod:`preftune.generation.fast_decode` (bf16 copies of the weights by
  default on a CPU with native bf16);
* prefill each distinct prompt of a batch once and copy its KV cache to the rows sampling from it (the k
  samples per prompt of online RL), instead of prefilling k identical copies as ``generate`` does.

Prompts are left-padded within a batch (position ids count real tokens only), sorted by length
so that a batch wastes little padding, and returned in the caller's order. Sampling draws from a
``torch.Generator`` seeded with ``params.seed`` (same seed and same inputs: same output); with
``seed=None`` the global torch RNG is used.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from transformers.cache_utils import Cache, DynamicLayer

from preftune.errors import PreftuneError
from preftune.models.packing import group_by_prompt
from preftune.models.modes import eval_mode
from preftune.progress import progress


@dataclass
class SamplingParams:
    """How to sample. ``do_sample=False`` (or ``temperature == 0``) is greedy decoding.

    ``top_k=0`` and ``top_p=1.0`` switch those filters off. ``stop`` is a tuple of strings: a sequence ends
    as soon as its decoded text contains one of them.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    do_sample: bool = True
    top_logprobs: int = 0  # also return the k most likely tokens at every step (GenerationOutput.top_logprobs)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise PreftuneError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise PreftuneError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise PreftuneError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise PreftuneError(f"top_k must be >= 0 (0 switches it off), got {self.top_k}")
        if self.top_logprobs < 0:
            raise PreftuneError(f"top_logprobs must be >= 0 (0 switches it off), got {self.top_logprobs}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)

    @property
    def greedy(self) -> bool:
        return (not self.do_sample) or self.temperature == 0


@dataclass
class GenerationOutput:
    """Completions of one ``generate`` call, in the order of the prompts."""

    sequences: list[list[int]]  # completion token ids (EOS / the stop string's tokens included)
    logprobs: list[list[float]]  # sampling log-prob of each token of ``sequences``
    texts: list[str]  # decoded completion: no EOS, cut before a stop string
    finished: list[bool]  # ended at EOS or a stop string
    prompt_ids: list[list[int]] = field(default_factory=list)  # the prompts, as given
    # with params.top_logprobs = k: per prompt, per generated token, the k (token id, log-prob) pairs of highest
    # log-prob under the same distribution as ``logprobs`` (most likely first); empty lists otherwise
    top_logprobs: list[list[list[tuple[int, float]]]] = field(default_factory=list)

    def padded(self, pad_id: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded tensors: ids [B, T] (pad_id), mask [B, T] (1 on real tokens), logprobs [B, T] (0 on padding)."""
        width = max((len(s) for s in self.sequences), default=0)
        b = len(self.sequences)
        ids = torch.full((b, width), pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        lps = torch.zeros((b, width), dtype=torch.float32)
        for i, (seq, lp) in enumerate(zip(self.sequences, self.logprobs)):
            ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[i, : len(seq)] = 1
            lps[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
        return ids.to(device), mask.to(device), lps.to(device)


@runtime_checkable
class GenerationEngine(Protocol):
    """What the pipeline asks of a generation backend. Engines that keep their own copy of the policy's weights
    also define ``on_policy_update(policy)``, which online RL calls after every optimizer step."""

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> GenerationOutput: ...


# -- sampling: pure functions over logits [B, V] ----------------------------------------------------

def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row [B, V] (ties at the k-th value kept), the rest -inf. k=0: no-op."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of tokens whose probability sums to >= p.

    The most likely token is always kept. logits [B, V] -> [B, V] with the dropped entries -inf.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    # mass strictly before each token; a token is dropped when that mass already reaches p
    before = probs.cumsum(-1) - probs
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of ``logits`` [B, V] (fp32). Returns (tokens [B] long, logprobs [B] float).

    The log-prob is taken under ``log_softmax(logits / T)`` (T = 1 when greedy), before top-k/top-p: the
    distribution the policy defines at that temperature, which is what RL recomputes from the model.
    """
    if params.greedy:
        logp = logits.log_softmax(-1)
        tokens = logits.argmax(-1)
    else:
        scaled = logits / params.temperature if params.temperature != 1.0 else logits
        logp = scaled.log_softmax(-1)
        filtered = filter_top_p(filter_top_k(scaled, params.top_k), params.top_p)
        probs = logp.exp() if filtered is scaled else filtered.softmax(-1)
        tokens = inverse_cdf_sample(probs, generator)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def top_logprobs_of(logits: torch.Tensor, params: SamplingParams) -> list[list[tuple[int, float]]]:
    """The ``params.top_logprobs`` most likely (token id, log-prob) pairs of each row of ``logits`` [B, V], most likely
    first, under the distribution :func:`sample_next` reports log-probs from (``log_softmax(logits / T)``, T = 1 when
    greedy), so the sampled token's log-prob and these agree."""
    k = min(params.top_logprobs, logits.shape[-1])
    scaled = logits if params.greedy or params.temperature == 1.0 else logits / params.temperature
    values, ids = scaled.float().log_softmax(-1).topk(k, dim=-1)
    return [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` [B, V] (rows need not sum to exactly 1) -> token ids [B] (long).

    Inverse-CDF sampling: the first token whose cumulative mass exceeds u * total, u ~ U[0, 1). One uniform per
    row instead of one per vocabulary entry (the exponential race needs B x V uniforms: torch's CPU generator makes
    them at ~8 ms per 64 x 49k batch, 3x the rest of this function). The cumulative sum is taken in float64 so the
    49k-term prefix sums carry no visible rounding; u is drawn in float32 (at most 1 - 2^-24), so u * total stays
    strictly below the total and ``right=True`` never lands on a zero-probability token.
    """
    cdf = probs.cumsum(-1, dtype=torch.float64)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=torch.float32)
    return torch.searchsorted(cdf, u.double() * cdf[:, -1:], right=True).squeeze(-1)


# -- the Hugging Face backend ------------------------------------------------------------------------

def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids: set[int] = set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(e) for e in extra)
    if not ids:
        raise PreftuneError("neither the tokenizer nor the model defines an EOS token; generation could never stop early")
    return ids


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class _PreallocatedLayer(DynamicLayer):
    """A KV-cache layer that writes into buffers allocated once for the whole generation.

    ``DynamicLayer`` concatenates keys/values every step (a copy of the whole cache per token); this layer
    allocates [B, heads, capacity, head_dim] on first use and exposes views of the filled part instead.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self._len = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_empty((b, h, self.capacity, d))
        self._v = value_states.new_empty((b, value_states.shape[1], self.capacity, value_states.shape[-1]))
        self._len = 0
        self.is_initialized = True

    def _views(self) -> None:
        self.keys = self._k[:, :, : self._len]
        self.values = self._v[:, :, : self._len]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._len + n > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded")
        self._k[:, :, self._len : self._len + n] = key_states
        self._v[:, :, self._len : self._len + n] = value_states
        self._len += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            # only the filled part moves: rows are dropped, the buffer shrinks with them
            self._k = self._k.index_select(0, beam_idx.to(self._k.device))
            self._v = self._v.index_select(0, beam_idx.to(self._v.device))
            self._views()

    batch_select_indices = reorder_cache


def _new_cache(model, capacity: int):
    """A preallocated KV cache for decoder-only models with plain full attention on every layer, else None (the model's own)."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        return None
    if getattr(config, "sliding_window", None) or model.config.model_type not in _PREALLOCATED_TYPES:
        return None
    return Cache(layers=[_PreallocatedLayer(capacity) for _ in range(config.num_hidden_layers)])


# model types whose attention was checked against the preallocated cache (tests/test_generation.py)
_PREALLOCATED_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def _find_stop(text: str, stops: Sequence[str]) -> int:
    """Index where the earliest stop string starts in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


class HFEngine:
    """Batched sampling with a KV cache over a Hugging Face causal LM (see the module docstring).

    ``batch_size`` prompts are decoded together; ``show_progress`` draws a bar over the batches.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 16, show_progress: bool = True, desc: str = "generating",
                 preallocate: bool = True, fast_decode: bool = True, decode_dtype: str = "auto"):
        self.model = model
        self.preallocate = preallocate
        # the lean prefill and decode step of fast_decode.py for Llama-family models, with its weights in
        # decode_dtype (see fast_decode.resolve_decode_dtype; "auto" is bf16 on a CPU with native bf16);
        # preallocate=False asks for the model's own cache and forward, so it turns this off too
        from preftune.generation.fast_decode import resolve_decode_dtype, unsupported_reason

        self.fast_decode = fast_decode and preallocate and unsupported_reason(model) is None

        self.decode_dtype = resolve_decode_dtype(model, decode_dtype)  # None: the model's own parameters
        self._decode_weights = None
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.show_progress = show_progress
        self.desc = desc
        self.eos_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids))
        self._logits_to_keep = _accepts(model, "logits_to_keep")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, *,
                 on_tokens: Callable[[list[int], list[int]], None] | None = None) -> GenerationOutput:
        """Sample completions for ``prompt_ids``. ``on_tokens(indices, tokens)``, when given, is called after every
        decode step with the indices (into ``prompt_ids``) of the rows that drew a token and those tokens (an ending
        EOS included): the hook that streams text while it is generated (``preftune serve``, ``preftune chat``)."""
        for i, p in enumerate(prompt_ids):
            if len(p) == 0:
                raise PreftuneError(f"prompt {i} is empty: generation needs at least one prompt token")
        n = len(prompt_ids)
        order = sorted(range(n), key=lambda i: len(prompt_ids[i]))
        generator = None
        if params.seed is not None and not params.greedy:
            generator = torch.Generator(device=self.device).manual_seed(int(params.seed))
        results: list[tuple | None] = [None] * n
        batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        with eval_mode(self.model):
            for batch in self._bar(batches):
                hook = None
                if on_tokens is not None:
                    def hook(rows: list[int], tokens: list[int], batch=batch) -> None:
                        on_tokens([batch[r] for r in rows], tokens)
                for idx, res in zip(batch, self._generate_batch([prompt_ids[i] for i in batch], params, generator, hook)):
                    results[idx] = res
        return GenerationOutput(
            sequences=[r[0] for r in results],
            logprobs=[r[1] for r in results],
            texts=[r[3] for r in results],
            finished=[r[2] for r in results],
            prompt_ids=[list(p) for p in prompt_ids],
            top_logprobs=[r[4] for r in results],
        )

    def on_policy_update(self, policy=None) -> None:
        """The policy's weights changed (an optimizer step, a checkpoint loaded): drop the decode-dtype copies.

        The copies also notice in-place updates through the parameters' version counters, but torch's fused
        AdamW does not bump those, so trainers call this after every step. ``policy`` is unused (this engine
        decodes the model it was given); engines that hold their own weights (vLLM) load them from it.
        """
        if self._decode_weights is not None:
            self._decode_weights.invalidate()

    def _fast_prefill(self, ids: torch.Tensor, mask: torch.Tensor, capacity: int):
        """(:class:`LlamaDecoder` holding the prompts' KV cache, next-token logits [U, V]) for left-padded ``ids``."""
        from preftune.generation.fast_decode import DecodeWeights, LlamaDecoder

        if self._decode_weights is None:
            self._decode_weights = DecodeWeights(self.model, self.decode_dtype)
        return LlamaDecoder.prefilled(self.model, ids, mask, capacity, weights=self._decode_weights)

    def _bar(self, batches):
        if not self.show_progress or len(batches) <= 1:
            return batches
        return progress(batches, desc=self.desc)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, generator, on_tokens=None) -> list[tuple]:
        model, dev = self.model, self.device
        b = len(prompts)
        # each distinct prompt is prefilled once; its KV cache is then copied to every row that samples from it
        # (k samples per prompt in online RL: k-fold less prefill work)
        unique, members = group_by_prompt(prompts)
        width = max(len(p) for p in unique)
        u = len(unique)
        ids = torch.full((u, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((u, width), dtype=torch.long)
        for i, p in enumerate(unique):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        capacity = width + params.max_new_tokens
        cache = decoder = None
        if self.fast_decode:  # the prompts go through the decode weights too (bf16 by default on CPU)
            decoder, logits = self._fast_prefill(ids, mask, capacity)
        else:
            extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
            cache = _new_cache(model, capacity) if self.preallocate else None
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True, **extra)
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
        next_pos = positions[:, -1] + 1
        if u < b:
            source = [0] * b
            for g, rows in enumerate(members):
                for r in rows:
                    source[r] = g
            expand = torch.tensor(source, dtype=torch.long, device=dev)
            if decoder is not None:
                decoder.select(expand)
            else:
                cache.reorder_cache(expand)
            logits, mask, next_pos = logits[expand], mask[expand], next_pos[expand]

        tokens: list[list[int]] = [[] for _ in range(b)]
        logps: list[list[float]] = [[] for _ in range(b)]
        tops: list[list[list[tuple[int, float]]]] = [[] for _ in range(b)]
        finished = [False] * b
        texts: list[str | None] = [None] * b
        active = list(range(b))  # original row of each live row
        eos = self.eos_ids
        for step in range(params.max_new_tokens):
            tok, lp = sample_next(logits, params, generator)
            tok_l, lp_l = tok.tolist(), lp.tolist()
            if params.top_logprobs:
                for row, top in zip(active, top_logprobs_of(logits, params)):
                    tops[row].append(top)
            if on_tokens is not None:
                on_tokens(list(active), tok_l)
            keep: list[int] = []
            for j, row in enumerate(active):
                tokens[row].append(tok_l[j])
                logps[row].append(lp_l[j])
                if tok_l[j] in eos:
                    finished[row] = True
                    texts[row] = self._decode(tokens[row][:-1])
                    continue
                if params.stop:
                    text = self._decode(tokens[row])
                    cut = _find_stop(text, params.stop)
                    if cut >= 0:
                        finished[row] = True
                        texts[row] = text[:cut]
                        continue
                keep.append(j)
            if not keep or step == params.max_new_tokens - 1:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, dtype=torch.long, device=dev)
                if decoder is not None:
                    decoder.select(sel)
                else:
                    cache.reorder_cache(sel)
                mask, next_pos, tok = mask[sel], next_pos[sel], tok[sel]
                active = [active[j] for j in keep]
            if decoder is not None:
                logits = decoder.step(tok, next_pos)
            else:
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                            past_key_values=cache, use_cache=True)
                logits = out.logits[:, -1, :].float()
            next_pos = next_pos + 1
        return [
            (tokens[i], logps[i], finished[i], texts[i] if texts[i] is not None else self._decode(tokens[i]), tops[i])
            for i in range(b)
        ]


def generate_texts(engine_or_model, tokenizer, prompts: Sequence, params: SamplingParams | None = None,
                   batch_size: int = 16, *, use_chat_template: bool | None = None) -> GenerationOutput:
    """Generate for internal prompts (strings or conversations), tokenised with ``encode_prompt``.

    ``engine_or_model`` is a :class:`GenerationEngine` or a Hugging Face causal LM (wrapped in an :class:`HFEngine`).
    """
    from preftune.data.tokenize import encode_prompt

    params = params or SamplingParams()
    if isinstance(engine_or_model, torch.nn.Module):  # a model (HF models have a .generate too: check this first)
        engine = HFEngine(engine_or_model, tokenizer, batch_size=batch_size)
    else:
        engine = engine_or_model
    ids = [encode_prompt(tokenizer, p, use_chat_template=use_chat_template) for p in prompts]
    return engine.generate(ids, params)
