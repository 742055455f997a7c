"""The gate's reference models: trained once per LINEAGE, split by subject, cached, reused by later versions.

Two kinds, both trained with the served version's recipe and architecture and seeds of their own:
- subject-half references: K models, each trained on a random half of the SUBJECTS (all of a subject's
  samples IN or OUT together), balanced so that every subject is OUT of exactly K/2 of them. A reference
  that never saw a subject is an exact retrain without that subject, up to the half of the data it saw:
  the OUT references of a subject show where exact retrains land on its samples (workers.verification.
  retrain_null). Deletion is per subject, and a model that trained on a subject's other records (its
  planted trigger, its biography) is no model "without" that subject's sample, so the split is by subject.
- seed replicas: R models trained on ALL the training data, each with its own seed. With the served version
  they show how much a full-data model's utility and retain exposure move with nothing but training
  randomness: the tolerance of the utility rules (an exact retrain differs from the served version by that
  and by the few subjects it lacks).

Cost and reuse. K half-data references and R replicas cost K/2 + R trainings of the served version. Paid per
version, that is more than retraining, so a set is built once per lineage (a model and the versions that
deletions derive from it) and reused for later versions under this REFRESH RULE: a set built on training
set T0 serves a version trained on T when T's subjects are all among T0's (each has a known IN/OUT split)
and the subjects deleted since the build are at most `Policy.reference_refresh_share` of T0's subjects;
otherwise a new generation is built on T. Why reuse does not move a verdict: judging subject s needs
models that never saw s; s's OUT references are such models whether or not they also saw subjects that
were deleted since, and those subjects are a small share of their data (the refresh rule bounds it).
tests/verification/test_references.py checks the verdict against a fresh set built on the later version.
The references do hold the deleted subjects' data (those IN for them) until the next generation: they are
verification artifacts, never served, and stored under the lineage's verification cache.

Independence. The gate judges with models whose seeds are disjoint from anything a method may aim with:
each PURPOSE ("gate", and "targeting" for references a method may use) has its own seed range and its own
directory, so a targeting set can exist beside the gate's without sharing a model or a seed. Candidate
seeds in a reserved range are refused (`check_candidate_seed`).

Layout: <cache_dir>/references/<lineage>/<purpose>-g<generation>/{manifest.json, signals.npz, ref_<j>/,
replica_<r>/}. Only per-sample losses (and, for classifiers, whether the prediction is right) are needed
afterwards; they are cached beside the weights, so a later deletion costs no training and, for samples
seen before, no forward pass.
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

# Part of every manifest: bump when the way references are chosen or trained changes.
REFERENCE_SCHEME = "subject-halves-v3"
SIGNALS_FILE = "signals.npz"
GATE, TARGETING = "gate", "targeting"
# Seeds of a purpose: base + generation * GENERATION_STRIDE + j (references) or + REPLICA_OFFSET + r.
SEED_BASE = {GATE: 1_000_000, TARGETING: 2_000_000}
SEED_SPAN = 1_000_000
GENERATION_STRIDE = 10_000
REPLICA_OFFSET = 5_000


def reference_seed(purpose: str, generation: int, j: int) -> int:
    return SEED_BASE[purpose] + generation * GENERATION_STRIDE + j


def replica_seed(purpose: str, generation: int, r: int) -> int:
    return SEED_BASE[purpose] + generation * GENERATION_STRIDE + REPLICA_OFFSET + r


def check_candidate_seed(seed: int) -> None:
    """Refuse a candidate seed that some purpose's references may use: the candidate must be independent
    of every model the gate judges it with."""
    for purpose, base in SEED_BASE.items():
        if base <= seed < base + SEED_SPAN:
            raise ValueError(
                f"seed {seed} is reserved for the {purpose} references ({base}..{base + SEED_SPAN - 1}): "
                "a candidate trained with it would not be independent of them"
            )


def balanced_membership(subjects: Sequence[str], k: int, seed: int) -> np.ndarray:
    """[k, n] bool over samples: each subject IN for exactly k // 2 references, and each reference holds
    half the subjects (references 2p and 2p + 1 split a random permutation of them into complements).

    Both margins are fixed because a reference's quality depends on how much it saw: drawn per subject
    only, the 16 references of minilm (small, 60 subjects) held 17 to 41 subjects, and the OUT
    references of a subject mixed models of very different accuracy (a wider exact-retrain null).
    """
    names = sorted(set(subjects))
    rng = np.random.default_rng(seed)
    by_subject = np.zeros((k, len(names)), bool)  # [k, n_subjects]
    for pair in range(k // 2):
        chosen = rng.permutation(len(names))[: len(names) // 2 + int(rng.integers(len(names) % 2 + 1))]
        by_subject[2 * pair, chosen] = True
        by_subject[2 * pair + 1] = ~by_subject[2 * pair]
    column = {name: i for i, name in enumerate(names)}
    return by_subject[:, [column[s] for s in subjects]]


@dataclass(frozen=True)
class ReferencePlan:
    """How many models a set holds and why: what the policy asked for and what its cost limit allowed."""

    k: int  # subject-half references
    replicas: int  # full-data seed replicas
    asked_k: int
    asked_replicas: int
    cost_trainings: float  # K/2 + R, in trainings of the served version
    limit_trainings: float  # 0: no limit

    @property
    def limited(self) -> bool:
        return (self.k, self.replicas) != (self.asked_k, self.asked_replicas)

    def note(self) -> str | None:
        """The report's sentence when the cost limit made the set smaller than the policy asks."""
        if not self.limited:
            return None
        return (
            f"references limited by the policy's cost limit ({self.limit_trainings:g} trainings of the "
            f"served model): {self.k} subject-half references (each subject OUT of {self.k // 2}, asked "
            f"{self.asked_k // 2}) and {self.replicas} seed replicas (asked {self.asked_replicas}); the "
            "rules that need them run on fewer models (wider bounds) or are not checked"
        )


