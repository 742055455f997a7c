"""Per-sample forgetting targets: where each forget sample's loss would sit had its subject never trained.

A method that raises the forget set's loss needs to know how far. One level for the whole set (the mean
loss of clean validation data) is wrong both ways: a subject carrying planted signal (a backdoor trigger, a
rare phrase) already sits above it, so the method exits at step 0, while on a language model the clean
level can lie above where a retrain lands, so the method over-unlearns. The target here is per sample:

    t_i = r * mean loss of sample i under the targeting references that never saw its subject,

TARGETING REFERENCES: K models (default 4) of the served version's architecture and recipe
(`TrainingRecord.train_like`), each trained on a random half of the SUBJECTS (all of a subject's samples in
or out together), balanced so that every subject is out of exactly K / 2 of them. A reference without the
subject is a retrain without it, up to having seen half of the other subjects.

r corrects for that half on language models: a half-data model is weaker on every text, so its token loss
on unseen text is above a full-data retrain's. r = (served model's mean loss on validation data) / (the
references' mean loss there), both on the same capped validation subsample (unseen by every model, so the
ratio measures only the data-size gap), clipped to [0.25, 1]. Measured on bios (small, K = 4, a canary
subject): r = 0.91, targets 3.64 against the exact retrain's 3.66 (raw out-mean 4.00).
Classifiers take r = 1: the direction of the half-data bias depends on whether the sample's label is the
one an unseen model predicts. On a planted label (a trigger's target, a rare phrase's label, a flipped
label) a weaker model is less confidently wrong, so its loss is BELOW a full retrain's, while the ratio of
validation losses (clean labels) says the opposite (measured r = 0.52 on digits, 0.25 on minilm, which put
targets at 0.44x and 0.20x of the retrain). Uncorrected, the out-mean measured 5.66 against the retrain's
6.70 on digits and 1.08 against 1.35 on minilm: on the conservative side.

INDEPENDENCE FROM THE GATE. The gate judges candidates with reference models of its own; a method must not
aim with those (it could then fit the judge's models instead of forgetting). Targeting references are
seeded from `TARGETING_SEED_BASE` = 2,000,000 (seed of reference j of generation g: 2,000,000 + 10,000 g +
j, used as both the init seed and the data-order seed), the range the gate reserves for targeting; the
gate's own references draw from 1,000,000..1,999,999, so no model and no seed is shared. Their subject
halves are drawn with the same disjoint seed, and they live in their own directory.

COST AND REUSE. K half-data references cost K / 2 trainings, paid once per lineage: a set built on training
subjects S0 serves every later version whose training subjects are all in S0 (its forget subjects then have
known out-references). Per-sample losses are cached beside the weights, so a later deletion costs K forward
passes over the forget set only for samples not seen before.

FALLBACK (no training record: a model trained elsewhere, with no recipe to train references with). Then
t_i = the `fallback_quantile` (default: the median) of the served model's losses on validation samples of
the sample's class (classifiers; all validation samples for language models, or when a class has fewer
than 5 validation samples). The median rather than the mean: a classifier's held-out losses are heavy
tailed, and the mean is set by its few confident mistakes. This is weaker than references (a memorised
sample's own difficulty is unknown) and the result says `source: "validation quantile"`; it never makes a
method exit without a step unless the forget set already sits at these targets.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.modeling.base import ModelAdapter, Sample, cache_root
from workers.unlearning.base import ProgressCallback, UnlearningContext, no_progress
from workers.unlearning.common import changed_parameters, is_text_model, relearned_copy, subsample

TARGETING_SEED_BASE = 2_000_000  # the gate's references use 1_000_000..1_999_999
GENERATION_STRIDE = 10_000
SCHEME = "targeting-subject-halves-v1"  # bump when the way references are chosen or trained changes
CALIBRATION_CAP = 256  # validation samples the served/reference loss ratio is measured on
MIN_CLASS_SAMPLES = 5  # fewer validation samples of a class: the fallback uses all validation samples
RATIO_BOUNDS = (0.25, 1.0)


def targeting_seed(generation: int, j: int) -> int:
    return TARGETING_SEED_BASE + generation * GENERATION_STRIDE + j


def balanced_halves(subjects: Sequence[str], k: int, seed: int) -> np.ndarray:
    """[k, n_subjects] bool: subject i is IN reference j; each subject is IN exactly k // 2 of them."""
    rng = np.random.default_rng(seed)
    return (np.argsort(rng.random((len(subjects), k)), axis=1) < k // 2).T


@dataclass
class ForgetTargets:
    """Per forget sample its target loss, and the criteria every targeted method stops by.

    attained = mean_i min(loss_i, t_i) / mean_i t_i: the share of the way to the targets covered, where a
    sample past its target counts only up to it (so one sample blown far past cannot hide others still
    memorised). overshoot = mean_i loss_i / mean_i t_i: above 1 + tolerance the forget set is over-exposed.
    """

    values: dict[str, float]
    source: str  # "references" or "validation quantile"
    details: dict[str, Any] = field(default_factory=dict)

    def of(self, samples: Sequence[Sample]) -> np.ndarray:
        return np.array([self.values[s.sample_id] for s in samples], dtype=np.float64)

    def tensor(self, samples: Sequence[Sample], like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.of(samples), dtype=like.dtype, device=like.device)

    def hinge(self, samples: Sequence[Sample], losses: torch.Tensor) -> torch.Tensor:
        """mean_i ReLU(t_i - loss_i): zero once every sample has reached its own target."""
        return torch.relu(self.tensor(samples, losses) - losses).mean()

    def attained(self, samples: Sequence[Sample], losses: np.ndarray) -> float:
        targets = self.of(samples)
        return float(np.minimum(losses, targets).mean() / max(targets.mean(), 1e-12))

    def overshoot(self, samples: Sequence[Sample], losses: np.ndarray) -> float:
        return float(np.mean(losses) / max(self.of(samples).mean(), 1e-12))

    def mean(self, samples: Sequence[Sample]) -> float:
        return float(self.of(samples).mean())


def relearning_lr(model: ModelAdapter) -> float:
    """The relearning probe's rate: an ordinary fine-tuning rate (1e-4 text models, 1e-3 others)."""
    return 1e-4 if is_text_model(model) else 1e-3


def relearning_check(
    model: ModelAdapter,
    served_state: dict[str, torch.Tensor],
    retain: Sequence[Sample],
    forget: Sequence[Sample],
    targets: ForgetTargets,
    steps: int,
    batch_size: int,
    seed: int,
) -> tuple[dict[str, float], ModelAdapter]:
    """(numbers, relearned copy): `steps` of retain-only fine-tuning over every parameter the method
    changed (against `served_state`), and the attained share before and after. Forgetting that this
    undoes was hidden, not removed; relearning on the forget data instead would undo any unlearning,
    exact retraining included. Measured (small, one signal subject, 20 steps), an exact retrain keeps
    0.96 -> 0.98 on digits and 0.98 -> 0.93 on bios."""
    changed = changed_parameters(served_state, model)
    probe = relearned_copy(model, retain, changed, steps, relearning_lr(model), batch_size, seed)
    check = {
        "attained_before": targets.attained(forget, model.per_sample_loss(forget)),
        "attained_after": targets.attained(forget, probe.per_sample_loss(forget)),
        "steps": steps,
        "parameters": len(changed),
    }
    return check, probe


@dataclass
class TargetingSource:
    """What targeting references are trained from: a training record of the lineage (its recipe and
    architecture; the served version's own, or an ancestor's) and the directory that caches them."""

    record: Any  # workers.modeling.training.TrainingRecord
    directory: Path


def source_of(context: UnlearningContext) -> TargetingSource | None:
    """The context's targeting source: given by the pipeline, else from the served version's record under
    the cache root; None when there is no record (the fallback)."""
    if context.targeting is not None:
        return context.targeting
    if context.training is None:
        return None
    return TargetingSource(context.training, cache_root() / "targeting")


def forget_targets(
    model: ModelAdapter,
    forget: Sequence[Sample],
    retain: Sequence[Sample],
    validation: Sequence[Sample],
    context: UnlearningContext,
    references: int = 4,
    fallback_quantile: float = 0.5,
) -> ForgetTargets:
    """Each forget sample's target loss (module docstring): from targeting references when a training
    record exists, otherwise the validation-quantile fallback."""
    source = source_of(context)
    if source is None or references < 2:
        return validation_quantile_targets(model, forget, validation, fallback_quantile, context.seed)
    refs = ensure_targeting_references(source, model, [*forget, *retain], references, context.progress)
    losses = refs.losses(forget)  # [K, n]
    out = ~refs.membership(forget)
    if not out.any(axis=0).all():
        missing = [s.sample_id for s, o in zip(forget, out.T, strict=True) if not o.any()]
        raise ValueError(f"targeting references hold no model without the subject of {missing[:3]}")
    raw = (losses * out).sum(0) / out.sum(0)
    calibration = subsample(validation, CALIBRATION_CAP, context.seed)
    ratio = 1.0
    if calibration and model.task == "causal-lm":
        served_level = float(model.per_sample_loss(calibration).mean())
        reference_level = float(refs.losses(calibration).mean())
        ratio = float(np.clip(served_level / max(reference_level, 1e-12), *RATIO_BOUNDS))
    values = {s.sample_id: float(ratio * t) for s, t in zip(forget, raw, strict=True)}
    details = {
        "references": refs.k,
        "generation": refs.generation,
        "trained_now": refs.trained_now,
        "training_seconds": round(refs.training_seconds, 3),
        "half_data_ratio": ratio,
        "raw_mean": float(raw.mean()),
    }
    return ForgetTargets(values, "references", details)


def validation_quantile_targets(
    model: ModelAdapter, forget: Sequence[Sample], validation: Sequence[Sample], quantile: float, seed: int
) -> ForgetTargets:
    """The fallback without references: per class (classifiers) the quantile of the served model's
    validation losses."""
    pool = subsample(validation, 4 * CALIBRATION_CAP, seed)
    if not pool:
        raise ValueError("no targeting references and no validation data: a forgetting target is unknown")
    losses = model.per_sample_loss(pool)
    overall = float(np.quantile(losses, quantile))
    by_class: dict[Any, float] = {}
    labels = np.array([s.label if s.label is not None else -1 for s in pool])
    for label in set(labels.tolist()):
        chosen = losses[labels == label]
        if label != -1 and len(chosen) >= MIN_CLASS_SAMPLES:
            by_class[label] = float(np.quantile(chosen, quantile))
    values = {s.sample_id: by_class.get(s.label, overall) for s in forget}
    details = {"quantile": quantile, "overall": overall, "classes": len(by_class)}
    return ForgetTargets(values, "validation quantile", details)


@dataclass
class TargetingReferences:
    """One generation of a lineage's targeting references, with the per-sample losses computed so far."""

    directory: Path
    generation: int
    subjects: list[str]
    subject_in: np.ndarray  # [K, n_subjects]
    adapter_type: type[ModelAdapter]
    trained_now: bool
    training_seconds: float
    _losses: dict[str, list[float]] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.subject_in.shape[0])

    def membership(self, samples: Sequence[Sample]) -> np.ndarray:
        """[K, n] bool: the sample's subject trained reference j (unknown subjects: out everywhere)."""
        column = {s: i for i, s in enumerate(self.subjects)}
        out = np.zeros((self.k, len(samples)), bool)
        for i, s in enumerate(samples):
            if s.subject in column:
                out[:, i] = self.subject_in[:, column[s.subject]]
        return out

    def losses(self, samples: Sequence[Sample]) -> np.ndarray:
        """[K, n] per-sample loss under every reference (each sample id computed once, then cached)."""
        missing = list({s.sample_id: s for s in samples if s.sample_id not in self._losses}.values())
        if missing:
            columns = []
            for j in range(self.k):
                model = self.adapter_type.load(self.directory / f"ref_{j}")
                columns.append(model.per_sample_loss(missing))
                del model
            for i, s in enumerate(missing):
                self._losses[s.sample_id] = [float(c[i]) for c in columns]
            tmp = self.directory / "losses.tmp.json"
            tmp.write_text(json.dumps(self._losses))
            os.replace(tmp, self.directory / "losses.json")
        return np.array([self._losses[s.sample_id] for s in samples], dtype=np.float64).T.reshape(
            self.k, len(samples)
        )


