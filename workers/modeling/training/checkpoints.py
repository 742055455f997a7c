"""Block checkpoint files: model and optimizer state before the first block and after every block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workers.modeling.base import ModelAdapter

CHECKPOINT_DIR = "checkpoints"


class CheckpointWriter:
    """Checkpoint 0 holds the full model state; later ones only what training can change."""

    def __init__(self, directory: Path, adapter: ModelAdapter):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        frozen = {n for n, p in adapter.model.named_parameters() if not p.requires_grad}
        self.changing = [k for k in adapter.model.state_dict() if k not in frozen]

    def write(self, k: int, adapter: ModelAdapter, optimizer: torch.optim.Optimizer) -> None:
        from safetensors.torch import save_file

        state = adapter.model.state_dict()
        keys = list(state) if k == 0 else self.changing
        tensors = {key: state[key].detach().to("cpu").contiguous().clone() for key in keys}
        save_file(tensors, str(self.directory / f"model_{k:04d}.safetensors"))
        torch.save(_to_cpu(optimizer.state_dict()), self.directory / f"optimizer_{k:04d}.pt")


def read_checkpoint(directory: Path, k: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    state = load_file(str(directory / "model_0000.safetensors"))
    if k > 0:
        state.update(load_file(str(directory / f"model_{k:04d}.safetensors")))
    optimizer_state = torch.load(directory / f"optimizer_{k:04d}.pt", weights_only=True)
    return state, optimizer_state


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value
