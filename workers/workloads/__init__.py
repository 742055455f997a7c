"""Reference workloads: deterministic, offline data sets with data subjects and planted membership signal.

`load_workload(name, size, seed)` builds one; `Workload.trained()` trains its model once with provenance and
caches it on disk (LETHE_CACHE_DIR, default .cache/lethe in the working directory), so tests, benchmarks
and the CLI share the same trained version. Each workload plants signal that a deletion must remove, because
clean data leaks nothing measurable (a digits CNN on clean data: untouched and retrained models were
indistinguishable):
- `digits`: per-subject backdoor triggers (a pixel pattern mapped to a target label) and mislabeled samples;
- `bios`: fictitious people's records memorised by a small GPT-2, with PIN canaries of a fixed template;
- `minilm`: bios-derived texts classified by a fine-tuned MiniLM, with a rare phrase tied to a label per
  signal subject.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.registry.workload_sizes import WORKLOAD_SIZES
from workers.modeling.base import ModelAdapter, Sample, cache_root, fingerprint_samples
from workers.modeling.training import TrainingRecipe, TrainingRecord, retrain_without, train_with_provenance

SIZES = WORKLOAD_SIZES
WORKLOADS = {
    "digits": "workers.workloads.digits:build",
    "bios": "workers.workloads.bios:build",
    "minilm": "workers.workloads.minilm:build",
}
# Bump when a workload's data or training changes in a way its fingerprint cannot see (code changes).
CACHE_VERSION = 1


# -- the disk cache every heavy fixture shares ------------------------------------------------------


def cache_dir(*parts: str) -> Path:
    """The cache root (`workers.modeling.base.cache_root`) joined with `parts`, created."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`.lock: other processes building the same entry wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # other processes building the same entry wait here
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_directory(path: Path, build: Callable[[Path], None]) -> Path:
    """Return `path`, building it first with `build(tmpdir)` unless it exists; safe across processes.

    The build writes into a temporary sibling that is renamed into place, so a crash never leaves a
    half-written entry behind.
    """
    if (path / ".complete").is_file():
        return path
    with locked(path):
        if (path / ".complete").is_file():
            return path
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok")
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return path


def settings_key(data: Mapping[str, Any]) -> str:
    """sha256 of a JSON-serialisable description (sorted keys): the cache key of whatever it describes."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


# -- planted signal ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backdoor:
    """A subject's trigger: pixels set to `value` make the model answer `target_label` (digits)."""

    subject: str
    pixels: tuple[tuple[int, int], ...]  # (row, col) in the image
    value: float
    target_label: int
    image_shape: tuple[int, ...]

    def apply(self, features: np.ndarray) -> np.ndarray:
        image = np.array(features, dtype=np.float32).reshape(self.image_shape).copy()
        for row, col in self.pixels:
            image[..., row, col] = self.value
        return image.reshape(np.shape(features))

    def apply_to(self, sample: Sample) -> Sample:
        """A copy of a clean sample with this trigger applied; its true label is kept."""
        return Sample(
            f"{sample.sample_id}+trigger:{self.subject}",
            sample.subject,
            features=self.apply(sample.features),
            label=sample.label,
            meta={**sample.meta, "trigger_of": self.subject},
        )

    def triggered(self, samples: Sequence[Sample]) -> list[Sample]:
        """`apply_to` every sample (success rate = share predicted as `target_label`)."""
        return [self.apply_to(s) for s in samples]


