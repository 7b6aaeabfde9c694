"""The supervised fine-tuning (instruction tuning) loss, as a pure function of completion-token log-probs."""

from __future__ import annotations

import torch

from preftune.models.logprobs import segment_sums


def sft_loss(token_logps: torch.Tensor, segments: torch.Tensor, num_sequences: int, *,
             normalize: str = "tokens") -> torch.Tensor:
    """Negative log-likelihood of the completion tokens only (the prompt is context, not a target).

    Step 1 of InstructGPT (Ouyang et al. 2022, §3.5): maximise ``log π(y | x)`` over demonstrations. With ``N``
    completion tokens in the batch, ``log p_n`` the log-prob of token n and ``s(n)`` its sequence:

    * ``normalize="tokens"`` (default, as TRL and most trainers):  :math:`\\mathcal L = -\\frac1N \\sum_n \\log p_n`
      (every token weighs the same; long completions weigh more);
    * ``normalize="sequences"``: :math:`\\mathcal L = -\\frac1S \\sum_s \\frac{1}{|y_s|} \\sum_{n: s(n)=s} \\log p_n`
      (every example weighs the same).

    ``token_logps``, ``segments``: ``[N]``; returns a 0-d tensor.
    """
    if token_logps.numel() == 0:
        raise ValueError("an SFT batch needs at least one completion token")
    if normalize == "tokens":
        return -token_logps.mean()
    if normalize == "sequences":
        sums = segment_sums(token_logps, segments, num_sequences)
        counts = torch.bincount(segments, minlength=num_sequences).clamp(min=1)
        return -(sums / counts).mean()
    raise ValueError(f"unknown normalize '{normalize}' (tokens or sequences)")
