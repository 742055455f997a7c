"""The one interface every model kind is driven through.

Unlearning methods, training and verification see a model only as a `ModelAdapter` and data only as
`Sample` sequences, so a method written once runs on language models, text classifiers and plain torch
classifiers alike.
"""

from __future__ import annotations

import copy
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

TASKS = ("causal-lm", "sequence-classification", "image-classification")


@dataclass(frozen=True)
class Sample:
    """One training sample as the engine sees it.

    `subject` is whatever identifies the data subject to the caller: a readable id inside reference
    workloads, the keyed HMAC when the service hands samples over. `meta` carries workload facts that
    checks need (a planted canary secret, a backdoor flag) and is never fed to the model.
    """

    sample_id: str
    subject: str
    text: str | None = None
    features: np.ndarray | None = None
    label: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Batch:
    """Tensors of a batch on the adapter's device, plus the samples they came from."""

    samples: Sequence[Sample]
    inputs: dict[str, torch.Tensor]


def sample_digest(sample: Sample) -> str:
    """sha256 of what the model sees of a sample (id, subject, text, features, label)."""
    digest = hashlib.sha256()
    digest.update(sample.sample_id.encode())
    digest.update(b"\0" + sample.subject.encode())
    if sample.text is not None:
        digest.update(b"\0t" + sample.text.encode())
    if sample.features is not None:
        features = np.ascontiguousarray(sample.features)
        digest.update(
            b"\0f" + str(features.dtype).encode() + str(features.shape).encode() + features.tobytes()
        )
    if sample.label is not None:
        digest.update(b"\0l" + str(int(sample.label)).encode())
    return digest.hexdigest()


def fingerprint_samples(samples: Sequence[Sample]) -> str:
    """Order-independent sha256 of a training set: the same samples give the same fingerprint."""
    digest = hashlib.sha256()
    for item in sorted(sample_digest(s) for s in samples):
        digest.update(item.encode())
    return digest.hexdigest()


# Per-sample gradient of one recorded parameter: dense, or row-sparse (torch sparse COO with one sparse dim,
# rows = token ids that occur in the sample) for token embeddings.
SampleGradient = dict[str, torch.Tensor]

WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "adapter.json"


