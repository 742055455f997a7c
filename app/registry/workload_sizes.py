"""The reference workloads' sizes: the one list that the API, the command lines, the workers and the
benchmarks accept. Torch-free, so that the API can validate against it."""

from __future__ import annotations

from typing import Literal, get_args

# small: tests and quick benchmarks (seconds); medium: deletions of the size that matters in practice, an
# exact retrain of minutes on 2 CPU cores; full: the goals (tens of minutes and more).
WorkloadSize = Literal["small", "medium", "full"]
WORKLOAD_SIZES: tuple[str, ...] = get_args(WorkloadSize)
