"""The reference model π_ref, one way for every trainer (DPO's log-ratio, the KL penalty of online RL).

Either a frozen copy of the initial policy (:func:`frozen_copy`), or, with LoRA, the policy itself with its adapters
switched off, so that no second copy of the weights is held (:func:`reference_view` gives whichever applies).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from preftune.errors import PreftuneError
from preftune.models.modes import eval_mode

NO_REFERENCE = "a reference model is needed: a frozen copy, or a LoRA policy whose adapters can be switched off"


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy in eval mode: the reference when it is not the adapter-free view of a LoRA policy."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def can_disable_adapters(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter")


@contextlib.contextmanager
def reference_view(policy: torch.nn.Module, ref_model: torch.nn.Module | None = None, *,
                   missing: str = NO_REFERENCE) -> Iterator[torch.nn.Module]:
    """The module to run as π_ref inside the block, in eval mode: ``ref_model`` when given, else ``policy`` with its
    LoRA adapters disabled; the adapters and the policy's train/eval mode come back after the block, even when it
    raises. No adapters and no ``ref_model``: :class:`PreftuneError` with ``missing``."""
    if ref_model is not None:
        with eval_mode(ref_model):
            yield ref_model
        return
    if not can_disable_adapters(policy):
        raise PreftuneError(missing)
    with eval_mode(policy), policy.disable_adapter():
        yield policy