def pick_device(preferred: str | None = None) -> torch.device:
    """CUDA when present (or when asked for), else CPU; `LETHE_DEVICE` / `preferred` override."""
    import os

    name = preferred or os.environ.get("LETHE_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cache_root() -> Path:
    """Where derived artifacts (trained workload models, LiRA references) are cached: LETHE_CACHE_DIR, else
    .cache/lethe under the working directory (one cache per checkout, so a clone never reuses another's)."""
    import os

    return Path(os.environ.get("LETHE_CACHE_DIR") or Path.cwd() / ".cache" / "lethe")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a torch generator for data order."""
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


class ModelAdapter(ABC):
    """A model plus everything needed to feed it samples.

    Implementations: causal LM (`CausalLMAdapter`), sequence classifier on a pre-trained encoder
    (`SequenceClassifierAdapter`), plain torch classifier (`TorchClassifierAdapter`).
    """

    task: ClassVar[str]
    kind: ClassVar[str]  # registry key used in manifests, e.g. "torch-classifier"

    def __init__(self, model: torch.nn.Module, device: torch.device | None = None) -> None:
        self.device = device or pick_device()
        self.model = model.to(self.device)

    # -- data -------------------------------------------------------------------------------------
    @abstractmethod
    def collate(self, samples: Sequence[Sample]) -> Batch:
        """Turn samples into tensors on the device."""

    def batches(
        self, samples: Sequence[Sample], batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Batch]:
        order = np.arange(len(samples))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(samples))
        for start in range(0, len(order), batch_size):
            yield self.collate([samples[i] for i in order[start : start + batch_size]])

    # -- forward passes ---------------------------------------------------------------------------
    @abstractmethod
    def sample_losses(self, batch: Batch) -> torch.Tensor:
        """Per-sample loss [B] with grad (mean token loss for language models)."""

    def loss(self, batch: Batch) -> torch.Tensor:
        """The training objective of a batch (mean of the per-sample losses)."""
        return self.sample_losses(batch).mean()

    @abstractmethod
    def features(self, batch: Batch) -> list[torch.Tensor]:
        """Pooled intermediate features, one [B, D] tensor per layer, with grad."""

    @torch.no_grad()
    def per_sample_loss(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        """Per-sample losses in eval mode, as a float64 array aligned with `samples`."""
        was_training = self.model.training
        self.model.eval()
        out = [self.sample_losses(b).double().cpu().numpy() for b in self.batches(samples, batch_size)]
        self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros(0)

    @abstractmethod
    def predict(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        """Class labels (classifiers) or per-sample token accuracy (language models)."""

    def training_step(self, batch: Batch, optimizer: torch.optim.Optimizer) -> float:
        self.model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    # -- copies and persistence -------------------------------------------------------------------
    def clone(self) -> ModelAdapter:
        twin = copy.copy(self)
        twin.model = copy.deepcopy(self.model)
        return twin

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable recipe that rebuilds the architecture (and tokenizer) from scratch."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, Any], device: torch.device | None = None) -> ModelAdapter:
        """A freshly initialised model of the same architecture (weights from the recipe's seed)."""

    def save(self, directory: Path) -> None:
        """Weights as safetensors plus `adapter.json` (kind and config); subclasses add tokenizer files."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        save_file(_untie(state), str(directory / WEIGHTS_FILE), metadata={"kind": self.kind})
        (directory / ADAPTER_FILE).write_text(
            json.dumps({"kind": self.kind, "config": self.config()}, indent=1)
        )

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None) -> ModelAdapter:
        """Inverse of `save`: bit-identical weights."""
        from safetensors.torch import load_file

        directory = Path(directory)
        spec = json.loads((directory / ADAPTER_FILE).read_text())
        if spec["kind"] != cls.kind:
            raise ValueError(f"{directory} holds a {spec['kind']!r} model, not {cls.kind!r}")
        adapter = cls.from_config(spec["config"], device=device)
        state = load_file(str(directory / WEIGHTS_FILE))
        adapter.model.load_state_dict(state, strict=False)
        missing = set(adapter.model.state_dict()) - set(state)
        if missing - adapter.tied_parameter_names():
            raise ValueError(f"{directory} lacks weights for {sorted(missing)[:5]}")
        return adapter

    def tied_parameter_names(self) -> set[str]:
        """State-dict keys that share storage with an earlier key (saved once, restored by the tie)."""
        state = self.model.state_dict()
        return set(state) - set(_untie(state))

    # -- training hooks -----------------------------------------------------------------------------
    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Parameters the training recipe updates (frozen ones never change, so checkpoints skip them)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def training_step_recording(
        self, batch: Batch, optimizer: torch.optim.Optimizer
    ) -> tuple[float, list[SampleGradient]]:
        """A training step that also returns each sample's own loss gradient before the update.

        Generic fallback: one backward pass per sample over the trainable parameters. Adapters override
        it with a cheaper exact form (vmap for small torch models, token-embedding rows for text).
        """
        self.model.train()
        params = self.trainable_parameters()
        grads: list[SampleGradient] = []
        for i in range(len(batch.samples)):
            sub = self.collate([batch.samples[i]])
            loss_i = self.sample_losses(sub).sum()
            values = torch.autograd.grad(loss_i, list(params.values()))
            grads.append({n: g.detach().to("cpu") for n, g in zip(params, values, strict=True)})
        return self.training_step(batch, optimizer), grads


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory; keep the first key of each shared storage."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen and tensor.numel() > 0:
            continue
        seen.add(key)
        out[name] = tensor
    return out
