"""What verification measures on the served version itself, cached per version for later deletions.

The served version does not change between deletions against it, so its per-sample signals and its canary
exposures are computed once and reused (keyed by the version's training fingerprint; a version without a
training record is not cached). Stored as JSON under <cache_dir>/served/<key>-v<CACHE_VERSION>/.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workers.modeling.base import Sample

CACHE_VERSION = 1  # bump when the signals computed per sample change


class ServedCache:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._signals: dict[str, dict[str, float]] = self._read("signals.json")
        self._exposures: dict[str, list[Any]] = self._read("exposures.json")

    def _read(self, name: str) -> dict:
        if self.directory is None or not (self.directory / name).exists():
            return {}
        return json.loads((self.directory / name).read_text())

    def _write(self, name: str, data: dict) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f"{name}.tmp"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.directory / name)

    def signals(
        self, samples: Sequence[Sample], compute: Callable[[Sequence[Sample]], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """Signals of `samples`, computing (and storing) only those of samples not seen before."""
        missing = [s for s in samples if s.sample_id not in self._signals]
        if missing:
            fresh = compute(missing)
            for i, s in enumerate(missing):
                self._signals[s.sample_id] = {k: float(v[i]) for k, v in fresh.items()}
            self._write("signals.json", self._signals)
        names = list(self._signals[samples[0].sample_id]) if samples else []
        return {k: np.array([self._signals[s.sample_id][k] for s in samples]) for k in names}

    def exposure(self, key: str, compute: Callable[[], tuple[float, int, int]]) -> tuple[float, int, int]:
        if key not in self._exposures:
            self._exposures[key] = list(compute())
            self._write("exposures.json", self._exposures)
        bits, rank, size = self._exposures[key]
        return float(bits), int(rank), int(size)
