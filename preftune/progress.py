"""Progress bars for every long loop (tqdm on stderr; quiet when PREFTUNE_NO_PROGRESS=1)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None, **kwargs) -> tqdm:
    """Wrap ``iterable`` (or make a manual bar with ``total``) in a tqdm progress bar."""
    disable = os.environ.get("PREFTUNE_NO_PROGRESS", "") not in ("", "0")
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, **kwargs)
