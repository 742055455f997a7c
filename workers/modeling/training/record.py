"""What a provenance run leaves behind: the TrainingRecord and the directory it describes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.registry.recipe import TrainingRecipe
from workers.modeling.base import ModelAdapter, Sample, SampleGradient
from workers.modeling.training.checkpoints import CHECKPOINT_DIR, read_checkpoint
from workers.modeling.training.gradients import GRADIENTS_FILE, GradientStore

RECORD_FILE = "record.json"
MODEL_DIR = "model"


@dataclass
class TrainingRecord:
    """Provenance of one trained version; lives in `directory` (see `train_with_provenance`)."""

    directory: Path
    recipe: TrainingRecipe
    adapter_kind: str
    adapter_config: dict[str, Any]
    blocks: list[list[str]]  # sample ids per block, in block order
    order: list[dict[str, Any]]  # every (block, epoch) visit: {"block", "epoch", "sample_ids"}
    fingerprint: str  # fingerprint_samples of the training set
    block_subjects: list[list[str]] = field(default_factory=list)
    block_losses: list[float] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    # a sharded version (workers/modeling/training/shards.py): its members' record folders, relative
    shards: list[str] = field(default_factory=list)
    _gradients: GradientStore | None = field(default=None, repr=False, compare=False)

    # persistence
    def save(self) -> None:
        data = {
            "recipe": self.recipe.to_dict(),
            "adapter_kind": self.adapter_kind,
            "adapter_config": self.adapter_config,
            "blocks": self.blocks,
            "order": self.order,
            "fingerprint": self.fingerprint,
            "block_subjects": self.block_subjects,
            "block_losses": self.block_losses,
            "timings": self.timings,
            "shards": self.shards,
        }
        (self.directory / RECORD_FILE).write_text(json.dumps(data))

    @classmethod
    def load(cls, directory: Path | str) -> TrainingRecord:
        directory = Path(directory)
        data = json.loads((directory / RECORD_FILE).read_text())
        data["recipe"] = TrainingRecipe.from_dict(data["recipe"])
        return cls(directory=directory, **data)

    @property
    def key(self) -> str:
        """sha256 of what determines the trained weights (data fingerprint, recipe, architecture): a stable
        cache key for anything derived from this version (e.g. membership-inference reference models)."""
        spec = [self.fingerprint, self.recipe.to_dict(), self.adapter_kind, self.adapter_config]
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()

    # shards (SISA)
    @property
    def num_shards(self) -> int:
        """Members of a sharded version; 0 for an ordinary one."""
        return len(self.shards)

    def shard_record(self, shard: int) -> TrainingRecord:
        """The record of member `shard`'s training (its slices, checkpoints and model)."""
        return TrainingRecord.load(self.directory / self.shards[shard])

    # samples and blocks
    @property
    def sample_ids(self) -> list[str]:
        return [sid for block in self.blocks for sid in block]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def training_order(self) -> list[str]:
        """Every sample visit in the exact order training made it."""
        return [sid for visit in self.order for sid in visit["sample_ids"]]

    def block_of(self, sample_id: str) -> int:
        for k, block in enumerate(self.blocks):
            if sample_id in block:
                return k
        raise KeyError(f"sample {sample_id!r} did not train this version")

    def first_affected_block(self, forget_ids: Sequence[str]) -> int:
        """Index d of the first block holding a forget sample: resume from `checkpoint(d)`."""
        forget = set(forget_ids)
        for k, block in enumerate(self.blocks):
            if forget.intersection(block):
                return k
        raise KeyError("none of the forget samples trained this version")

    def blocks_as_samples(
        self, samples: Sequence[Sample], exclude: Sequence[str] = (), *, strict: bool = True
    ) -> list[list[Sample]]:
        """The block layout filled with `samples` (looked up by id), leaving out `exclude`.

        With `strict`, every recorded sample not excluded must be among `samples` (exactness needs all).
        """
        by_id = {s.sample_id: s for s in samples}
        dropped = set(exclude)
        missing = [sid for sid in self.sample_ids if sid not in dropped and sid not in by_id]
        if strict and missing:
            raise KeyError(f"{len(missing)} training samples are missing, e.g. {missing[:3]}")
        return [[by_id[sid] for sid in block if sid not in dropped and sid in by_id] for block in self.blocks]

    # weights
    @property
    def has_checkpoints(self) -> bool:
        return self.recipe.record_block_checkpoints and (self.directory / CHECKPOINT_DIR).is_dir()

    def checkpoint(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(model state, optimizer state) after k blocks; k = 0 is the initial state."""
        if not self.has_checkpoints:
            raise FileNotFoundError("this version was trained without block checkpoints")
        if not 0 <= k <= self.num_blocks:
            raise IndexError(f"checkpoint {k} outside 0..{self.num_blocks}")
        return read_checkpoint(self.directory / CHECKPOINT_DIR, k)

    def restore(self, adapter: ModelAdapter, k: int) -> dict[str, Any]:
        """Load checkpoint k's weights into `adapter`; returns its optimizer state for `train_blocks`."""
        model_state, optimizer_state = self.checkpoint(k)
        adapter.load_state_dict(model_state)
        return optimizer_state

    def final_adapter(self, device: torch.device | None = None) -> ModelAdapter:
        from workers.modeling.adapters import load_adapter

        return load_adapter(self.directory / MODEL_DIR, device=device)

    def new_adapter(self, device: torch.device | None = None) -> ModelAdapter:
        """A freshly initialised model of the recorded architecture (the same init seed)."""
        from workers.modeling.adapters import new_adapter

        return new_adapter(self.adapter_kind, self.adapter_config, device=device)

    def train_like(
        self,
        samples: Sequence[Sample],
        seed: int | None = None,
        device: torch.device | None = None,
        recipe: TrainingRecipe | None = None,
    ) -> ModelAdapter:
        """A model of this version's architecture and recipe (or `recipe`) trained on `samples` (see
        `train_fresh`)."""
        from workers.modeling.training.runs import train_fresh  # runs builds records: imported late

        return train_fresh(
            self.adapter_kind, self.adapter_config, samples, recipe or self.recipe, seed=seed, device=device
        )

    # first-epoch gradients
    @property
    def has_first_epoch_grads(self) -> bool:
        return (self.directory / GRADIENTS_FILE).is_file()

    def first_epoch_gradient(self, sample_id: str) -> SampleGradient:
        """The sample's own loss gradient from its first epoch: parameter name -> tensor.

        Dense tensors for classifiers; for text models only the token-embedding rows of the tokens that
        occur in the sample, as a sparse COO tensor of the full embedding shape (`g.indices()[0]` are the
        rows, `g.values()` their gradients; `param.data.add_(g)` applies it).
        """
        if self._gradients is None:
            if not self.has_first_epoch_grads:
                raise FileNotFoundError("this version was trained without recording first-epoch gradients")
            self._gradients = GradientStore(self.directory / GRADIENTS_FILE)
        return self._gradients.get(sample_id)
