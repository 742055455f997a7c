"""A deletion from a registered model outside a job: what `lethe unlearn --model` and `lethe verify --model`
run.

It reads what the pipeline's stages read: the version the model's alias serves (or a version named), the
forget, retain, validation and held-out sets of workers.pipeline.data, the training record and the
already-forgotten samples of `unlearn.record_for`, the policy's method settings, the gate policy and the
planted probes of the verify stage. It runs the method on the version's adapter and, for verify, the gate,
whose report goes to a directory of the caller's. The database is only read (the session is never
committed): no version, artifact or alias is written, no request or job exists, nothing is promoted; a real
deletion is a deletion request. The gate's LiRA reference models of the version are cached where the verify
stage caches them: they derive from that version alone and are purged with it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import get_session_factory
from app.provenance.membership import training_sample_ids
from app.provenance.models import Sample as SampleRow
from app.registry.models import Model, ModelVersion
from app.registry.overrides import apply_overrides
from app.registry.policy import GateOverrides, GatePolicy, ModelPolicy, model_policy
from app.registry.service import find_model
from app.security.subjects import subject_hmac
from app.tenancy.service import get_tenant_by_name
from workers.pipeline import data, store
from workers.pipeline.chain import is_exact
from workers.pipeline.unlearn import method_config, record_for, served_version, targeting_source
from workers.pipeline.verify import gate_policy, judge, planted_probes

if TYPE_CHECKING:
    from workers.modeling.base import ModelAdapter, Sample
    from workers.modeling.training import TrainingRecord
    from workers.unlearning.base import ProgressCallback, UnlearningResult


class DryRunRefused(Exception):
    """The deletion cannot be tried: an unknown tenant, model, version or method, a subject with no sample
    in the version, a version without a loadable artifact."""


@dataclass
class MethodInputs:
    """What the unlearn stage hands one method: the policy's settings, a record, samples it must leave out,
    where its per-sample targets' references come from."""

    config: dict[str, Any]
    record: TrainingRecord | None
    extra_forget: list[Sample]
    targeting: Any | None = None


