"""Rollouts: generate -> reward -> log-probs (policy and reference) and values, recomputed by the training model.

One rollout is ``B = num_prompts * k`` responses, grouped prompt by prompt (sample j of prompt n at index
``n * k + j``; RLOO and GRPO rely on it). Everything per token is ``[B, T]``, right-padded, with
``mask`` 1 on real response tokens (the EOS included).

The sampler's own log-probs are *not* used as the "old" policy: the engine runs under
``inference_mode`` with a KV cache (and, elsewhere, maybe vLLM in another precision), so its numbers can
differ from the training forward pass. ``old_logprobs`` are recomputed here by the same forward code the
update uses, so that the PPO ratio is exactly 1 on the first minibatch. When the update is a single optimizer
step over the whole rollout (one epoch, one minibatch) the loop skips that pass and takes the old log-probs,
detached, from the training forward itself (:meth:`preftune.rl.loop.OnlineTrainer.update_single_pass`).

Every forward pass lays the k responses of a prompt out as one group ``[prompt, y_1, ..., y_k]`` with a block
mask (:func:`preftune.models.logprobs.pack_groups`), so the prompt is computed once per group, not k times,
and no padding is processed; the LM head runs only where a response token is predicted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from preftune.data.formats import Prompt
from preftune.errors import PreftuneError
from preftune.generation.engine import GenerationEngine, SamplingParams
from preftune.models.logprobs import (_split, _unwrap, completion_hidden, pack_completions, pack_shared_prompts,
                                      resolve_layout, token_logprobs, token_logprobs_and_entropy)
from preftune.models.reference import NO_REFERENCE, can_disable_adapters, reference_view


@dataclass
class PolicyForward:
    """Per-token outputs of one forward pass over (prompt, response) sequences, each [B, T] (0 on padding)."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None


