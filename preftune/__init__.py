"""preftune: the post-training alignment pipeline (SFT, reward models, RLHF, DPO family, evaluation)."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# A bf16 matmul on a CPU that advertises AMX without the OS enabling it dies with "Illegal instruction"
# (oneDNN picks AMX). Capping oneDNN's ISA avoids it; it must be set before torch initialises, so it is
# set here, and models.loading refuses bf16 on CPU when torch was imported before preftune.
BF16_CPU_SAFE = "ONEDNN_MAX_CPU_ISA" in _os.environ or "torch" not in _sys.modules
_os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
