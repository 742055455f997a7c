"""Session fixtures of the model engine: reference workloads (small settings) and their trained models.

Trained models come from `Workload.trained()`, cached on disk under LETHE_CACHE_DIR, so only the first run
of the suite trains them. Other test packages may use these fixtures by importing them from here.
"""

from __future__ import annotations

import pytest

from workers.modeling.base import ModelAdapter
from workers.modeling.training import TrainingRecord
from workers.workloads import Workload, load_workload


@pytest.fixture(scope="session")
def digits() -> Workload:
    return load_workload("digits", "small")


@pytest.fixture(scope="session")
def digits_trained(digits: Workload) -> tuple[ModelAdapter, TrainingRecord]:
    return digits.trained()


@pytest.fixture(scope="session")
def bios() -> Workload:
    return load_workload("bios", "small")


@pytest.fixture(scope="session")
def bios_trained(bios: Workload) -> tuple[ModelAdapter, TrainingRecord]:
    return bios.trained()


@pytest.fixture(scope="session")
def minilm() -> Workload:
    return load_workload("minilm", "small")


@pytest.fixture(scope="session")
def minilm_trained(minilm: Workload) -> tuple[ModelAdapter, TrainingRecord]:
    return minilm.trained()
