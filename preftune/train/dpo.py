"""The DPO family's step: packed pairs → policy (and reference) log-probs → a loss of :mod:`preftune.losses.preference`.

Also KTO's step (unpaired examples with mismatched completions for the KL reference point), the three ways of
getting reference log-probs, and the held-out evaluation (implicit-reward accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from preftune.errors import PreftuneError
from preftune.losses.preference import (
    PairLogps,
    get_loss,
    kto_kl_estimate,
    kto_loss,
    paired_loss,
    preference_metrics,
)
from preftune.models.logprobs import completion_logprobs
from preftune.models.packing import PackedBatch, pack_completions, pack_pairs
from preftune.models.modes import eval_mode
from preftune.models.reference import reference_view
from preftune.progress import progress
from preftune.train.loop import StepOutput

REF_MODES = ("precomputed", "copy", "adapter")


# -- items and collation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairItem:
    """One tokenised pair; ``key`` names it in the reference cache (an int for training data, ("eval", j) otherwise)."""

    key: Any
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    label: float | None = None  # soft label P(chosen ≻ rejected); None: a hard pair

    @property
    def length(self) -> int:  # tokens of its packed row
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


@dataclass(frozen=True)
class UnpairedItem:
    """One KTO example and the completion of another example paired with its prompt (for the KL estimate)."""

    key: Any
    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool
    mismatched_ids: list[int]

    @property
    def length(self) -> int:
        return 2 * len(self.prompt_ids) + len(self.completion_ids) + len(self.mismatched_ids)


@dataclass
class PreferenceBatch:
    """A collated micro-batch: ``packed`` holds ``k`` sequences per item in item order (pairs: chosen, rejected)."""

    packed: PackedBatch
    keys: list
    lengths: torch.Tensor  # [B, k] scored tokens per sequence
    desirable: torch.Tensor | None = None  # [B] (KTO)
    mismatched: PackedBatch | None = None  # KTO: prompt_i + completion of another example, one per item
    labels: torch.Tensor | None = None  # [B] soft labels P(chosen ≻ rejected) (None: every pair hard)

    def to(self, device) -> "PreferenceBatch":
        return PreferenceBatch(self.packed.to(device), self.keys, self.lengths.to(device),
                               None if self.desirable is None else self.desirable.to(device),
                               None if self.mismatched is None else self.mismatched.to(device),
                               None if self.labels is None else self.labels.to(device))

    @property
    def size(self) -> int:
        return len(self.keys)


class PairCollator:
    """Pairs → one :class:`PreferenceBatch` in the chosen layout (see :func:`preftune.models.packing.pack_pairs`)."""

    def __init__(self, pad_id: int, layout: str = "packed", max_row_tokens: int | None = None):
        self.pad_id, self.layout, self.max_row_tokens = pad_id, layout, max_row_tokens

    def __call__(self, items: list[PairItem]) -> PreferenceBatch:
        packed = pack_pairs([i.prompt_ids for i in items], [i.chosen_ids for i in items], [i.rejected_ids for i in items],
                            pad_id=self.pad_id, layout=self.layout, max_row_tokens=self.max_row_tokens)
        labels = None
        if any(i.label is not None for i in items):  # a hard pair among soft ones has probability 1
            labels = torch.tensor([1.0 if i.label is None else i.label for i in items], dtype=torch.float32)
        return PreferenceBatch(packed, [i.key for i in items], packed.counts.view(-1, 2), labels=labels)


class UnpairedCollator:
    def __init__(self, pad_id: int, layout: str = "packed", max_row_tokens: int | None = None):
        self.pad_id, self.layout, self.max_row_tokens = pad_id, "packed" if layout == "rows" else layout, max_row_tokens

    def __call__(self, items: list[UnpairedItem]) -> PreferenceBatch:
        pack = dict(pad_id=self.pad_id, layout=self.layout, max_row_tokens=self.max_row_tokens)
        real = pack_completions([i.prompt_ids for i in items], [i.completion_ids for i in items], **pack)
        mism = pack_completions([i.prompt_ids for i in items], [i.mismatched_ids for i in items], **pack)
        lengths = torch.stack([real.counts, mism.counts], 1)
        return PreferenceBatch(real, [i.key for i in items], lengths,
                               torch.tensor([i.desirable for i in items]), mism)


def mismatch_partners(n: int, seed: int = 0) -> list[int]:
    """A fixed derangement of ``range(n)`` (n ≥ 2): example i borrows the completion of example ``partners[i] ≠ i``
    for KTO's KL estimate. Deterministic, so the reference log-probs of mismatched pairs can be precomputed."""
    if n < 2:
        raise PreftuneError("KTO needs at least two examples (the KL estimate pairs prompts with other completions)")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    partners = [0] * n
    for a, b in zip(perm, perm[1:] + perm[:1]):  # a cycle through a random order: never a fixed point
        partners[a] = b
    return partners