def dense(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scatter per-token values [N] (sequence by sequence, in order) into [B, T] at ``mask`` (N ones)."""
    out = flat.new_zeros(mask.shape)
    out[mask.bool()] = flat
    return out


def response_mask(sequences: Sequence[Sequence[int]], device=None) -> torch.Tensor:
    """[B, T] with 1 on the first len(seq) positions of each row."""
    width = max((len(s) for s in sequences), default=0)
    lengths = torch.tensor([len(s) for s in sequences])
    return (torch.arange(width)[None, :] < lengths[:, None]).long().to(device)


def _hidden(model, prompt_ids, sequences, pad_id, max_row_tokens, share_prompts: bool = True):
    """Hidden states [N, H] at the positions that predict each response token, and the LM head.

    With the packed layout and ``share_prompts``, responses to the same prompt (the k samples of a group) are laid
    out as one group ``[prompt, y_1, ..., y_k]`` (:func:`preftune.models.logprobs.pack_shared_prompts`): the prompt
    goes through the decoder once per group instead of k times.
    """
    lm = _unwrap(model)
    device = next(lm.parameters()).device
    layout = resolve_layout(model, "auto")
    if layout == "packed" and share_prompts:
        batch = pack_shared_prompts(prompt_ids, sequences, pad_id=pad_id, max_row_tokens=max_row_tokens).to(device)
    else:
        batch = pack_completions(prompt_ids, sequences, pad_id=pad_id, layout=layout,
                                 max_row_tokens=max_row_tokens).to(device)
    head = lm.get_output_embeddings()
    if _split(lm) is not None:
        return completion_hidden(model, batch), head, batch
    # generic decoder: the whole model with hidden states, one padded row per sequence
    mask = (batch.doc_ids >= 0).long()
    out = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False,
                output_hidden_states=True)
    return out.hidden_states[-1][batch.rows, batch.cols], head, batch


def policy_forward(model, prompt_ids: Sequence[Sequence[int]], sequences: Sequence[Sequence[int]], *, pad_id: int,
                   temperature: float = 1.0, value_head: torch.nn.Module | None = None, critic=None,
                   with_entropy: bool = False, max_row_tokens: int | None = 256, share_prompts: bool = True) -> PolicyForward:
    """log pi(y_t | x, y_<t) / T-tempered (as the sampler drew them) for every response token, and optionally the
    entropy of each position's distribution and the values V(x, y_<t).

    Values come from ``value_head`` on the policy's own hidden states (shared trunk), or from ``critic``
    (a :class:`Critic`, a separate model). The LM head runs only at response positions (packed rows, no padding);
    responses sharing a prompt share its forward pass (``share_prompts``, see :func:`_hidden`). Rows hold at most
    ``max_row_tokens`` tokens (a longer group gets its own row): attention is quadratic in the row length.
    The entropy is a diagnostic: computed without grad, in chunks, from the logits already there.
    """
    mask = response_mask(sequences)
    hidden, head, batch = _hidden(model, prompt_ids, sequences, pad_id, max_row_tokens, share_prompts)
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    if with_entropy:
        lp, entropy = token_logprobs_and_entropy(logits, batch.targets)
    else:
        lp, entropy = token_logprobs(logits, batch.targets), None
    device = lp.device
    mask = mask.to(device)
    out = PolicyForward(dense(lp, mask))
    if entropy is not None:
        out.entropy = dense(entropy, mask)
    if value_head is not None:
        out.values = dense(_value(value_head, hidden), mask)
    elif critic is not None:
        out.values = critic(prompt_ids, sequences, pad_id=pad_id, max_row_tokens=max_row_tokens)
    return out


class Critic(torch.nn.Module):
    """A separate value model: a causal LM's decoder plus a scalar head, read at every response position."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm
        hidden = lm.config.get_text_config().hidden_size if hasattr(lm.config, "get_text_config") else lm.config.hidden_size
        self.head = value_head_for(hidden)

    def forward(self, prompt_ids, sequences, *, pad_id: int, max_row_tokens: int | None = 512) -> torch.Tensor:
        hidden, _, _ = _hidden(self.lm, prompt_ids, sequences, pad_id, max_row_tokens)
        return dense(_value(self.head, hidden), response_mask(sequences, hidden.device))


def _value(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """A scalar head on hidden states [N, H] -> [N] fp32. The head keeps its own dtype (fp32 as made by
    :func:`value_head_for`) on a trunk in another (a bf16 model on a GPU): the states are cast to it."""
    weight = getattr(head, "weight", None)
    if weight is not None and hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    return head(hidden).squeeze(-1).float()


def value_head_for(hidden_size: int) -> torch.nn.Linear:
    """A scalar value head initialised to output 0 (the critic starts neutral, not random)."""
    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


@dataclass
class Rollout:
    """One batch of experience. Per-token tensors are [B, T]; per-response [B]."""

    prompts: list  # the internal prompts, repeated k times (grouped)
    prompt_ids: list[list[int]]
    sequences: list[list[int]]  # response ids (EOS included when it ended there)
    texts: list[str]
    finished: torch.Tensor  # [B] bool: ended at EOS / a stop string
    mask: torch.Tensor  # [B, T]
    scores: torch.Tensor  # [B] reward from the reward function (before penalties)
    logprobs: torch.Tensor | None  # [B, T] old policy, recomputed (None until the training forward fills it)
    ref_logprobs: torch.Tensor | None  # [B, T] (None: no reference pass, the KL coefficient is 0)
    entropy: torch.Tensor | None  # [B, T]
    values: torch.Tensor | None = None  # [B, T] (PPO)
    advantages: torch.Tensor | None = None  # [B, T] (PPO) or [B] (critic-free)
    returns: torch.Tensor | None = None  # [B, T] (PPO)
    timings: dict = field(default_factory=dict)
    sampler_logprobs: list[list[float]] | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())


def repeat_prompts(prompts: Sequence, k: int) -> list:
    """[p0, p0, ..., p1, p1, ...]: each item k times, grouped."""
    return [p for p in prompts for _ in range(k)]


def chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def collect_rollout(*, policy, reference: Callable, engine: GenerationEngine, reward_fn: Callable,
                    prompts: Sequence[Prompt], prompt_ids: Sequence[list[int]], params: SamplingParams, k: int,
                    pad_id: int, value_head=None, critic=None, forward_batch_size: int = 16, policy_pass: bool = True,
                    reference_pass: bool = True) -> Rollout:
    """Generate k responses per prompt, score them, and recompute old / reference log-probs (and values).

    ``reference(prompt_ids, sequences) -> [B, T]`` gives the reference log-probs (a frozen copy, or the
    policy with its LoRA adapters switched off). ``policy_pass=False`` leaves ``logprobs`` / ``entropy`` /
    ``values`` to the caller (the single-pass update takes them from its own training forward);
    ``reference_pass=False`` skips the reference (``ref_logprobs`` None: a KL coefficient of 0 needs none).
    Forward passes run ``forward_batch_size`` responses at a time, rounded to whole groups of k.
    """
    prompts_k = repeat_prompts(prompts, k)
    ids_k = repeat_prompts(prompt_ids, k)
    t0 = time.perf_counter()
    gen = engine.generate(ids_k, params)
    t_gen = time.perf_counter() - t0
    sequences = gen.sequences
    t1 = time.perf_counter()
    scores = reward_fn(prompts_k, gen.texts).float().cpu()
    t_rew = time.perf_counter() - t1
    t2 = time.perf_counter()
    temperature = params.temperature if not params.greedy else 1.0
    parts = {"logprobs": [], "ref": [], "entropy": [], "values": []}
    step = max(k, forward_batch_size // k * k)
    for rows in chunks(len(sequences), step) if (policy_pass or reference_pass) else []:
        p = [ids_k[i] for i in rows]
        s = [sequences[i] for i in rows]
        if policy_pass:
            out = policy_forward(policy, p, s, pad_id=pad_id, temperature=temperature, value_head=value_head,
                                 critic=critic, with_entropy=True)
            parts["logprobs"].append(out.logprobs)
            parts["entropy"].append(out.entropy)
            if out.values is not None:
                parts["values"].append(out.values)
        if reference_pass:
            parts["ref"].append(reference(p, s))
    width = max(len(s) for s in sequences)

    def cat(xs):
        if not xs:
            return None
        return torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in xs]).cpu()

    mask = response_mask(sequences)
    rollout = Rollout(
        prompts=prompts_k, prompt_ids=ids_k, sequences=sequences, texts=gen.texts,
        finished=torch.tensor(gen.finished, dtype=torch.bool), mask=mask, scores=scores,
        logprobs=cat(parts["logprobs"]), ref_logprobs=cat(parts["ref"]), entropy=cat(parts["entropy"]),
        values=cat(parts["values"]), sampler_logprobs=gen.logprobs,
    )
    rollout.timings = {"generate_s": t_gen, "reward_s": t_rew, "forward_s": time.perf_counter() - t2,
                       "generated_tokens": sum(len(s) for s in sequences)}
    return rollout


def make_reference(policy, ref_model=None, *, pad_id: int, temperature: float = 1.0) -> Callable:
    """The reference log-prob function (per token, as :func:`policy_forward`): π_ref of
    :func:`preftune.models.reference.reference_view`, a frozen ``ref_model`` or the LoRA policy with adapters off."""
    if ref_model is None and not can_disable_adapters(policy):
        raise PreftuneError(NO_REFERENCE)

    def reference_logprobs(prompt_ids, sequences):
        with reference_view(policy, ref_model) as ref:
            return policy_forward(ref, prompt_ids, sequences, pad_id=pad_id, temperature=temperature).logprobs

    return reference_logprobs
