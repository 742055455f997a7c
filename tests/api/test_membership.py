"""Which samples trained which version: the compact form (sources, listed samples, exclusions) answers
like an explicit list would."""

from __future__ import annotations

from sqlalchemy import func, select

from app.db import session_scope
from app.provenance.membership import training_sample_ids, versions_trained_on
from app.provenance.models import Sample, VersionExclusion
from app.registry.models import ModelVersion
from app.registry.service import create_derived_version, get_model, get_version
from app.security.subjects import subject_hmac
from tests.api.provenance_factory import (
    add_samples,
    create_dataset,
    create_model,
    register_version,
    text_samples,
)


def sample_ids(session, dataset_external_ids: list[str]) -> list[int]:
    return list(session.scalars(select(Sample.id).where(Sample.external_id.in_(dataset_external_ids))))


def test_derived_versions_drop_forgotten_samples_cumulatively(client, tenant_a, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    add_samples(client, auth_a, dataset, text_samples({"uma": 2, "vic": 2, "wes": 2}, prefix=dataset))
    model = create_model(client, auth_a)
    register_version(client, auth_a, model, dataset)
    # Samples registered later are not in version 1.
    add_samples(client, auth_a, dataset, text_samples({"uma": 3}, prefix=f"{dataset}-late"))

    with session_scope() as session:
        found = get_model(session, tenant_a, model)
        root = get_version(session, found, 1)
        all_ids = set(session.scalars(training_sample_ids(root)))
        uma = set(session.scalars(select(Sample.id).where(Sample.subject_hmac == subject_hmac("uma"))))
        vic = set(session.scalars(select(Sample.id).where(Sample.subject_hmac == subject_hmac("vic"))))
        assert len(all_ids) == 6 and len(uma & all_ids) == 2

        late_uma = uma - all_ids  # never trained on: removing them removes nothing
        child = create_derived_version(session, root, uma, "test", method="scrub")
        grandchild = create_derived_version(
            session, child, vic | late_uma, "test", method="scrub", exact=True
        )
        ids = {"child": child.id, "grandchild": grandchild.id}

    with session_scope() as session:
        child, grandchild = (session.get(ModelVersion, ids[k]) for k in ("child", "grandchild"))
        assert set(session.scalars(training_sample_ids(child))) == all_ids - uma
        assert set(session.scalars(training_sample_ids(grandchild))) == all_ids - uma - vic
        assert (child.training_set_size, grandchild.training_set_size) == (4, 2)
        assert (child.version, grandchild.version, grandchild.exact) == (2, 3, True)
        assert child.training_root_id == grandchild.training_root_id == child.parent_id
        # Compact: the grandchild stores only its exclusions (4 rows), no row per kept sample.
        stored = session.scalar(
            select(func.count())
            .select_from(VersionExclusion)
            .where(VersionExclusion.version_id == grandchild.id)
        )
        assert stored == 4

        hits = versions_trained_on(session, tenant_a, subject_hmac=subject_hmac("vic"))
        assert {hit.version for hit in hits} == {1, 2}
        hits = versions_trained_on(session, tenant_a, sample_ids=sorted(uma))
        assert {hit.version for hit in hits} == {1}
        wes = versions_trained_on(session, tenant_a, subject_hmac=subject_hmac("wes"))
        assert {hit.version for hit in wes} == {1, 2, 3}

    # The subject endpoint reads the same membership.
    trained = client.get("/v1/subjects/vic", headers=auth_a).json()["model_versions"]
    assert [(item["model"], item["version"]) for item in trained] == [(model, 1), (model, 2)]


def test_listed_training_sets_cover_only_the_listed_samples(client, tenant_a, auth_a) -> None:
    dataset = create_dataset(client, auth_a)
    add_samples(client, auth_a, dataset, text_samples({"xia": 2, "yan": 2}, prefix=dataset))
    model = create_model(client, auth_a)
    register_version(client, auth_a, model, dataset, external_ids=[f"{dataset}-xia-1", f"{dataset}-yan-0"])
    with session_scope() as session:
        version = get_version(session, get_model(session, tenant_a, model), 1)
        trained = set(session.scalars(training_sample_ids(version)))
        expected = set(sample_ids(session, [f"{dataset}-xia-1", f"{dataset}-yan-0"]))
        assert trained == expected
        assert (
            versions_trained_on(session, tenant_a, sample_ids=sample_ids(session, [f"{dataset}-xia-0"])) == []
        )