# -- the reference --------------------------------------------------------------------------------------


def _sequence_logps(model, batch: PreferenceBatch, head_chunk_size=None) -> torch.Tensor:
    """Summed log-probs ``[B, k]`` of a batch's sequences (KTO: the real and the mismatched completion)."""
    seq = completion_logprobs(model, batch.packed, head_chunk_size=head_chunk_size).sums.view(batch.size, -1)
    if batch.mismatched is not None:
        mism = completion_logprobs(model, batch.mismatched, head_chunk_size=head_chunk_size).sums.view(batch.size, 1)
        seq = torch.cat([seq, mism], 1)
    return seq


class Reference:
    """``log π_ref`` of a batch's sequences, ``[B, k]``, in one of three ways:

    * ``"precomputed"``: one no-grad pass over exactly the examples the run will visit, with the initial weights,
      before training; kept in memory and cached in the run folder (``ref_logps-<process>.pt``) for resume;
    * ``"copy"``: a frozen copy of the initial model, run every step;
    * ``"adapter"``: with LoRA, the policy itself with its adapters disabled (no second copy in memory).
    """

    def __init__(self, mode: str, *, ref_model=None, cache_path: Path | None = None, head_chunk_size: int | None = None):
        if mode not in REF_MODES:
            raise PreftuneError(f"unknown ref '{mode}' (choose from {', '.join(REF_MODES)})")
        self.mode, self.ref_model, self.cache_path, self.head_chunk_size = mode, ref_model, cache_path, head_chunk_size
        self.cache: dict = {}

    def __call__(self, model, batch: PreferenceBatch) -> torch.Tensor:
        if self.mode == "precomputed":
            try:
                rows = [self.cache[k] for k in batch.keys]
            except KeyError as err:
                raise PreftuneError(f"no precomputed reference log-probs for example {err.args[0]!r} "
                                    "(did max_steps or the data change since the run started?)") from None
            return torch.stack(rows).to(batch.packed.input_ids.device)
        missing = "ref=adapter needs LoRA training (--lora); use ref=precomputed or ref=copy"
        with torch.no_grad(), reference_view(model, self.ref_model if self.mode == "copy" else None, missing=missing) as ref:
            return _sequence_logps(ref, batch, self.head_chunk_size)

    def precompute(self, model, items: list, collate, *, batch_size: int = 8, device=None, desc="reference log-probs") -> None:
        """Fill the cache for ``items`` (those not cached yet) with ``model`` as the reference, no grad, eval mode."""
        todo = [it for it in items if it.key not in self.cache]
        if not todo:
            return
        with eval_mode(model), torch.no_grad():
            for s in progress(range(0, len(todo), batch_size), desc=desc):
                chunk = todo[s:s + batch_size]
                batch = collate(chunk)
                if device is not None:
                    batch = batch.to(device)
                values = _sequence_logps(model, batch, self.head_chunk_size).float().cpu()
                for it, row in zip(chunk, values):
                    self.cache[it.key] = row

    def save(self) -> None:
        if self.cache_path is not None and self.mode == "precomputed":
            torch.save(self.cache, self.cache_path)

    def load(self) -> bool:
        """Read the cache of every process of the run (``ref_logps-*.pt`` beside ``cache_path``): a run resumed
        with another process count visits other processes' examples."""
        if self.cache_path is None:
            return False
        found = sorted(self.cache_path.parent.glob("ref_logps-*.pt"))
        for path in found:
            self.cache.update(torch.load(path, weights_only=False))
        return bool(found)


# -- the steps ----------------------------------------------------------------------------------------------


@dataclass
class LossKnobs:
    beta: float | None = None
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    rpo_alpha: float = 1.0
    cpo_alpha: float = 1.0
    ipo_length_normalize: bool = True
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0


