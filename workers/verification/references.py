"""LiRA reference models: trained once per served version, cached on disk, reused by every later deletion.

K models of the served recipe are each trained on a random half of the served version's training data,
balanced so that every data subject is IN for exactly K/2 of them (held-out samples are OUT for all). The
halves are drawn per subject, not per sample: deletions remove subjects, and a model that trained on a
subject's other records (its planted trigger, its biography) is no model "without" that subject's sample.
For a sample, its OUT references show how a model that never saw its subject scores it. Only their per-sample
losses are needed afterwards; those are cached beside the weights, so a later deletion against the same
version costs no training and (for samples seen before) no forward pass.

Cache layout: <cache_dir>/lira/<key>/{manifest.json, losses.npz, ref_<j>/}. `key` is the served version's
training fingerprint when the caller has one, else a hash of the recipe and the training sample ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.modeling.base import ModelAdapter, Sample
from workers.unlearning.base import ProgressCallback, no_progress

# (training samples, seed) -> a freshly initialised model of the served recipe trained on them.
ReferenceTrainer = Callable[[Sequence[Sample], int], ModelAdapter]


# Part of the cache key: bump when the way references are chosen or trained changes.
REFERENCE_SCHEME = "subject-halves-v1"


def reference_key(
    served: ModelAdapter, training: Sequence[Sample], k: int, seed: int, fingerprint: str | None
) -> str:
    recipe = fingerprint or json.dumps(served.config(), sort_keys=True, default=str)
    digest = hashlib.sha256()
    for part in (REFERENCE_SCHEME, recipe, str(k), str(seed), *sorted(s.sample_id for s in training)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def balanced_membership(subjects: Sequence[str], k: int, seed: int) -> np.ndarray:
    """[k, n] bool over samples: each subject IN for exactly k // 2 references, chosen at random."""
    names = sorted(set(subjects))
    rng = np.random.default_rng(seed)
    by_subject = (np.argsort(rng.random((len(names), k)), axis=1) < k // 2).T  # [k, n_subjects]
    column = {name: i for i, name in enumerate(names)}
    return by_subject[:, [column[s] for s in subjects]]


@dataclass
class ReferenceSet:
    directory: Path
    train_ids: list[str]
    in_mask: np.ndarray  # [K, N] over train_ids
    training_seconds: list[float]
    trained_now: bool  # False when every model came from the cache
    adapter_type: type[ModelAdapter]
    _losses: dict[str, np.ndarray] = field(default_factory=dict)  # sample_id -> [K]

    @property
    def k(self) -> int:
        return int(self.in_mask.shape[0])

    def membership(self, samples: Sequence[Sample]) -> np.ndarray:
        """[K, n] bool IN-mask of `samples` (samples outside the training set are OUT everywhere)."""
        column = {sid: j for j, sid in enumerate(self.train_ids)}
        out = np.zeros((self.k, len(samples)), bool)
        for i, s in enumerate(samples):
            if s.sample_id in column:
                out[:, i] = self.in_mask[:, column[s.sample_id]]
        return out

    def losses(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        """[K, n] per-sample loss of every reference; computed once per sample id, then cached."""
        missing = list({s.sample_id: s for s in samples if s.sample_id not in self._losses}.values())
        if missing:
            self._compute(missing, batch_size)
        return (
            np.stack([self._losses[s.sample_id] for s in samples], axis=1)
            if samples
            else np.zeros((self.k, 0))
        )

    def _compute(self, samples: Sequence[Sample], batch_size: int) -> None:
        columns = []
        for j in range(self.k):
            model = self.adapter_type.load(self.directory / f"ref_{j}")
            columns.append(model.per_sample_loss(samples, batch_size))
            del model
        for i, s in enumerate(samples):
            self._losses[s.sample_id] = np.array([c[i] for c in columns])
        self._save_losses()

    def _save_losses(self) -> None:
        ids = list(self._losses)
        tmp = self.directory / "losses.tmp.npz"
        np.savez(tmp, ids=np.array(ids), losses=np.stack([self._losses[i] for i in ids]))
        os.replace(tmp, self.directory / "losses.npz")

    def _load_losses(self) -> None:
        path = self.directory / "losses.npz"
        if path.exists():
            data = np.load(path)
            self._losses = {str(i): row for i, row in zip(data["ids"], data["losses"], strict=True)}


def ensure_references(
    cache_dir: Path,
    served: ModelAdapter,
    training: Sequence[Sample],
    trainer: ReferenceTrainer,
    k: int,
    seed: int = 0,
    fingerprint: str | None = None,
    precompute: Sequence[Sample] = (),
    progress: ProgressCallback = no_progress,
) -> ReferenceSet:
    """Load the served version's references from the cache, training whichever are missing.

    Each model is saved as soon as it is trained, so an interrupted build resumes where it stopped.
    `precompute`: samples whose reference losses are worth caching right away; others are computed on first
    use (one forward pass per reference, then cached).
    """
    if k < 2 or k % 2:
        raise ValueError(f"LiRA needs an even number of reference models >= 2, got {k}")
    key = reference_key(served, training, k, seed, fingerprint)
    directory = Path(cache_dir) / "lira" / key
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / "manifest.json"
    train_ids = [s.sample_id for s in training]
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    in_mask = balanced_membership([s.subject for s in training], k, seed)
    seconds: dict[str, float] = manifest.get("training_seconds", {})
    trained_now = False
    for j in range(k):
        target = directory / f"ref_{j}"
        if str(j) in seconds and target.exists():
            continue
        progress(j / k, f"training LiRA reference {j + 1}/{k}")
        members = [s for s, keep in zip(training, in_mask[j], strict=True) if keep]
        started = time.perf_counter()
        model = trainer(members, seed * 1000 + j + 1)
        seconds[str(j)] = time.perf_counter() - started
        _save_atomically(model, target)
        trained_now = True
        manifest = {"k": k, "seed": seed, "n_train": len(training), "training_seconds": seconds}
        manifest_path.write_text(json.dumps(manifest, indent=2))
        del model
    refs = ReferenceSet(
        directory=directory,
        train_ids=train_ids,
        in_mask=in_mask,
        training_seconds=[seconds[str(j)] for j in range(k)],
        trained_now=trained_now,
        adapter_type=type(served),
    )
    refs._load_losses()
    if precompute:
        refs.losses(precompute)
    progress(1.0, "LiRA references ready")
    return refs


def _save_atomically(model: ModelAdapter, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def trainer_from_record(record: Any) -> ReferenceTrainer:
    """References trained like the served version (`TrainingRecord.train_like`: its architecture, recipe and
    block-sequential schedule) with their own seed for initialisation and data order, as LiRA's shadow
    models are."""

    def train(samples: Sequence[Sample], seed: int) -> ModelAdapter:
        adapter = record.train_like(samples, seed=seed)
        adapter.model.eval()
        return adapter

    return train


def record_fingerprint(record: Any) -> str:
    """Cache key part that names the served version's training: data, recipe and architecture."""
    described = {
        "data": record.fingerprint,
        "recipe": record.recipe.to_dict(),
        "adapter": [record.adapter_kind, record.adapter_config],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
