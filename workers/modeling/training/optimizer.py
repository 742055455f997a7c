"""The optimizer a recipe names, and the learning rate each block trains at."""

from __future__ import annotations

import torch

from app.registry.recipe import TrainingRecipe
from workers.modeling.base import ModelAdapter


def make_optimizer(adapter: ModelAdapter, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    params = list(adapter.trainable_parameters().values())
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def block_lr(recipe: TrainingRecipe, k: int, num_blocks: int) -> float:
    """Learning rate of block k: decaying across blocks so later blocks overwrite earlier ones less."""
    if num_blocks <= 1:
        return recipe.lr
    return recipe.lr * recipe.lr_decay ** (k / (num_blocks - 1))