def _log_metrics(policy: torch.Tensor, ref: torch.Tensor | None, names=("chosen", "rejected")) -> dict[str, float]:
    """logps/<name> (mean summed log-prob) and, with a reference, kl: the mean log-ratio log π/π_ref of the batch's
    completions (the k1 estimator, on the data's completions rather than samples of π)."""
    m = {f"logps/{n}": policy[:, j].mean().item() for j, n in enumerate(names)}
    if ref is not None:
        m["kl"] = (policy - ref).mean().item()
    return m


class PreferenceStep:
    """A paired loss of the DPO family over one micro-batch of pairs (weight = number of pairs)."""

    def __init__(self, loss: str, knobs: LossKnobs, reference: Reference | None, head_chunk_size: int | None = None):
        self.spec = get_loss(loss)
        if self.spec.unpaired:
            raise PreftuneError(f"loss '{loss}' is unpaired; use KTOStep")
        if self.spec.reference and reference is None:
            raise PreftuneError(f"loss '{loss}' needs a reference")
        self.knobs, self.reference, self.head_chunk_size = knobs, reference, head_chunk_size

    def weight(self, batch: PreferenceBatch) -> float:
        return float(batch.size)

    def __call__(self, model, batch: PreferenceBatch) -> StepOutput:
        policy = completion_logprobs(model, batch.packed, head_chunk_size=self.head_chunk_size).sums.view(-1, 2)
        ref = self.reference(model, batch) if self.spec.reference else None
        lengths = batch.lengths.to(policy.dtype)
        x = PairLogps(policy[:, 0], policy[:, 1], lengths[:, 0], lengths[:, 1],
                      None if ref is None else ref[:, 0], None if ref is None else ref[:, 1],
                      None if batch.labels is None else batch.labels.to(policy.dtype))
        k = self.knobs
        out = paired_loss(self.spec.name, x, beta=k.beta, label_smoothing=k.label_smoothing, simpo_gamma=k.simpo_gamma,
                          rpo_alpha=k.rpo_alpha, cpo_alpha=k.cpo_alpha, ipo_length_normalize=k.ipo_length_normalize)
        metrics = {"loss": out.loss.item(), **preference_metrics(out), **_log_metrics(policy.detach(), ref)}
        return StepOutput(out.losses.sum(), metrics, batch.packed.num_tokens)


class KTOStep:
    """KTO over a micro-batch of unpaired examples: z₀ from the mismatched completions (no grad), weight = examples."""

    def __init__(self, knobs: LossKnobs, reference: Reference, head_chunk_size: int | None = None):
        self.knobs, self.reference, self.head_chunk_size = knobs, reference, head_chunk_size

    def weight(self, batch: PreferenceBatch) -> float:
        return float(batch.size)

    def __call__(self, model, batch: PreferenceBatch) -> StepOutput:
        policy = completion_logprobs(model, batch.packed, head_chunk_size=self.head_chunk_size).sums
        with torch.no_grad():
            policy_mm = completion_logprobs(model, batch.mismatched, head_chunk_size=self.head_chunk_size).sums
        ref = self.reference(model, batch)
        kl = kto_kl_estimate(policy_mm, ref[:, 1])
        k = self.knobs
        beta = get_loss("kto").default_beta if k.beta is None else k.beta
        out = kto_loss(policy, ref[:, 0], batch.desirable, kl, beta=beta,
                       desirable_weight=k.kto_desirable_weight, undesirable_weight=k.kto_undesirable_weight)
        metrics = {"loss": out.loss.item(), **preference_metrics(out), "logps/policy": policy.detach().mean().item()}
        return StepOutput(out.losses.sum(), metrics, batch.packed.num_tokens + batch.mismatched.num_tokens)


@torch.no_grad()
def evaluate_pairs(model, step: PreferenceStep, items: list[PairItem], collate, *, batch_size: int = 8,
                   device=None, desc: str = "evaluating") -> dict[str, float]:
    """The step's loss and reward metrics on held-out pairs (eval mode, no grad), averaged over pairs:
    ``rewards/accuracy`` is the fraction of pairs whose implicit reward ranks chosen above rejected."""
    rows: list[tuple[int, dict]] = []
    with eval_mode(model):
        for s in progress(range(0, len(items), batch_size), desc=desc):
            batch = collate(items[s:s + batch_size])
            if device is not None:
                batch = batch.to(device)
            out = step(model, batch)
            rows.append((batch.size, out.metrics))
    total = sum(w for w, _ in rows)
    keys = rows[0][1].keys() if rows else ()
    return {k: sum(w * m[k] for w, m in rows if k in m) / total for k in keys}
