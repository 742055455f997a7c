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
    """A saved recorder's file, read back one sample at a time through a memory map: looking up a few
    samples reads their rows only, whatever the size of the training set."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")
        metadata = self._file.metadata()
        self.index = {sid: i for i, sid in enumerate(json.loads(metadata["sample_ids"]))}
        self.sparse_shape = json.loads(metadata["sparse_shape"])
        self.keys = list(self._file.keys())
        self._offsets: dict[str, torch.Tensor] = {}  # [n + 1] per sparse parameter: small, kept

    def get(self, sample_id: str) -> SampleGradient:
        try:
            i = self.index[sample_id]
        except KeyError:
            raise KeyError(f"no first-epoch gradient recorded for sample {sample_id!r}") from None
        out: SampleGradient = {}
        for key in self.keys:
            kind, name = key.split("::", 1)
            if kind == "dense":
                out[name] = self._file.get_slice(key)[i : i + 1].squeeze(0).clone()
            elif kind == "offsets":
                if key not in self._offsets:
                    self._offsets[key] = self._file.get_tensor(key)
                lo, hi = int(self._offsets[key][i]), int(self._offsets[key][i + 1])
                rows = self._file.get_slice(f"rows::{name}")[lo:hi]
                values = self._file.get_slice(f"values::{name}")[lo:hi].clone()
                out[name] = torch.sparse_coo_tensor(
                    rows.unsqueeze(0), values, self.sparse_shape[name], check_invariants=False
                )
        return out