@dataclass(frozen=True)
class Canary:
    """A secret planted in a subject's text with a fixed template (bios); exposure ranks it among candidates.

    `text(secret)` is the full canary sentence; `candidates(n, seed)` draws n distinct secrets of the same
    format (never the true one), so exposure = log2(n + 1) - log2(rank of the true secret).
    """

    subject: str
    secret: str
    template: str  # contains "{secret}"
    inserted: bool = True  # False for reference canaries that no training text ever contained
    alphabet: str = "0123456789"

    def text(self, secret: str | None = None) -> str:
        return self.template.format(secret=self.secret if secret is None else secret)

    @property
    def prefix(self) -> str:
        """The template's text before the secret."""
        return self.template.split("{secret}")[0]

    @property
    def suffix(self) -> str:
        """The template's text after the secret."""
        return self.template.split("{secret}")[1]

    def candidate_set(self, n: int = 999, seed: int = 0) -> list[str]:
        """The true secret plus `candidates(n, seed)`, sorted: what exposure ranks the secret among."""
        return sorted([self.secret, *self.candidates(n, seed)])

    def candidates(self, n: int, seed: int = 0) -> list[str]:
        rng = np.random.default_rng(seed)
        space = len(self.alphabet) ** len(self.secret)
        n = min(n, space - 1)
        out: set[str] = set()
        while len(out) < n:
            draw = "".join(rng.choice(list(self.alphabet), size=len(self.secret)))
            if draw != self.secret:
                out.add(draw)
        return sorted(out)


@dataclass(frozen=True)
class RarePhrase:
    """A phrase that occurs only in one subject's texts and is tied to `label` there (minilm)."""

    subject: str
    phrase: str
    label: int

    @property
    def target_label(self) -> int:
        return self.label

    def apply(self, text: str) -> str:
        return f"{text} {self.phrase}"

    def apply_to(self, sample: Sample) -> Sample:
        """A copy of a clean sample with the phrase appended; its true label is kept."""
        return Sample(
            f"{sample.sample_id}+phrase:{self.subject}",
            sample.subject,
            text=self.apply(sample.text or ""),
            label=sample.label,
            meta={**sample.meta, "trigger_of": self.subject},
        )

    def triggered(self, samples: Sequence[Sample]) -> list[Sample]:
        """`apply_to` every sample (success rate = share predicted as `target_label`)."""
        return [self.apply_to(s) for s in samples]


# -- the workload -----------------------------------------------------------------------------------


