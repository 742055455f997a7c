"""`verify(...)`: run every check on a candidate, apply the gate, write report.json and the plots.

The report is what the service stores with the job and serves (GET /v1/jobs/{id}/report and
/report/{plot}.png): every metric with its sample count and 95 % interval, the policy's thresholds, the
verdict with the rules that decided it, what was not checked, and timings, with the one-off training of the
LiRA reference models reported apart from the verification proper.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workers.modeling.base import ModelAdapter, Sample
from workers.unlearning.base import ProgressCallback, UnlearningResult, no_progress
from workers.unlearning.common import is_language_model
from workers.verification import plots
from workers.verification.backdoor import check_backdoor
from workers.verification.checks import CheckResult, EvalSets, SplitSignals, split_signals, stable_subsample
from workers.verification.gate import Policy, Verdict, gate
from workers.verification.memorization import check_canaries, check_memorization
from workers.verification.mia import LiraReader, check_mia, lira_reader
from workers.verification.probes import Probes
from workers.verification.references import (
    ReferenceSet,
    ReferenceTrainer,
    ensure_references,
    lineage_key,
    plan_references,
    record_fingerprint,
    trainer_from_record,
)
from workers.verification.relearning import differing_parameter_names, relearn
from workers.verification.residual import check_residual
from workers.verification.served_cache import CACHE_VERSION, ServedCache
from workers.verification.signals import model_signals
from workers.verification.utility import check_utility

REPORT_FILE = "report.json"
ALWAYS_UNCHECKED = (
    "such checks are necessary, not sufficient: a model can pass every attack here and still carry "
    "information about the forget set that a stronger or adaptive attack would find",
    "the exact-retrain nulls come from references that saw half the data; a full-data retrain lands a little "
    "lower on atypical samples (workers.verification.retrain_null), so the remembering side is conservative",
)


@dataclass
class Report:
    method: str
    exact: bool
    verdict: Verdict
    results: dict[str, CheckResult]
    policy: Policy
    counts: dict[str, int]
    timings: dict[str, Any]
    not_checked: list[str]
    references: dict[str, Any] | None = None
    plots: list[str] = field(default_factory=list)
    figures: list[plots.Figure] = field(default_factory=list)  # with titles and captions; skipped ones too
    directory: Path | None = None

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    def metric(self, name: str) -> Any:
        """An estimate by its full name, e.g. "lira.forget_auc.candidate" (None when not measured)."""
        for r in self.results.values():
            if name in r.metrics:
                return r.metrics[name]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "exact": self.exact,
            **self.verdict.to_dict(),
            "samples": self.counts,
            "thresholds": self.policy.to_dict(),
            "checks": {name: r.to_dict() for name, r in self.results.items()},
            "not_checked": self.not_checked,
            "references": self.references,
            "timings": self.timings,
            "plots": [f"{name}.png" for name in self.plots],
            "figures": [figure.to_dict() for figure in self.figures],
        }

    def write(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        self.figures = plots.write_figures(self.results, directory, self.policy)
        self.plots = [figure.name for figure in self.figures if figure.drawn]
        self.timings["plots_seconds"] = round(time.perf_counter() - started, 3)
        self.directory = directory
        path = directory / REPORT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return path


def verify(
    served: ModelAdapter,
    candidate: UnlearningResult,
    reference: ModelAdapter | None,
    forget: Sequence[Sample],
    retain: Sequence[Sample],
    heldout: Sequence[Sample],
    probes: Probes | None = None,
    policy: Policy | None = None,
    cache_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    training: Any | None = None,
    training_samples: Sequence[Sample] | None = None,
    reference_trainer: ReferenceTrainer | None = None,
    lineage: str | None = None,
    progress: ProgressCallback = no_progress,
) -> Report:
    """Verify `candidate` (made from `served` by deleting `forget`).

    `heldout`: never-trained data of the same distribution (not the method's validation data).
    `training`: the served version's TrainingRecord; with `cache_dir` it lets the gate train (once per
    lineage, cached) its references like the served version; `reference_trainer` replaces that recipe,
    `training_samples` is the served training set (default forget + retain) and `lineage` names the lineage
    whose versions share references (default: the record's recipe and architecture).
    `reference`: an exact retrain with the served version's seed, if the caller has one: scored and reported
    beside the others; the gate's decisions rest on its own references.
    """
    started = time.perf_counter()
    policy = policy or Policy()
    probes = probes or Probes()
    is_lm = is_language_model(served)
    sets = EvalSets(
        list(forget),
        stable_subsample(retain, policy.retain_cap),
        stable_subsample(heldout, policy.heldout_cap),
    )
    timings: dict[str, Any] = {}
    not_checked: list[str] = []

    progress(0.02, "reference models")
    refs, ref_timings = _references(
        served,
        policy,
        cache_dir,
        training,
        training_samples,
        reference_trainer,
        lineage,
        forget,
        retain,
        progress,
    )
    timings.update(ref_timings)
    if refs is None:
        not_checked.append(
            "the gate's reference models (no training recipe or no cache): no exact-retrain null"
        )
    elif refs.plan is not None and refs.plan.limited:
        not_checked.append(refs.plan.note())
    progress(0.2, "relearning probe")
    models, results = _models(served, candidate, reference, forget, retain, heldout, policy, not_checked)
    progress(0.35, "scoring samples")
    t = time.perf_counter()
    served_cache = ServedCache(
        Path(cache_dir) / "served" / f"{record_fingerprint(training)[:24]}-v{CACHE_VERSION}"
        if cache_dir and training
        else None
    )
    signals = _signals(models, sets, served_cache, policy)
    timings["signals_seconds"] = time.perf_counter() - t
    progress(0.6, "checks")
    t = time.perf_counter()
    utility_only = judged_on_utility(candidate, policy)
    if utility_only and refs is not None:
        not_checked.append("LiRA against the references (exact method: judged on utility)")
    reader = (
        lira_reader(refs, sets, is_lm, policy.batch_size) if refs is not None and not utility_only else None
    )
    timings["reference_scoring_seconds"] = time.perf_counter() - t
    results.update(
        _checks(models, signals, sets, reader, refs, probes, candidate, served_cache, is_lm, policy)
    )
    for r in results.values():
        not_checked += r.not_checked
    not_checked += ALWAYS_UNCHECKED

    verdict = gate(results, candidate.exact, policy, is_lm)
    timings["checks_seconds"] = {name: round(r.seconds, 3) for name, r in results.items()}
    timings["unlearning_seconds"] = candidate.seconds
    timings["verification_seconds"] = (
        time.perf_counter() - started - timings.get("reference_training_seconds", 0.0)
    )
    report = Report(
        method=candidate.method,
        exact=candidate.exact,
        verdict=verdict,
        results=results,
        policy=policy,
        counts={
            **sets.counts(),
            "forget_subjects": len({s.subject for s in forget}),
            "retain_total": len(retain),
        },
        timings=timings,
        not_checked=not_checked,
        references=refs.describe() if refs is not None else None,
    )
    if out_dir is not None:
        progress(0.95, "writing the report")
        report.write(out_dir)
    progress(1.0, f"verdict: {verdict.verdict}")
    return report


def judged_on_utility(candidate: UnlearningResult, policy: Policy) -> bool:
    """An exact candidate under `trust_exact` is judged on utility; without `exact_evidence` only the checks
    that utility needs are run."""
    return bool(candidate.exact) and policy.trust_exact and not policy.exact_evidence


def _models(
    served: ModelAdapter,
    candidate: UnlearningResult,
    reference: ModelAdapter | None,
    forget: Sequence[Sample],
    retain: Sequence[Sample],
    heldout: Sequence[Sample],
    policy: Policy,
    not_checked: list[str],
) -> tuple[dict[str, ModelAdapter], dict[str, CheckResult]]:
    """Every model the checks score, by role, including the relearning probe's (and its record)."""
    models = {"served": served, "candidate": candidate.adapter}
    if reference is not None:
        models["reference"] = reference
    results: dict[str, CheckResult] = {}
    if candidate.exact and policy.trust_exact:
        not_checked.append("relearning probe (exact method: nothing hidden to relearn)")
    elif policy.relearn:
        changed = differing_parameter_names(candidate.adapter, served)
        if not changed:
            not_checked.append(
                "relearning probe (the candidate equals the served version: nothing to relearn)"
            )
        else:
            models["relearned"], results["relearning"] = relearn(
                candidate.adapter, forget, retain, heldout, policy, changed
            )
    return models, results


def _signals(
    models: dict[str, ModelAdapter], sets: EvalSets, served_cache: ServedCache, policy: Policy
) -> dict[str, SplitSignals]:
    signals = {}
    for role, model in models.items():
        if model is models["served"] and "served" in signals:  # the untouched model as its own candidate
            signals[role] = signals["served"]
            continue
        if role == "served":  # the same for every deletion against this version: cached
            values = served_cache.signals(
                sets.all, lambda ss, m=model: model_signals(m, ss, policy.batch_size)
            )
        else:
            values = model_signals(model, sets.all, policy.batch_size)
        signals[role] = split_signals(sets, values)
    return signals


def _checks(
    models: dict[str, ModelAdapter],
    signals: dict[str, SplitSignals],
    sets: EvalSets,
    reader: LiraReader | None,
    refs: ReferenceSet | None,
    probes: Probes,
    candidate: UnlearningResult,
    served_cache: ServedCache,
    is_lm: bool,
    policy: Policy,
) -> dict[str, CheckResult]:
    replicas = halves = None
    deleted_share = 0.0
    utility_only = judged_on_utility(candidate, policy)
    if refs is not None:
        # retain and held-out samples are the lineage's (scored once); the forget samples are new, and
        # only the membership checks read them: skipped for a candidate judged on utility only
        scored = [*sets.retain, *sets.heldout] if utility_only else sets.all
        pad = np.full((refs.k + refs.replicas, len(sets.forget) if utility_only else 0), np.nan)
        scored_loss = [refs.losses(scored, policy.batch_size), refs.replica_losses(scored, policy.batch_size)]
        loss = np.concatenate([pad, np.concatenate(scored_loss)], axis=1)
        correct = np.concatenate([pad, refs.correct(scored, policy.batch_size)], axis=1)
        if refs.replicas:
            replicas = {"loss": loss[refs.k :], "correct": correct[refs.k :]}
        if refs.k:
            halves = {"loss": loss[: refs.k], "correct": correct[: refs.k]}
        deleted_share = len({s.subject for s in sets.forget} & set(refs.subjects)) / max(
            1, len(refs.subjects)
        )
    samples = CheckResult("samples", values={f"samples.{k}": v for k, v in sets.counts().items()})
    results = {
        "samples": samples,
        "utility": check_utility(signals, sets, is_lm, policy, replicas, halves, deleted_share),
        "mia": check_mia(sets, signals, reader, is_lm, policy, replicas),
    }
    forget_subjects = {s.subject for s in sets.forget}
    if is_lm:
        results["memorization"] = check_memorization(signals, sets, policy)
    if utility_only:
        # an exact candidate is judged on utility: the planted-signal probes (most of a text model's
        # verification time: every canary's exposure over its secret space) would decide nothing
        samples.not_checked.append("canaries and backdoor triggers (exact method: judged on utility)")
    elif is_lm:
        # canary rules compare a model with itself: the references need no scoring
        scored = {r: m for r, m in models.items() if r in ("served", "candidate", "relearned")}
        results["canary"] = check_canaries(
            scored, probes.canaries, probes.control_canaries, forget_subjects, policy, served_cache
        )
        results["canary"].not_checked.append("backdoor triggers (language model: canaries play that part)")
    else:
        results["backdoor"] = check_backdoor(models, probes.backdoor, policy, served_cache, refs)
        results["backdoor"].not_checked.append(
            "memorization and canaries (classifier: triggers play that part)"
        )
    results["residual"] = check_residual(candidate)
    return results


def _references(
    served: ModelAdapter,
    policy: Policy,
    cache_dir: Path | None,
    training: Any | None,
    training_samples: Sequence[Sample] | None,
    trainer: ReferenceTrainer | None,
    lineage: str | None,
    forget: Sequence[Sample],
    retain: Sequence[Sample],
    progress: ProgressCallback,
) -> tuple[ReferenceSet | None, dict[str, Any]]:
    if trainer is None and training is not None:
        trainer = trainer_from_record(training)
    if trainer is None or cache_dir is None:
        return None, {}
    plan = plan_references(policy.references(), policy.seed_replicas, policy.max_reference_trainings)
    t = time.perf_counter()
    refs = ensure_references(
        Path(cache_dir),
        lineage or (lineage_key(training) if training is not None else "lineage"),
        served,
        training_samples if training_samples is not None else [*forget, *retain],
        trainer,
        plan,
        policy.reference_refresh_share,
        progress=lambda f, m: progress(0.02 + 0.18 * f, m),
    )
    spent = time.perf_counter() - t
    timings = {
        "reference_models": refs.k,
        "seed_replicas": refs.replicas,
        "reference_training_seconds": spent if refs.trained_now else 0.0,
        "reference_training_seconds_when_built": round(refs.cost_seconds, 3),
        "references_cached": not refs.trained_now,
    }
    return refs, timings
