"""The one precision policy of every trainer (SFT, the DPO family, reward models, online RL).

Trained weights are fp32 *master weights* on every device; on a CUDA GPU the forward and backward passes run
under bf16 autocast (fp16 where the GPU has no bf16), on a CPU in fp32. AdamW therefore always steps fp32
weights: an update smaller than bf16's resolution near a weight (2^-8 of it: 0.004 for a weight of 1) is kept,
where a bf16 weight would round it away. Models that are only read (a frozen reference, a reward model) may be
kept in bf16 on a GPU to save memory; they take no optimizer steps.

The decision is recorded in the run folder's ``config.yaml`` (key ``precision``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from preftune.errors import PreftuneError

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class PrecisionPolicy:
    master_weights: str  # dtype of the trained weights and of the optimizer's state: always "float32"
    autocast: str  # "bf16" | "fp16" | "no": what accelerate's mixed_precision runs forward / backward in
    device: str  # the device type the decision was made for ("cuda", "cpu")

    @property
    def weight_dtype(self) -> torch.dtype:
        return getattr(torch, self.master_weights)

    def record(self) -> dict[str, str]:
        return asdict(self)


def precision_policy(mixed_precision: str = "auto", device: str | torch.device | None = None) -> PrecisionPolicy:
    """fp32 master weights everywhere; ``mixed_precision="auto"``: bf16 autocast on a CUDA GPU (fp16 on one without
    bf16), none on a CPU. An explicit ``no`` / ``bf16`` / ``fp16`` is kept (fp16 autocast needs a GPU)."""
    if mixed_precision not in MIXED_PRECISION:
        raise PreftuneError(f"unknown mixed_precision '{mixed_precision}' (choose from {', '.join(MIXED_PRECISION)})")
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if mixed_precision == "auto":
        if kind == "cuda":
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mixed_precision = "no"
    if mixed_precision == "fp16" and kind != "cuda":
        raise PreftuneError("mixed_precision fp16 needs a CUDA GPU (use bf16 or no on a CPU)")
    return PrecisionPolicy("float32", mixed_precision, kind)


def to_master_weights(module: torch.nn.Module, policy: PrecisionPolicy) -> torch.nn.Module:
    """Cast ``module``'s trainable floating-point parameters to the master-weight dtype (fp32); frozen ones stay."""
    dtype = policy.weight_dtype
    for p in module.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return module
