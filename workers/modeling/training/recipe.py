"""The training recipe: everything that, with the adapter config and the data, determines the weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainingRecipe:
    """Everything that, with the adapter config and the data, determines the trained weights."""

    epochs: int = 3  # per block
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    lr_decay: float = 1.0  # the last block trains at lr * lr_decay, geometric in between (per block)
    seed: int = 0
    num_blocks: int = 20  # B; 1 = ordinary training
    record_block_checkpoints: bool = True
    record_first_epoch_grads: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRecipe:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> TrainingRecipe:
        return dataclasses.replace(self, **changes)
