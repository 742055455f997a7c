"""What makes a run repeat bit for bit: seeds derived from the recipe's seed, deterministic kernels."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import torch


def derive_seed(seed: int, *parts: Any) -> int:
    """A seed for one use of the recipe's seed (e.g. ("order", block, epoch)), independent of the others."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Request deterministic kernels for the duration (restores the caller's setting)."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