def lineage_key(record: Any) -> str:
    """A lineage is named by its recipe and architecture (not its data, which deletions shrink)."""
    from workers.workloads import settings_key

    described = {"recipe": record.recipe.to_dict(), "adapter": [record.adapter_kind, record.adapter_config]}
    return "lineage-" + settings_key(described)[:20]


def ensure_targeting_references(
    source: TargetingSource,
    served: ModelAdapter,
    training: Sequence[Sample],
    k: int,
    progress: ProgressCallback = no_progress,
) -> TargetingReferences:
    """The newest generation whose build subjects cover `training`'s, or a new one built on `training`."""
    from workers.workloads import cached_directory

    if k < 2 or k % 2:
        raise ValueError(f"targeting references come in an even number >= 2, got {k}")
    root = Path(source.directory) / lineage_key(source.record)
    root.mkdir(parents=True, exist_ok=True)
    subjects = sorted({s.subject for s in training})
    generation, manifest = _reusable(root, subjects, k)
    directory = root / f"g{generation}"
    directory.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        manifest = {"scheme": SCHEME, "k": k, "subjects": subjects, "seconds": {}}
    build_subjects = manifest["subjects"]
    subject_in = balanced_halves(build_subjects, k, targeting_seed(generation, 0))
    build = [s for s in training if s.subject in set(build_subjects)]
    trained_now = False
    for j in range(k):
        target = directory / f"ref_{j}"
        if (target / ".complete").is_file():
            continue
        progress(0.05 * j / k, f"training targeting reference {j + 1}/{k}")
        keep = set(np.asarray(build_subjects)[subject_in[j]])
        members = [s for s in build if s.subject in keep]

        cached_directory(target, _trainer(source.record, members, targeting_seed(generation, j)))
        manifest["seconds"][str(j)] = float((target / "seconds").read_text())
        trained_now = True
        _write_json(directory / "manifest.json", manifest)
    if not (directory / "manifest.json").is_file():
        _write_json(directory / "manifest.json", manifest)
    refs = TargetingReferences(
        directory=directory,
        generation=generation,
        subjects=build_subjects,
        subject_in=subject_in,
        adapter_type=type(served),
        trained_now=trained_now,
        training_seconds=float(sum(manifest["seconds"].values())),
    )
    losses_file = directory / "losses.json"
    if losses_file.is_file():
        refs._losses = json.loads(losses_file.read_text())
    return refs


def _trainer(record: Any, members: list[Sample], seed: int) -> Callable[[Path], None]:
    """Trains one reference into a directory, with its training time beside the weights."""

    def train(directory: Path) -> None:
        started = time.perf_counter()
        record.train_like(members, seed=seed).save(directory)
        (directory / "seconds").write_text(str(time.perf_counter() - started))

    return train


def _reusable(root: Path, subjects: list[str], k: int) -> tuple[int, dict[str, Any] | None]:
    manifests = []
    for path in root.glob("g*/manifest.json"):
        manifest = json.loads(path.read_text())
        manifest["generation"] = int(path.parent.name[1:])
        if manifest.get("scheme") == SCHEME and manifest.get("k") == k:
            manifests.append(manifest)
    for manifest in sorted(manifests, key=lambda m: -m["generation"]):
        if set(subjects) <= set(manifest["subjects"]):
            return manifest["generation"], manifest
    taken = [int(p.name[1:]) for p in root.glob("g*") if p.name[1:].isdigit()]
    return 1 + max(taken, default=-1), None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
