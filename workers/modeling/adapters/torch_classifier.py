"""Plain torch classifiers for small images or tabular features (`Sample.features`, `Sample.label`).

On disk (the `torch-classifier` artifact format) a model is `model.safetensors` plus `classifier.json`
naming its architecture: {"architecture": "mlp" | "cnn", "input_shape": [...], "num_classes": N,
"hidden": [...], "channels": [...] (cnn), "input_skip": false (cnn)}. The weights are named as this
module names them (`fcs.<i>.weight`, `head.weight`, `convs.<i>.weight`); an MLP saved from a plain
`nn.Sequential` of Linear and ReLU layers (`0.weight`, `2.weight`, ...) is read too, and its hidden
widths may then be left out of classifier.json (they are read off the weights).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workers.modeling.base import WEIGHTS_FILE, Batch, ModelAdapter, Sample, SampleGradient

CLASSIFIER_FILE = "classifier.json"
# classifier.json key -> the adapter config's key
CLASSIFIER_KEYS = {"architecture": "arch", "input_shape": "input_shape", "num_classes": "num_classes",
                   "hidden": "hidden", "channels": "channels", "input_skip": "input_skip"}  # fmt: skip
SEQUENTIAL_KEY = re.compile(r"^(\d+)\.(weight|bias)$")

DEFAULT_CONFIG: dict[str, Any] = {
    "arch": "cnn",  # "cnn" for [C, H, W] images, "mlp" for flat feature vectors
    "input_shape": [1, 8, 8],
    "channels": [16, 32],  # cnn: conv widths, each followed by 2x2 max-pooling
    "hidden": [64],  # fully connected widths before the output layer
    "num_classes": 10,
    "input_skip": False,  # cnn: also feed the raw pixels to the fully connected layers
    "init_seed": 0,
    # first-epoch gradients are stored per sample (samples x parameters): "all", or parameter names to keep
    "recorded_gradients": "all",
}


class SmallCNN(nn.Module):
    """Conv blocks then fully connected layers; `input_skip` concatenates the raw pixels to the flattened
    conv output. Why: pixel-specific weights of pixels that are blank in clean data are not overwritten by
    later training, so what the model memorised about rare pixel patterns survives block-sequential training
    (measured on digits: shared conv filters alone lost most planted triggers within a few blocks)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        hidden: Sequence[int],
        classes: int,
        input_skip: bool = False,
    ):
        super().__init__()
        self.input_skip = input_skip
        in_ch, height, width = input_shape
        pixels = int(np.prod(input_shape))
        self.convs = nn.ModuleList()
        for out_ch in channels:
            self.convs.append(nn.Conv2d(in_ch, out_ch, 3, padding=1))
            in_ch, height, width = out_ch, height // 2, width // 2
        flat = in_ch * height * width + (pixels if input_skip else 0)
        self.fcs = _fc_stack(flat, hidden)
        self.head = nn.Linear(hidden[-1] if hidden else flat, classes)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        features = []
        pixels = x.flatten(1)
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
            features.append(x.mean(dim=(2, 3)))  # global average pool: one vector per sample
        x = torch.cat([x.flatten(1), pixels], 1) if self.input_skip else x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
            features.append(x)
        logits = self.head(x)
        return (logits, features) if with_features else logits


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: Sequence[int], classes: int):
        super().__init__()
        self.fcs = _fc_stack(in_features, hidden)
        self.head = nn.Linear(hidden[-1] if hidden else in_features, classes)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        features = []
        x = x.flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
            features.append(x)
        logits = self.head(x)
        return (logits, features) if with_features else logits


def _folder_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return _from_sequential(load_file(str(directory / WEIGHTS_FILE)))