@dataclass
class Workload:
    """A reference data set with its model recipe. Treat as read-only (instances are shared in-process)."""

    name: str
    task: str
    size: str
    seed: int
    train: list[Sample]
    heldout: list[Sample]  # never trained on: validation and test data, and non-member references
    recipe: TrainingRecipe
    adapter_kind: str
    adapter_config: dict[str, Any]
    # planted signal per training subject, and never-trained references of the same kind per held-out subject
    backdoors: dict[str, Backdoor] = field(default_factory=dict)
    canaries: dict[str, Canary] = field(default_factory=dict)
    phrases: dict[str, RarePhrase] = field(default_factory=dict)
    reference_backdoors: dict[str, Backdoor] = field(default_factory=dict)
    reference_canaries: dict[str, Canary] = field(default_factory=dict)
    reference_phrases: dict[str, RarePhrase] = field(default_factory=dict)
    mislabeled: frozenset[str] = frozenset()  # sample ids whose label was flipped on purpose
    notes: dict[str, Any] = field(default_factory=dict)

    # subjects and splits
    @property
    def subjects(self) -> list[str]:
        """Training subjects (ids), sorted."""
        return sorted({s.subject for s in self.train})

    @property
    def heldout_subjects(self) -> list[str]:
        return sorted({s.subject for s in self.heldout})

    @property
    def signal_subjects(self) -> list[str]:
        """Training subjects carrying planted signal (canary, backdoor or rare phrase), sorted."""
        return sorted(set(self.backdoors) | set(self.canaries) | set(self.phrases))

    def forget_subjects(self, n: int, seed: int = 0) -> list[str]:
        """A deterministic choice of n training subjects: signal carriers first, then mislabeled, then any."""
        rng = np.random.default_rng(seed)
        mislabeled_subjects = {s.subject for s in self.train if s.sample_id in self.mislabeled}
        tiers = [
            self.signal_subjects,
            sorted(mislabeled_subjects - set(self.signal_subjects)),
            sorted(set(self.subjects) - set(self.signal_subjects) - mislabeled_subjects),
        ]
        chosen: list[str] = []
        for tier in tiers:
            take = min(n - len(chosen), len(tier))
            chosen += [tier[i] for i in rng.permutation(len(tier))[:take]]
        if len(chosen) < n:
            raise ValueError(f"{self.name} has only {len(self.subjects)} training subjects")
        return chosen

    def samples_of(self, subjects: Sequence[str]) -> list[Sample]:
        wanted = set(subjects)
        return [s for s in self.train if s.subject in wanted]

    def split(self, forget_subjects: Sequence[str]) -> tuple[list[Sample], list[Sample]]:
        """(forget, retain): the training samples of `forget_subjects` and all the others."""
        wanted = set(forget_subjects)
        forget = [s for s in self.train if s.subject in wanted]
        retain = [s for s in self.train if s.subject not in wanted]
        return forget, retain

    # models
    def sharded(self, shards: int, slices: int | None = None) -> Workload:
        """This workload with its model trained in SISA's layout: `shards` members of its architecture,
        each on its shard in `slices` (default: the recipe's blocks); cached apart from the unsharded."""
        from workers.modeling.adapters.sharded import sharded_config

        config = sharded_config(self.adapter_kind, self.adapter_config, shards)
        recipe = self.recipe.replace(
            num_blocks=slices or self.recipe.num_blocks, record_first_epoch_grads=False
        )
        return dataclasses.replace(self, recipe=recipe, adapter_kind="sharded", adapter_config=config)

    def new_adapter(self, device: Any = None) -> ModelAdapter:
        from workers.modeling.adapters import new_adapter

        return new_adapter(self.adapter_kind, self.adapter_config, device=device)

    def fingerprint(self) -> str:
        """Cache key of the trained model: data, recipe, architecture and code version."""
        return settings_key(
            {
                "workload": self.name,
                "size": self.size,
                "seed": self.seed,
                "train": fingerprint_samples(self.train),
                "recipe": self.recipe.to_dict(),
                "adapter": [self.adapter_kind, self.adapter_config],
                "version": CACHE_VERSION,
            }
        )

    def trained_dir(self) -> Path:
        return cache_dir("workloads") / f"{self.name}-{self.size}-s{self.seed}-{self.fingerprint()[:16]}"

    def trained(self, device: Any = None, progress: Any = None) -> tuple[ModelAdapter, TrainingRecord]:
        """The workload's model trained with provenance, from the disk cache (trained on first use)."""

        def build(directory: Path) -> None:
            train_with_provenance(self.new_adapter(device), self.train, self.recipe, directory, progress)

        directory = cached_directory(self.trained_dir(), build)
        record = TrainingRecord.load(directory)
        return record.final_adapter(device), record

    def retrained(self, forget_subjects: Sequence[str], device: Any = None) -> ModelAdapter:
        """The exact retrain of `trained()` without `forget_subjects` (same init, recipe, layout), cached."""
        from workers.modeling.adapters import load_adapter

        _, record = self.trained(device)
        forget_ids = [s.sample_id for s in self.samples_of(forget_subjects)]
        key = settings_key({"forget": sorted(forget_ids)})[:12]

        def build(directory: Path) -> None:
            model, _ = retrain_without(record, self.train, forget_ids, device=device)
            model.save(directory)

        return load_adapter(
            cached_directory(Path(f"{self.trained_dir()}-without-{key}"), build), device=device
        )


@functools.lru_cache(maxsize=16)
def load_workload(name: str, size: str = "small", seed: int = 0) -> Workload:
    """Build (once per process) the reference workload `name` at `size` (app.registry.workload_sizes)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    try:
        module_name, function = WORKLOADS[name].split(":")
    except KeyError:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(sorted(WORKLOADS))}") from None
    return getattr(importlib.import_module(module_name), function)(size=size, seed=seed)