@dataclass
class Deletion:
    """One deletion of data subjects from one version of a registered model, read from the database."""

    tenant: str
    model: Model  # detached: its loaded columns only
    version: int
    subjects: int
    sets: data.DataSets
    methods: dict[str, MethodInputs]
    lineage: tuple[ModelVersion, TrainingRecord] | None
    own_record: TrainingRecord | None
    verification_cache: Path
    served: ModelAdapter

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "tenant": self.tenant,
            "version": self.version,
            "forget_subjects": self.subjects,
            "sets": self.sets.describe(),
            "dry_run": True,
        }

    def evaluation_sets(self, seed: int = 0) -> dict[str, list[Sample]]:
        """forget / retain / held-out as the workload path compares them (capped; empty ones left out)."""
        from workers.unlearning.common import subsample
        from workers.unlearning.evaluation import EVAL_CAP

        splits = {"forget": self.sets.forget, "retain": self.sets.retain, "heldout": self.sets.heldout}
        return {name: subsample(samples, EVAL_CAP, seed) for name, samples in splits.items() if samples}

    def unlearn(
        self,
        method: str,
        overrides: Mapping[str, Any] | None = None,
        seed: int = 0,
        progress: ProgressCallback | None = None,
    ) -> UnlearningResult:
        """Run `method` as the unlearn stage runs it, `overrides` over the policy's settings; keeps nothing
        (a method that writes its result's training record writes it to a temporary directory)."""
        from workers.unlearning.base import UnlearningContext, get_method, no_progress

        inputs = self.methods[method]
        unlearning = get_method(method, **{**inputs.config, **(overrides or {})})
        context = UnlearningContext(
            training=inputs.record,
            seed=seed,
            progress=progress or no_progress,
            targeting=inputs.targeting,
        )
        with tempfile.TemporaryDirectory(prefix=f"lethe-dry-run-{method}-") as scratch:
            if unlearning.records_provenance:
                context.workdir = Path(scratch)
            return unlearning.unlearn(
                self.served,
                [*self.sets.forget, *inputs.extra_forget],
                self.sets.retain,
                self.sets.validation,
                context,
            )

    def gate_policy(self, overrides: Mapping[str, Any] | None = None) -> GatePolicy:
        """The model's gate settings, `overrides` over them (validated as a policy's gate section is)."""
        if not overrides:
            return gate_policy(self.model)
        own = model_policy(self.model.policy).gate.model_dump(exclude_unset=True)
        return apply_overrides(GatePolicy, GateOverrides.model_validate({**own, **overrides}))

    def verify(
        self,
        candidate: UnlearningResult,
        out_dir: Path,
        progress: ProgressCallback | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Any:
        """The verify stage's gate on `candidate`, its report (report.json and plots) written to `out_dir`;
        `overrides`: gate settings over the model policy's own."""
        from workers.unlearning.base import no_progress

        return judge(
            self.served,
            candidate,
            self.sets,
            self.lineage,
            self.own_record,
            self.verification_cache,
            self.gate_policy(overrides),
            planted_probes(self.model, self.sets.forget),
            out_dir,
            progress or no_progress,
        )


def open_deletion(
    tenant: str,
    model: str,
    subject_ids: Iterable[str],
    methods: Iterable[str],
    version: int | None = None,
) -> Deletion:
    """Deleting `subject_ids` from `model` of `tenant` (the version its alias serves, or `version`), with
    the inputs each of `methods` would get; DryRunRefused says why it cannot be tried."""
    subjects = list(dict.fromkeys(subject_ids))
    with get_session_factory()() as session:
        found_tenant = get_tenant_by_name(session, tenant)
        if found_tenant is None:
            raise DryRunRefused(f"no tenant {tenant!r}")
        found = find_model(session, found_tenant.id, model)
        if found is None:
            raise DryRunRefused(f"tenant {tenant!r} has no model {model!r}")
        try:
            policy = model_policy(found.policy)
        except ValueError as invalid:
            raise DryRunRefused(f"model {model!r} has an invalid policy: {invalid}") from invalid
        base = _version(session, found, version)
        sample_ids = _subject_samples(session, found_tenant.id, base, subjects, f"{model} v{base.version}")
        sets = data.build_sets(session, base, sample_ids)
        if not sets.forget:
            raise DryRunRefused(f"the subjects' samples in {model} v{base.version} have no content left")
        inputs = {name: _method_inputs(session, base, policy, name, sets) for name in dict.fromkeys(methods)}
        lineage = store.lineage_record(session, base)
        own = store.own_record(base)
        cache = store.verification_cache(base)
    try:
        served = store.load_adapter_of(base)
    except Exception as exc:  # a missing, purged or corrupt artifact: nothing to unlearn from
        raise DryRunRefused(
            f"{model} v{base.version} has no loadable artifact: {type(exc).__name__}: {exc}"
        ) from exc
    return Deletion(tenant, found, base.version, len(subjects), sets, inputs, lineage, own, cache, served)


def _version(session: Session, model: Model, number: int | None) -> ModelVersion:
    if number is None:
        alias, served, _ = served_version(session, model)
        if served is None:
            raise DryRunRefused(f"model {model.name!r} has no version that may serve (alias {alias!r})")
        return served
    version = session.scalars(
        select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == number)
    ).one_or_none()
    if version is None:
        raise DryRunRefused(f"model {model.name!r} has no version {number}")
    if version.purged_at is not None or not version.artifact_uri:
        raise DryRunRefused(f"{model.name} v{number} has no loadable artifact (purged or never stored)")
    return version


def _subject_samples(
    session: Session, tenant_id: str, version: ModelVersion, subjects: list[str], label: str
) -> list[int]:
    """The ids of the subjects' samples that trained `version`; every subject must have one."""
    if version.training_root_id is None:
        raise DryRunRefused(f"{label} has no training set: nothing to forget from it")
    ids: list[int] = []
    for subject in subjects:
        held = training_sample_ids(version).where(
            SampleRow.tenant_id == tenant_id, SampleRow.subject_hmac == subject_hmac(subject)
        )
        found = list(session.scalars(held))
        if not found:
            raise DryRunRefused(f"subject {subject!r} has no sample in {label}")
        ids.extend(found)
    return ids


def _method_inputs(
    session: Session, base: ModelVersion, policy: ModelPolicy, method: str, sets: data.DataSets
) -> MethodInputs:
    try:
        exact = is_exact(method, policy)
    except KeyError as unknown:
        raise DryRunRefused(str(unknown.args[0])) from unknown
    record, extra_forget = record_for(session, base, exact, set(sets.forget_ids))
    targeting = targeting_source(session, base)
    return MethodInputs(method_config(policy, method, record), record, extra_forget, targeting)