def _from_sequential(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An nn.Sequential MLP's weights (`0.weight`, `2.weight`, ...) under this module's names."""
    matches = [SEQUENTIAL_KEY.match(key) for key in state]
    if not state or not all(matches):
        return state
    layers = sorted({int(m.group(1)) for m in matches if m is not None})
    names = {index: f"fcs.{i}" for i, index in enumerate(layers[:-1])} | {layers[-1]: "head"}
    return {f"{names[int(m.group(1))]}.{m.group(2)}": state[m.group(0)] for m in matches if m is not None}


def _fc_count(state: Mapping[str, torch.Tensor]) -> int:
    return len({key.split(".")[1] for key in state if key.startswith("fcs.")})


def _fc_stack(in_features: int, hidden: Sequence[int]) -> nn.ModuleList:
    layers = nn.ModuleList()
    for width in hidden:
        layers.append(nn.Linear(in_features, width))
        in_features = width
    return layers


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The architecture of `config`, initialised from `init_seed` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config["init_seed"]))
        if config["arch"] == "cnn":
            return SmallCNN(
                config["input_shape"],
                config["channels"],
                config["hidden"],
                config["num_classes"],
                bool(config.get("input_skip", False)),
            )
        if config["arch"] == "mlp":
            return MLP(int(np.prod(config["input_shape"])), config["hidden"], config["num_classes"])
    raise ValueError(f"unknown torch classifier arch {config['arch']!r}")


class TorchClassifierAdapter(ModelAdapter):
    task = "image-classification"
    kind = "torch-classifier"

    def __init__(self, model: nn.Module, config: Mapping[str, Any], device: torch.device | None = None):
        super().__init__(model, device)
        self._config = dict(config)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], device: torch.device | None = None
    ) -> TorchClassifierAdapter:
        """A fresh model of the config's architecture; with `base` ({uri, sha256} of a torch-classifier
        folder) it starts from that folder's weights instead (fine-tuning)."""
        full = {**DEFAULT_CONFIG, **config}
        model = build_model(full)
        if full.get("base"):
            from workers.modeling.formats import local_folder

            base = full["base"]
            directory = local_folder(str(base["uri"]), base.get("sha256"))
            model.load_state_dict(_folder_state(directory))
        return cls(model, full, device)

    @classmethod
    def from_folder(cls, directory: Path, device: torch.device | None = None) -> TorchClassifierAdapter:
        """The classifier saved in a torch-classifier folder (classifier.json + model.safetensors)."""
        described = json.loads((Path(directory) / CLASSIFIER_FILE).read_text())
        state = _folder_state(Path(directory))
        config = {CLASSIFIER_KEYS[k]: v for k, v in described.items() if k in CLASSIFIER_KEYS}
        if config.get("arch") == "mlp" and "hidden" not in config:
            config["hidden"] = [int(state[f"fcs.{i}.weight"].shape[0]) for i in range(_fc_count(state))]
        adapter = cls.from_config(config, device)
        adapter.model.load_state_dict(state)
        return adapter

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def save(self, directory: Path) -> None:
        """Lethe's layout plus classifier.json: the folder is also a torch-classifier artifact."""
        super().save(directory)
        described = {k: self._config[ours] for k, ours in CLASSIFIER_KEYS.items() if ours in self._config}
        if described["architecture"] == "mlp":
            described.pop("channels", None)
            described.pop("input_skip", None)
        (Path(directory) / CLASSIFIER_FILE).write_text(json.dumps(described, indent=1))

    def collate(self, samples: Sequence[Sample]) -> Batch:
        shape = self._config["input_shape"]
        x = np.stack([np.asarray(s.features, dtype=np.float32).reshape(shape) for s in samples])
        inputs = {"x": torch.from_numpy(x).to(self.device)}
        if all(s.label is not None for s in samples):
            inputs["y"] = torch.tensor([int(s.label) for s in samples], device=self.device)
        return Batch(samples=samples, inputs=inputs)

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.inputs["x"])

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch), batch.inputs["y"], reduction="none")

    def features(self, batch: Batch) -> list[torch.Tensor]:
        _, features = self.model(batch.inputs["x"], with_features=True)
        return features

    @torch.no_grad()
    def predict_proba(self, samples: Sequence[Sample], batch_size: int = 256) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        out = [
            F.softmax(self.logits(b), -1).double().cpu().numpy() for b in self.batches(samples, batch_size)
        ]
        self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self._config["num_classes"]))

    def predict(self, samples: Sequence[Sample], batch_size: int = 256) -> np.ndarray:
        return self.predict_proba(samples, batch_size).argmax(axis=1)

    def training_step_recording(
        self, batch: Batch, optimizer: torch.optim.Optimizer
    ) -> tuple[float, list[SampleGradient]]:
        """Per-sample gradients of the recorded parameters in one vectorised pass (torch.func.vmap); the
        other parameters enter the forward pass as constants."""
        from torch.func import functional_call, grad, vmap

        self.model.train()
        recorded = self._config.get("recorded_gradients", "all")
        params = {
            n: p.detach()
            for n, p in self.trainable_parameters().items()
            if recorded == "all" or n in recorded
        }

        def one_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = functional_call(self.model, p, (x.unsqueeze(0),), strict=False)
            return F.cross_entropy(logits, y.unsqueeze(0))

        stacked = vmap(grad(one_loss), in_dims=(None, 0, 0))(params, batch.inputs["x"], batch.inputs["y"])
        stacked = {n: g.to("cpu") for n, g in stacked.items()}
        grads = [{n: g[i].clone() for n, g in stacked.items()} for i in range(len(batch.samples))]
        return self.training_step(batch, optimizer), grads
