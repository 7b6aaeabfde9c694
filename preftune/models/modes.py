"""Switching a module's train/eval mode for a stretch of code, and back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode (no dropout) inside the block, the module's own mode again after it, even when the block raises.

    For every no-grad pass in the middle of training: reference log-probs, held-out evaluation, sampling, scoring.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
