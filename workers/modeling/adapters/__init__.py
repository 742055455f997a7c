"""Model adapters by kind: the kind written in a manifest finds the class that rebuilds the model."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from workers.modeling.base import ADAPTER_FILE, ModelAdapter

# kind -> "module:Class"; imported lazily so a torch-only install never imports transformers.
ADAPTER_KINDS = {
    "torch-classifier": "workers.modeling.adapters.torch_classifier:TorchClassifierAdapter",
    "causal-lm": "workers.modeling.adapters.causal_lm:CausalLMAdapter",
    "sequence-classifier": "workers.modeling.adapters.sequence_classifier:SequenceClassifierAdapter",
    "hf-causal-lm": "workers.modeling.adapters.hf:HFCausalLMAdapter",
    "hf-sequence-classifier": "workers.modeling.adapters.hf:HFSequenceClassifierAdapter",
    "sharded": "workers.modeling.adapters.sharded:ShardedAdapter",
}


def adapter_class(kind: str) -> type[ModelAdapter]:
    try:
        module_name, class_name = ADAPTER_KINDS[kind].split(":")
    except KeyError:
        raise KeyError(f"unknown adapter kind {kind!r}; known: {', '.join(sorted(ADAPTER_KINDS))}") from None
    return getattr(importlib.import_module(module_name), class_name)


def new_adapter(kind: str, config: Mapping[str, Any], device: torch.device | None = None) -> ModelAdapter:
    """A freshly initialised model of `kind` built from its config (weights from the config's seed)."""
    return adapter_class(kind).from_config(config, device=device)


def load_adapter(directory: Path | str, device: torch.device | None = None) -> ModelAdapter:
    """Load whatever adapter `ModelAdapter.save` wrote into `directory`."""
    kind = json.loads((Path(directory) / ADAPTER_FILE).read_text())["kind"]
    return adapter_class(kind).load(Path(directory), device=device)