def plan_references(k: int, replicas: int, limit_trainings: float) -> ReferencePlan:
    """Fit the asked K and R under the cost limit: replicas go first (down to 2), then references (down to
    4, the fewest that give each subject a spread), then replicas to 0 and references to 2."""
    asked = (k, replicas)

    def cost(kk: int, rr: int) -> float:
        return kk / 2 + rr

    if limit_trainings > 0:
        while cost(k, replicas) > limit_trainings and replicas > 2:
            replicas -= 1
        while cost(k, replicas) > limit_trainings and k > 4:
            k -= 2
        while cost(k, replicas) > limit_trainings and replicas > 0:
            replicas -= 1
        while cost(k, replicas) > limit_trainings and k > 2:
            k -= 2
    return ReferencePlan(k, replicas, asked[0], asked[1], cost(k, replicas), limit_trainings)


@dataclass
class ReferenceSet:
    """One generation of a lineage's references, with the per-sample losses computed so far."""

    directory: Path
    purpose: str
    generation: int
    subjects: list[str]  # the training subjects at build time, sorted
    subject_in: np.ndarray  # [K, n_subjects] bool
    training_seconds: list[float]
    replica_seconds: list[float]
    trained_now: bool  # False when every model came from the cache
    reused: bool  # built for an earlier version of the lineage
    deleted_share: float  # subjects deleted since the build, as a share of the build's subjects
    adapter_type: type[ModelAdapter]
    plan: ReferencePlan | None = None
    _signals: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # id -> name -> [K + R]

    @property
    def k(self) -> int:
        return int(self.subject_in.shape[0])

    @property
    def replicas(self) -> int:
        return len(self.replica_seconds)

    @property
    def cost_seconds(self) -> float:
        return float(sum(self.training_seconds) + sum(self.replica_seconds))

    def membership(self, samples: Sequence[Sample]) -> np.ndarray:
        """[K, n] bool IN-mask of `samples`: a sample is IN where its subject is (held-out subjects and
        subjects unknown at build time are OUT everywhere)."""
        column = {s: i for i, s in enumerate(self.subjects)}
        out = np.zeros((self.k, len(samples)), bool)
        for i, s in enumerate(samples):
            if s.subject in column:
                out[:, i] = self.subject_in[:, column[s.subject]]
        return out

    def losses(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        """[K, n] per-sample loss of every subject-half reference (computed once per sample id)."""
        return self._signal("loss", samples, batch_size)[: self.k]

    def replica_losses(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        """[R, n] per-sample loss of every seed replica."""
        return self._signal("loss", samples, batch_size)[self.k :]

    def correct(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        """[K + R, n] 1 where the model predicts the sample's label (classifiers; NaN for language models)."""
        return self._signal("correct", samples, batch_size)

    def models(self) -> list[tuple[str, Path]]:
        """(name, directory) of every model of the set: references first, then replicas."""
        names = [f"ref_{j}" for j in range(self.k)] + [f"replica_{r}" for r in range(self.replicas)]
        return [(name, self.directory / name) for name in names]

    def _signal(self, name: str, samples: Sequence[Sample], batch_size: int) -> np.ndarray:
        missing = list({s.sample_id: s for s in samples if s.sample_id not in self._signals}.values())
        if missing:
            self._compute(missing, batch_size)
        if not samples:
            return np.zeros((self.k + self.replicas, 0))
        return np.stack([self._signals[s.sample_id][name] for s in samples], axis=1)

    def _compute(self, samples: Sequence[Sample], batch_size: int) -> None:
        from workers.verification.signals import loss_and_correct

        columns = []
        for _, directory in self.models():
            model = self.adapter_type.load(directory)
            columns.append(loss_and_correct(model, samples, batch_size))
            del model
        for i, s in enumerate(samples):
            self._signals[s.sample_id] = {
                name: np.array([c[name][i] for c in columns]) for name in ("loss", "correct")
            }
        self._save_signals()

    def _save_signals(self) -> None:
        ids = list(self._signals)
        tmp = self.directory / "signals.tmp.npz"
        arrays = {name: np.stack([self._signals[i][name] for i in ids]) for name in ("loss", "correct")}
        np.savez(tmp, ids=np.array(ids), **arrays)
        os.replace(tmp, self.directory / SIGNALS_FILE)

    def _load_signals(self) -> None:
        path = self.directory / SIGNALS_FILE
        if path.exists():
            data = np.load(path)
            if data["loss"].shape[1] == self.k + self.replicas:
                self._signals = {
                    str(i): {"loss": loss, "correct": correct}
                    for i, loss, correct in zip(data["ids"], data["loss"], data["correct"], strict=True)
                }

    def describe(self) -> dict[str, Any]:
        """What the report says about the set: size, split, reuse and cost."""
        return {
            "purpose": self.purpose,
            "generation": self.generation,
            "subject_half_references": self.k,
            "out_per_subject": self.k // 2,
            "seed_replicas": self.replicas,
            "reused_from_earlier_version": self.reused,
            "deleted_share_since_build": round(self.deleted_share, 4),
            "trained_now": self.trained_now,
            "cost_seconds_when_built": round(self.cost_seconds, 3),
            "reference_seconds": [round(s, 3) for s in self.training_seconds],
            "replica_seconds": [round(s, 3) for s in self.replica_seconds],
            **({"cost_limit": self.plan.note()} if self.plan is not None and self.plan.limited else {}),
        }


def ensure_references(
    cache_dir: Path,
    lineage: str,
    served: ModelAdapter,
    training: Sequence[Sample],
    trainer: ReferenceTrainer,
    plan: ReferencePlan,
    refresh_share: float = 0.1,
    purpose: str = GATE,
    progress: ProgressCallback = no_progress,
) -> ReferenceSet:
    """The lineage's reference set for a served version trained on `training`: the newest generation the
    refresh rule lets this version reuse, or a new generation built on `training`.

    Each model is saved as soon as it is trained, so an interrupted build resumes where it stopped; a
    process building the lineage's set holds its lock, so two never train the same models.
    """
    from workers.workloads import locked

    if plan.k < 2 or plan.k % 2:
        raise ValueError(f"subject-half references need an even number >= 2, got {plan.k}")
    if purpose not in SEED_BASE:
        raise ValueError(f"unknown reference purpose {purpose!r}; known: {', '.join(SEED_BASE)}")
    root = Path(cache_dir) / "references" / _safe(lineage)
    with locked(root / purpose):
        return _ensure(root, served, training, trainer, plan, refresh_share, purpose, progress)


def _ensure(
    root: Path,
    served: ModelAdapter,
    training: Sequence[Sample],
    trainer: ReferenceTrainer,
    plan: ReferencePlan,
    refresh_share: float,
    purpose: str,
    progress: ProgressCallback,
) -> ReferenceSet:
    subjects = sorted({s.subject for s in training})
    generation, manifest, deleted_share = _reusable_generation(root, purpose, subjects, plan, refresh_share)
    reused = manifest is not None and manifest.get("complete", False) and manifest["subjects"] != subjects
    directory = root / f"{purpose}-g{generation}"
    directory.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        manifest = {
            "scheme": REFERENCE_SCHEME,
            "purpose": purpose,
            "generation": generation,
            "k": plan.k,
            "replicas": plan.replicas,
            "subjects": subjects,
            "membership_seed": reference_seed(purpose, generation, 0),
            "reference_seconds": {},
            "replica_seconds": {},
            "complete": False,
        }
    build_subjects = manifest["subjects"]
    subject_in = balanced_membership(build_subjects, plan.k, manifest["membership_seed"])
    build_samples = [s for s in training if s.subject in set(build_subjects)]
    trained_now = False
    jobs = [("ref", j) for j in range(plan.k)] + [("replica", r) for r in range(plan.replicas)]
    for done, (kind, index) in enumerate(jobs):
        seconds = manifest[f"{'reference' if kind == 'ref' else 'replica'}_seconds"]
        target = directory / f"{kind}_{index}"
        if str(index) in seconds and target.exists():
            continue
        progress(done / len(jobs), f"training {purpose} {kind} {index + 1} ({done + 1}/{len(jobs)})")
        if kind == "ref":
            keep = set(np.asarray(build_subjects)[subject_in[index]])
            members = [s for s in build_samples if s.subject in keep]
            seed = reference_seed(purpose, generation, index)
        else:
            members, seed = build_samples, replica_seed(purpose, generation, index)
        started = time.perf_counter()
        model = trainer(members, seed)
        seconds[str(index)] = time.perf_counter() - started
        _save_atomically(model, target)
        trained_now = True
        _write_manifest(directory, manifest)
        del model
    if not manifest["complete"]:
        manifest["complete"] = True
        _write_manifest(directory, manifest)
    refs = ReferenceSet(
        directory=directory,
        purpose=purpose,
        generation=generation,
        subjects=build_subjects,
        subject_in=subject_in,
        training_seconds=[manifest["reference_seconds"][str(j)] for j in range(plan.k)],
        replica_seconds=[manifest["replica_seconds"][str(r)] for r in range(plan.replicas)],
        trained_now=trained_now,
        reused=bool(reused),
        deleted_share=deleted_share,
        adapter_type=type(served),
        plan=plan,
    )
    refs._load_signals()
    progress(1.0, "references ready")
    return refs


def _reusable_generation(
    root: Path, purpose: str, subjects: list[str], plan: ReferencePlan, refresh_share: float
) -> tuple[int, dict[str, Any] | None, float]:
    """(generation, its manifest or None for a new one, deleted share): the newest generation of this
    purpose and size whose build subjects cover `subjects` with at most `refresh_share` of them deleted."""
    generations, numbers = [], [-1]
    for path in root.glob(f"{purpose}-g*/manifest.json"):
        manifest = json.loads(path.read_text())
        numbers.append(int(manifest["generation"]))
        if manifest.get("scheme") == REFERENCE_SCHEME:
            generations.append(manifest)
    generations.sort(key=lambda m: m["generation"])
    current = set(subjects)
    for manifest in reversed(generations):
        if (manifest["k"], manifest["replicas"]) != (plan.k, plan.replicas):
            continue
        if not manifest.get("complete") and manifest["subjects"] != subjects:
            continue  # an interrupted build resumes only on the data it started with
        built = set(manifest["subjects"])
        deleted = len(built - current) / max(1, len(built))
        if current <= built and deleted <= refresh_share:
            return manifest["generation"], manifest, deleted
    # numbered past every generation, of any scheme: a directory of another scheme holds other models
    return 1 + max(numbers), None, 0.0


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    tmp = directory / "manifest.tmp.json"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, directory / "manifest.json")


def _safe(name: str) -> str:
    """A directory name for a lineage key (hashed when it is not a plain token)."""
    if name and all(c.isalnum() or c in "-_." for c in name) and len(name) <= 80:
        return name
    return hashlib.sha256(name.encode()).hexdigest()[:24]


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
    models are.

    A model trained on a share of the served version's subjects gets that share of its blocks
    (`reference_blocks`): blocks of the served version's size, so each block holds the same number of
    subjects and, as far as they allow, every label, and gets the same steps per epoch. With the served
    block count, half the subjects make blocks half as large; on minilm (small: 10 blocks, 60 subjects)
    that is 3 subjects per block, fewer than its 4 labels, and the classifier drifts to the last block's
    labels. Measured there, held-out accuracy of half-data models, 4 seeds: 0.33-0.74 with 10 blocks,
    0.71-0.84 with 5; of the 16 gate references: 0.38-0.92 before (10 blocks, halves drawn per subject),
    0.71-0.98 with scaled blocks and complementary halves; the full-data replicas 0.90-0.96. Full-data
    replicas keep the served block count.
    """
    served_subjects = len({s for block in record.block_subjects for s in block})

    def train(samples: Sequence[Sample], seed: int) -> ModelAdapter:
        num_blocks = reference_blocks(record.recipe.num_blocks, served_subjects, samples)
        adapter = record.train_like(samples, seed=seed, recipe=record.recipe.replace(num_blocks=num_blocks))
        adapter.model.eval()
        return adapter

    return train


def reference_blocks(served_blocks: int, served_subjects: int, samples: Sequence[Sample]) -> int:
    """Blocks for a model trained on `samples`: the served version's block count scaled by the share of its
    subjects they hold (at least 1, at most the served count)."""
    share = len({s.subject for s in samples}) / max(1, served_subjects)
    return max(1, min(served_blocks, round(served_blocks * share)))


def record_fingerprint(record: Any) -> str:
    """Names a version's training: data, recipe and architecture (keys the served version's own cache)."""
    described = {
        "data": record.fingerprint,
        "recipe": record.recipe.to_dict(),
        "adapter": [record.adapter_kind, record.adapter_config],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def lineage_key(record: Any) -> str:
    """Names a lineage: the recipe and architecture of its versions (not their data, which deletions
    shrink); the refresh rule decides whether a version's data is close enough to a set's build."""
    described = {"recipe": record.recipe.to_dict(), "adapter": [record.adapter_kind, record.adapter_config]}
    return (
        "lineage-"
        + hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:20]
    )
