"""First-epoch gradient files: each sample's own loss gradient from the first epoch of its block."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workers.modeling.base import Sample, SampleGradient

GRADIENTS_FILE = "first_epoch_grads.safetensors"


class GradientRecorder:
    """Collects per-sample gradients in memory; dense ones stacked, row-sparse ones concatenated."""

    def __init__(self) -> None:
        self.sample_ids: list[str] = []
        self.dense: dict[str, list[torch.Tensor]] = {}
        self.sparse_rows: dict[str, list[torch.Tensor]] = {}
        self.sparse_values: dict[str, list[torch.Tensor]] = {}
        self.sparse_shape: dict[str, list[int]] = {}

    def add(self, sample: Sample, grad: SampleGradient) -> None:
        self.sample_ids.append(sample.sample_id)
        for name, tensor in grad.items():
            if tensor.is_sparse:
                tensor = tensor.coalesce()
                self.sparse_rows.setdefault(name, []).append(tensor.indices()[0].to(torch.int64))
                self.sparse_values.setdefault(name, []).append(tensor.values())
                self.sparse_shape[name] = list(tensor.shape)
            else:
                self.dense.setdefault(name, []).append(tensor)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for name, items in self.dense.items():
            tensors[f"dense::{name}"] = torch.stack(items).contiguous()
        for name, rows in self.sparse_rows.items():
            lengths = torch.tensor([0] + [len(r) for r in rows], dtype=torch.int64)
            tensors[f"offsets::{name}"] = torch.cumsum(lengths, 0)
            tensors[f"rows::{name}"] = torch.cat(rows)
            tensors[f"values::{name}"] = torch.cat(self.sparse_values[name]).contiguous()
        metadata = {"sample_ids": json.dumps(self.sample_ids), "sparse_shape": json.dumps(self.sparse_shape)}
        save_file(tensors, str(path), metadata=metadata)


class GradientStore:
    """A saved recorder's file, read back one sample at a time."""

    def __init__(self, path: Path):
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        self.index = {sid: i for i, sid in enumerate(json.loads(metadata["sample_ids"]))}
        self.sparse_shape = json.loads(metadata["sparse_shape"])
        self.tensors = load_file(str(path))

    def get(self, sample_id: str) -> SampleGradient:
        try:
            i = self.index[sample_id]
        except KeyError:
            raise KeyError(f"no first-epoch gradient recorded for sample {sample_id!r}") from None
        out: SampleGradient = {}
        for key, tensor in self.tensors.items():
            kind, name = key.split("::", 1)
            if kind == "dense":
                out[name] = tensor[i].clone()
            elif kind == "offsets":
                lo, hi = int(tensor[i]), int(tensor[i + 1])
                rows = self.tensors[f"rows::{name}"][lo:hi]
                values = self.tensors[f"values::{name}"][lo:hi].clone()
                out[name] = torch.sparse_coo_tensor(
                    rows.unsqueeze(0), values, self.sparse_shape[name], check_invariants=False
                )
        return out
