"""The training recipe: everything that, with the architecture and the data, determines trained weights.

Defined here, torch-free, because a model's policy carries recipes (`retrain_recipe`, `training.recipe`,
`method_config.retrain.recipe`) that the API validates; the training code is workers/modeling/training/.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.registry.overrides import overrides_model


def _bounds(low: float, high: float, description: str | None = None) -> dict[str, Any]:
    """A setting's bounds as the API checks them (so one request cannot ask for a billion epochs)."""
    return {"ge": low, "le": high} | ({"description": description} if description else {})


@dataclass
class TrainingRecipe:
    """Everything that, with the adapter config and the data, determines the trained weights."""

    epochs: int = field(default=3, metadata=_bounds(1, 1000, "epochs per block"))
    batch_size: int = field(default=32, metadata=_bounds(1, 4096))
    lr: float = field(default=1e-3, metadata={"gt": 0, "le": 10, "description": "learning rate"})
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = field(default=0.0, metadata=_bounds(0, 10))
    momentum: float = field(default=0.9, metadata={"ge": 0, "lt": 1, "description": "sgd only"})
    # the last block trains at lr * lr_decay, geometric in between (per block); 1: constant
    lr_decay: float = field(
        default=1.0, metadata={"gt": 0, "le": 1, "description": "the last block trains at lr * lr_decay"}
    )
    seed: int = field(default=0, metadata={"ge": 0, "description": "data order and initialisation"})
    # B; 1 = ordinary training
    num_blocks: int = field(
        default=20,
        metadata=_bounds(
            1, 1000, "training blocks, each subject's samples in one: what an exact restart from the block "
            "before a forgotten subject saves"
        ),
    )  # fmt: skip
    record_block_checkpoints: bool = field(
        default=True, metadata={"description": "keep the model after each block (DeepObliviate needs it)"}
    )
    record_first_epoch_grads: bool = field(
        default=False,
        metadata={"description": "keep each sample's first-epoch gradient (first_epoch_ascent needs it)"},
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRecipe:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes: Any) -> TrainingRecipe:
        return dataclasses.replace(self, **changes)


RecipeOverrides = overrides_model(TrainingRecipe)
