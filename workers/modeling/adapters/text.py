"""What the Hugging Face text adapters share: a tokenizer, padding, and token-embedding-row gradients."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.modeling.base import Batch, ModelAdapter, Sample, SampleGradient

TOKENIZER_DIR = "tokenizer"


class TextAdapter(ModelAdapter):
    """A transformers model fed `Sample.text` through a fast tokenizer (`self.tokenizer`)."""

    # whether the tokenizer adds its own special tokens ([CLS] ... [SEP]) around each text
    add_special_tokens: bool = True

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, max_length: int, device: torch.device | None = None
    ):
        super().__init__(model, device)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            add_special_tokens=self.add_special_tokens,
        )
        return {
            "input_ids": encoded["input_ids"].to(self.device),
            "attention_mask": encoded["attention_mask"].to(self.device),
        }

    def token_embedding_name(self) -> str:
        """Name of the input token-embedding matrix among the model's parameters."""
        weight = self.model.get_input_embeddings().weight
        return next(name for name, p in self.model.named_parameters() if p is weight)

    def save(self, directory: Path) -> None:
        super().save(directory)
        self.tokenizer.save_pretrained(str(Path(directory) / TOKENIZER_DIR))

    def training_step_recording(
        self, batch: Batch, optimizer: torch.optim.Optimizer
    ) -> tuple[float, list[SampleGradient]]:
        """Per-sample gradients of the input token-embedding rows, from the ordinary training backward.

        The embedding matrix is used only through row lookups, and a sample's loss depends only on its own
        positions, so the gradient of the batch loss w.r.t. sample i's looked-up embeddings, times the batch
        size (the batch loss is a mean over samples), is sample i's own gradient; summing it into the rows
        of the tokens it looked up gives that sample's gradient of the embedding matrix, exactly, at the cost
        of one hook. (With tied input/output embeddings the output-layer share is not included.)
        """
        self.model.train()
        captured: dict[str, torch.Tensor] = {}

        def keep_output(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if output.requires_grad:
                output.retain_grad()
            else:  # frozen embedding matrix: its output is a leaf; ask for its gradient all the same
                output.requires_grad_(True)
            captured["embeddings"] = output

        handle = self.model.get_input_embeddings().register_forward_hook(keep_output)
        try:
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss(batch)
            loss.backward()
        finally:
            handle.remove()
        grads = self._embedding_rows(batch, captured["embeddings"].grad * len(batch.samples))
        optimizer.step()
        return float(loss.detach()), grads

    def _embedding_rows(self, batch: Batch, per_position: torch.Tensor) -> list[SampleGradient]:
        name = self.token_embedding_name()
        shape = tuple(self.model.get_input_embeddings().weight.shape)
        out: list[SampleGradient] = []
        for i in range(len(batch.samples)):
            mask = batch.inputs["attention_mask"][i].bool()
            ids = batch.inputs["input_ids"][i][mask]
            rows, inverse = torch.unique(ids, return_inverse=True)
            values = torch.zeros(len(rows), shape[1], dtype=per_position.dtype, device=per_position.device)
            values.index_add_(0, inverse, per_position[i][mask])
            sparse = torch.sparse_coo_tensor(
                rows.unsqueeze(0).cpu(), values.detach().cpu(), shape, check_invariants=False
            )
            out.append({name: sparse.coalesce()})
        return out

    @staticmethod
    def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def texts_as_samples(self, texts: Sequence[str]) -> list[Sample]:
        return [Sample(f"text-{i}", "", text=t) for i, t in enumerate(texts)]

    @staticmethod
    def to_numpy(values: torch.Tensor) -> np.ndarray:
        return values.detach().double().cpu().numpy()
