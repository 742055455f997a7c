"""Customers' own artifacts: recognised from their files at registration (422 naming what is wrong), loaded
once by the worker's check before they may serve, and handed back as a tar of the folder they came in.

The worker's check runs in this process (`workers.pipeline.artifacts.check_artifact`, what the task
lethe.check_artifact runs): the tests see what a caller would, through the API."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.outbox.models import OutboxMessage
from app.provenance.models import Sample
from app.registry.models import ModelVersion
from app.registry.service import taint_version
from tests.api.provenance_factory import (
    add_samples,
    assert_problem,
    create_dataset,
    create_model,
    text_samples,
    unique,
)
from tests.tiny_models import save_distilbert_classifier, save_gpt2, save_torch_classifier, sequential_mlp
from workers.pipeline.artifacts import check_artifact

TEXTS = ["ann wrote a letter", "ben paid the bill", "cy lost a password"]


def digest_of(folder: Path) -> str:
    """The documented sha256 of an artifact folder, computed here independently of the service."""
    lines = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        lines.update(f"{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return lines.hexdigest()


def make_gpt2(folder: Path) -> None:
    save_gpt2(folder, TEXTS)


def make_distilbert(folder: Path) -> None:
    save_distilbert_classifier(folder, TEXTS, ["billing", "technical"])


def make_mlp(folder: Path) -> None:
    save_torch_classifier(folder, sequential_mlp(3, 8, 2), features=3, classes=2)


KINDS: dict[str, tuple[str, str, Callable[[Path], None]]] = {
    # kind: (model task, dataset kind, maker)
    "gpt2": ("causal-lm", "text", make_gpt2),
    "distilbert": ("sequence-classification", "classification", make_distilbert),
    "mlp": ("tabular-classification", "classification", make_mlp),
}


def dataset_for(client, auth, dataset_kind: str, subjects: dict[str, int]) -> str:
    if dataset_kind == "text":
        dataset = create_dataset(client, auth)
        add_samples(client, auth, dataset, text_samples(subjects))
        return dataset
    dataset = create_dataset(client, auth, kind="classification", label_map={"billing": 0, "technical": 1})
    rows = [
        {"external_id": f"s-{subject}-{i}", "subject_id": subject, "text": f"{subject} {i}",
         "features": [float(i), 1.0, 0.5], "label": ["billing", "technical"][i % 2]}
        for subject, count in subjects.items()
        for i in range(count)
    ]  # fmt: skip
    add_samples(client, auth, dataset, rows)
    return dataset


def register(client, auth, model: str, body: dict[str, Any]):
    return client.post(f"/v1/models/{model}/versions", json=body, headers=auth)


def versions(client, auth, model: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/models/{model}/versions", headers=auth).json()["items"]


def put_alias(client, auth, model: str, version: int):
    body = {"version": version, "expected_version": None}
    return client.put(f"/v1/models/{model}/aliases/production", json=body, headers=auth)


def unpacked(response, destination: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        archive.extractall(destination, filter="data")
    (folder,) = destination.iterdir()
    return folder


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_artifact_is_recognised_checked_by_a_worker_and_handed_back(
    client, auth_a, models_root, tmp_path, kind
) -> None:
    task, dataset_kind, make = KINDS[kind]
    folder = models_root / unique(kind)
    make(folder)
    model = create_model(client, auth_a, task=task)
    dataset = dataset_for(client, auth_a, dataset_kind, {"ann": 2, "ben": 2})
    body = {
        "artifact_uri": folder.name,
        "artifact_sha256": digest_of(folder),
        "training_set": {"dataset": dataset},
    }

    created = register(client, auth_a, model, body)

    assert created.status_code == 201, created.text
    version = created.json()
    expected_format = "torch-classifier" if kind == "mlp" else "huggingface"
    assert (version["status"], version["artifact_format"], version["promotable"]) == (
        "checking", expected_format, False,
    )  # fmt: skip
    assert version["artifact_sha256"] == digest_of(folder)
    assert_problem(put_alias(client, auth_a, model, 1), 409, "version-not-promotable")
    assert_problem(client.get(f"/v1/models/{model}/versions/1/artifact", headers=auth_a), 409)
    with session_scope() as session:
        tasks = session.scalars(
            select(OutboxMessage).where(OutboxMessage.task_name == "lethe.check_artifact")
        )
        assert {"version_id": version["id"]} in [task.payload for task in tasks]

    check_artifact(version["id"])

    checked = client.get(f"/v1/models/{model}/versions/1", headers=auth_a).json()
    assert (checked["status"], checked["promotable"], checked["status_reason"]) == ("registered", True, None)
    assert put_alias(client, auth_a, model, 1).status_code == 201
    download = client.get(f"/v1/models/{model}/versions/1/artifact", headers=auth_a)
    assert download.status_code == 200 and download.headers["content-type"] == "application/x-tar"
    assert download.headers["x-artifact-sha256"] == digest_of(folder)
    assert download.headers["x-artifact-format"] == expected_format
    tar_sha = hashlib.sha256(download.content).digest()
    import base64

    assert download.headers["repr-digest"] == f"sha-256=:{base64.b64encode(tar_sha).decode()}:"
    returned = unpacked(download, tmp_path / "download")
    assert returned.name == f"{model}-v1" and digest_of(returned) == digest_of(folder)


def test_the_handed_back_folder_loads_with_from_pretrained(client, auth_a, models_root, tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models_root / unique("gpt2")
    make_gpt2(folder)
    model = create_model(client, auth_a, task="causal-lm")
    dataset = dataset_for(client, auth_a, "text", {"ann": 1})
    version = register(
        client, auth_a, model, {"artifact_uri": str(folder), "training_set": {"dataset": dataset}}
    )
    check_artifact(version.json()["id"])
    returned = unpacked(client.get(f"/v1/models/{model}/versions/1/artifact", headers=auth_a), tmp_path)

    loaded = AutoModelForCausalLM.from_pretrained(returned)
    original = AutoModelForCausalLM.from_pretrained(folder)
    tokens = AutoTokenizer.from_pretrained(returned)(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(**tokens).logits, original(**tokens).logits)


def _without_weights(folder: Path) -> None:
    make_gpt2(folder)
    (folder / "model.safetensors").unlink()


def _pickled_weights(folder: Path) -> None:
    make_gpt2(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _unknown_architecture(folder: Path) -> None:
    make_gpt2(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))


def _not_a_language_model(folder: Path) -> None:
    make_gpt2(folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2ForTokenClassification"]
    (folder / "config.json").write_text(json.dumps(config))


def _garbage_weights(folder: Path) -> None:
    make_gpt2(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)


def _no_tokenizer(folder: Path) -> None:
    make_gpt2(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()


def _no_config(folder: Path) -> None:
    make_gpt2(folder)
    (folder / "config.json").unlink()


def _unknown_torch_architecture(folder: Path) -> None:
    make_mlp(folder)
    (folder / "classifier.json").write_text(json.dumps({"architecture": "transformer", "num_classes": 2}))


BAD_ARTIFACTS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "missing weights": ("causal-lm", _without_weights, "artifact-missing-weights"),
    "pickled weights": ("causal-lm", _pickled_weights, "artifact-weights-not-safetensors"),
    "unknown architecture": ("causal-lm", _unknown_architecture, "artifact-unknown-architecture"),
    "unknown torch architecture": ("tabular-classification", _unknown_torch_architecture,
                                   "artifact-unknown-architecture"),
    "not a causal LM": ("causal-lm", _not_a_language_model, "artifact-unknown-architecture"),
    "weights not safetensors": ("causal-lm", _garbage_weights, "artifact-weights-invalid"),
    "no tokenizer": ("causal-lm", _no_tokenizer, "artifact-missing-tokenizer"),
    "no config": ("causal-lm", _no_config, "artifact-format-unknown"),
    "another task": ("sequence-classification", make_gpt2, "artifact-task-mismatch"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_ARTIFACTS))
def test_bad_artifacts_are_refused_and_nothing_is_written(client, auth_a, models_root, case) -> None:
    task, make, why = BAD_ARTIFACTS[case]
    folder = models_root / unique("bad")
    make(folder)
    model = create_model(client, auth_a, task=task)
    dataset = dataset_for(client, auth_a, "text", {"ann": 1})

    body = assert_problem(
        register(client, auth_a, model, {"artifact_uri": folder.name, "training_set": {"dataset": dataset}}),
        422,
        why,
    )

    assert body["detail"].startswith("artifact_uri: ")
    assert versions(client, auth_a, model) == []


def test_a_sha256_that_does_not_match_is_refused(client, auth_a, models_root) -> None:
    folder = models_root / unique("gpt2")
    make_gpt2(folder)
    model = create_model(client, auth_a)
    dataset = dataset_for(client, auth_a, "text", {"ann": 1})
    body = {"artifact_uri": folder.name, "artifact_sha256": "0" * 64, "training_set": {"dataset": dataset}}

    problem = assert_problem(register(client, auth_a, model, body), 422, "artifact-sha256-mismatch")

    assert problem["computed_sha256"] == digest_of(folder)
    assert versions(client, auth_a, model) == []


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("../outside", "artifact-outside-models-root"),
        ("/etc", "artifact-outside-models-root"),
        ("file:///etc", "artifact-outside-models-root"),
        ("no-such-folder", "artifact-not-found"),
        ("http://169.254.169.254/latest/meta-data", "artifact-protocol-not-allowed"),
        ("memory://bucket/model", "artifact-protocol-not-allowed"),
    ],
)
def test_artifacts_outside_the_models_root_or_on_other_protocols_are_refused(
    client, auth_a, models_root, uri, why
) -> None:
    (models_root.parent / "outside").mkdir(exist_ok=True)
    model = create_model(client, auth_a)
    dataset = dataset_for(client, auth_a, "text", {"ann": 1})
    assert_problem(
        register(client, auth_a, model, {"artifact_uri": uri, "training_set": {"dataset": dataset}}), 422, why
    )
    assert versions(client, auth_a, model) == []


def test_a_symlink_out_of_the_models_root_is_refused(client, auth_a, models_root, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    make_gpt2(elsewhere)
    link = models_root / unique("link")
    link.symlink_to(elsewhere, target_is_directory=True)
    model = create_model(client, auth_a)
    dataset = dataset_for(client, auth_a, "text", {"ann": 1})
    body = {"artifact_uri": link.name, "training_set": {"dataset": dataset}}
    assert_problem(register(client, auth_a, model, body), 422, "artifact-outside-models-root")


def test_a_file_linking_out_of_the_models_root_is_refused(client, auth_a, models_root, tmp_path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("not for tenants")
    folder = models_root / unique("gpt2")
    make_gpt2(folder)
    (folder / "README.md").symlink_to(secret)
    model = create_model(client, auth_a)
    dataset = dataset_for(client, auth_a, "text", {"ann": 1})
    body = {"artifact_uri": folder.name, "training_set": {"dataset": dataset}}
    problem = assert_problem(register(client, auth_a, model, body), 422, "artifact-outside-models-root")
    assert "README.md" in problem["detail"] and "not for tenants" not in str(problem)


def test_an_fsspec_url_is_read_checked_and_fetched_by_its_sha256(
    client, auth_a, models_root, tmp_path, monkeypatch
) -> None:
    import fsspec

    from app.settings import get_settings

    monkeypatch.setenv("LETHE_ARTIFACT_URL_PROTOCOLS", '["memory"]')
    monkeypatch.setenv("LETHE_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    local = tmp_path / "gpt2"
    make_gpt2(local)
    memory = fsspec.filesystem("memory")
    target = f"/{unique('bucket')}/gpt2"
    memory.put(str(local), target, recursive=True)
    model = create_model(client, auth_a)
    dataset = dataset_for(client, auth_a, "text", {"ann": 1})
    try:
        created = register(
            client, auth_a, model, {"artifact_uri": f"memory:/{target}", "training_set": {"dataset": dataset}}
        )
        assert created.status_code == 201, created.text
        assert created.json()["artifact_sha256"] == digest_of(local)
        check_artifact(created.json()["id"])
        assert client.get(f"/v1/models/{model}/versions/1", headers=auth_a).json()["status"] == "registered"
        assert (tmp_path / "cache" / "folders" / digest_of(local) / "model.safetensors").is_file()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_an_artifact_the_worker_cannot_load_fails_its_check_and_never_serves(
    client, auth_a, models_root
) -> None:
    folder = models_root / unique("mlp")
    save_torch_classifier(folder, sequential_mlp(13, 8, 2), features=13, classes=2)
    # the config says 3 features, the weights take 13: the files look right, the model does not load
    (folder / "classifier.json").write_text(
        json.dumps({"architecture": "mlp", "input_shape": [3], "num_classes": 2})
    )
    model = create_model(client, auth_a, task="tabular-classification")
    dataset = dataset_for(client, auth_a, "classification", {"ann": 2})
    created = register(
        client, auth_a, model, {"artifact_uri": folder.name, "training_set": {"dataset": dataset}}
    )
    assert created.status_code == 201, created.text

    check_artifact(created.json()["id"])

    failed = client.get(f"/v1/models/{model}/versions/1", headers=auth_a).json()
    assert (failed["status"], failed["promotable"]) == ("failed", False)
    assert "did not load" in failed["status_reason"] and "size mismatch" in failed["status_reason"]
    assert_problem(put_alias(client, auth_a, model, 1), 409, "version-not-promotable")
    assert_problem(client.get(f"/v1/models/{model}/versions/1/artifact", headers=auth_a), 409)


def test_a_model_that_does_not_fit_its_training_data_fails_its_check(client, auth_a, models_root) -> None:
    folder = models_root / unique("mlp")
    save_torch_classifier(folder, sequential_mlp(5, 8, 2), features=5, classes=2)
    model = create_model(client, auth_a, task="tabular-classification")
    dataset = dataset_for(client, auth_a, "classification", {"ann": 2})  # 3 features, not 5
    created = register(
        client, auth_a, model, {"artifact_uri": folder.name, "training_set": {"dataset": dataset}}
    )
    check_artifact(created.json()["id"])
    failed = client.get(f"/v1/models/{model}/versions/1", headers=auth_a).json()
    assert failed["status"] == "failed" and failed["status_reason"]


def test_held_out_samples_are_named_at_registration(client, auth_a, models_root, db_session) -> None:
    folder = models_root / unique("gpt2")
    make_gpt2(folder)
    model = create_model(client, auth_a)
    dataset = dataset_for(client, auth_a, "text", {"ann": 2, "ben": 2, "cy": 2})
    heldout_set = dataset_for(client, auth_a, "text", {"dan": 3})
    trained = {"dataset": dataset, "external_ids": ["s-ann-0", "s-ann-1", "s-ben-0", "s-ben-1"]}
    listed = {
        "artifact_uri": folder.name,
        "training_set": trained,
        "heldout": {"external_ids": ["s-cy-0", "s-cy-1"]},
    }
    whole = {"artifact_uri": folder.name, "training_set": trained, "heldout": {"dataset": heldout_set}}
    overlapping = {**listed, "heldout": {"external_ids": ["s-cy-0", "s-ann-1"]}}
    unknown = {**listed, "heldout": {"external_ids": ["s-cy-0", "nobody"]}}

    assert_problem(register(client, auth_a, model, overlapping), 422, "heldout-in-training-set")
    assert_problem(register(client, auth_a, model, unknown), 422, "unknown-samples")
    assert versions(client, auth_a, model) == []
    first = register(client, auth_a, model, listed).json()
    second = register(client, auth_a, model, whole).json()
    plain = register(client, auth_a, model, {"artifact_uri": folder.name, "training_set": trained}).json()

    assert (first["heldout_size"], second["heldout_size"], plain["heldout_size"]) == (2, 3, 0)
    assert first["training_set_size"] == 4


def test_tainted_and_changed_versions_are_not_handed_out(client, auth_a, models_root) -> None:
    folder = models_root / unique("gpt2")
    make_gpt2(folder)
    model = create_model(client, auth_a)
    dataset = dataset_for(client, auth_a, "text", {"ann": 1})
    for _ in range(2):
        created = register(
            client, auth_a, model, {"artifact_uri": folder.name, "training_set": {"dataset": dataset}}
        )
        check_artifact(created.json()["id"])
    with session_scope() as session:
        first = session.scalars(select(ModelVersion).where(ModelVersion.id == created.json()["id"])).one()
        taint_version(session, first, "trained on forgotten data", "test")
    gone = assert_problem(
        client.get(f"/v1/models/{model}/versions/2/artifact", headers=auth_a), 410, "version-gone"
    )
    assert "tainted" in gone["detail"]
    (folder / "README.md").write_text("edited after registration")
    changed = client.get(f"/v1/models/{model}/versions/1/artifact", headers=auth_a)
    assert_problem(changed, 409, "artifact-changed")
    shutil.rmtree(folder)
    assert_problem(
        client.get(f"/v1/models/{model}/versions/1/artifact", headers=auth_a), 409, "artifact-gone"
    )


# --- versions:train: typed params, a held-out share of the subjects ------------------------------------


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"epochs": 3}, "epochs"),  # a top-level epochs used to be silently ignored
        ({"recipe": {"epoch": 3}}, "epoch"),
        ({"recipe": {"epochs": 0}}, "epochs"),
        ({"adapter_kind": "torch-classifier"}, "adapter_kind"),
        ({"fine_tuning": "lora"}, "fine_tuning 'lora' needs a base"),
        ({"base": {"path": "x", "version": 1}}, "exactly one of version and path"),
        ({"architecture": {"kind": "mlp"}, "workload": "digits"}, "not architecture and workload"),
        ({"workload": "bios"}, "trains a causal-lm model"),
        ({"base": {"path": "no-such-base"}}, "artifact_uri"),
        ({"base": {"version": 5}}, "version 5"),
        ({"base": {"version": 2**31}}, "base"),  # version numbers are 32-bit, in bodies as in paths
        ({"recipe": {"epochs": 10**6}}, "epochs"),  # the recipe's bounds: no request trains for ever
    ],
)
def test_training_params_are_a_typed_schema(client, auth_a, params, needle) -> None:
    model = create_model(client, auth_a, task="tabular-classification")
    dataset = dataset_for(client, auth_a, "classification", {"ann": 2})
    body = {"training_set": {"dataset": dataset}, "params": params}
    problem = client.post(f"/v1/models/{model}/versions:train", json=body, headers=auth_a)
    assert problem.status_code in (404, 422), problem.text
    assert needle in problem.text
    assert versions(client, auth_a, model) == []


def test_training_data_must_fit_the_task(client, auth_a) -> None:
    text_model = create_model(client, auth_a, task="tabular-classification")
    texts = dataset_for(client, auth_a, "text", {"ann": 2})
    body = {"training_set": {"dataset": texts}}
    assert_problem(
        client.post(f"/v1/models/{text_model}/versions:train", json=body, headers=auth_a),
        422,
        "dataset-task-mismatch",
    )
    lm = create_model(client, auth_a, task="causal-lm")
    problem = assert_problem(client.post(f"/v1/models/{lm}/versions:train", json=body, headers=auth_a), 422)
    assert "params.base" in problem["detail"]


def test_openapi_describes_training_params(client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    train_in = schemas["TrainIn"]["properties"]
    assert train_in["params"]["$ref"].endswith("/TrainingParams")
    assert schemas["TrainingParams"]["additionalProperties"] is False
    assert {"base", "fine_tuning", "lora", "architecture", "workload", "recipe"} <= set(
        schemas["TrainingParams"]["properties"]
    )
    assert schemas["TrainingRecipeOverrides"]["additionalProperties"] is False
    assert schemas["TrainingRecipeOverrides"]["properties"]["epochs"]["maximum"] == 1000


def test_fine_tuning_from_a_version_keeps_what_that_version_was_trained_on(
    client, auth_a, models_root, db_session
) -> None:
    folder = models_root / unique("gpt2")
    make_gpt2(folder)
    model = create_model(client, auth_a)
    dataset = dataset_for(client, auth_a, "text", {"ann": 2, "ben": 2, "cy": 2, "dan": 2})
    first = {"dataset": dataset, "external_ids": ["s-ann-0", "s-ann-1"]}
    base = register(client, auth_a, model, {"artifact_uri": folder.name, "training_set": first}).json()
    body = {"training_set": {"dataset": dataset, "external_ids": ["s-ben-0", "s-cy-0"]},
            "params": {"base": {"version": 1}}}  # fmt: skip
    assert_problem(
        client.post(f"/v1/models/{model}/versions:train", json=body, headers=auth_a), 422
    )  # checking
    check_artifact(base["id"])

    job = client.post(f"/v1/models/{model}/versions:train", json=body, headers=auth_a)

    assert job.status_code == 202, job.text
    version = client.get(f"/v1/models/{model}/versions/2", headers=auth_a).json()
    assert version["training_set_size"] == 4  # ann's two samples are in the starting weights
    ann = client.get("/v1/subjects/ann", headers=auth_a).json()
    assert {(v["model"], v["version"]) for v in ann["model_versions"]} == {(model, 1), (model, 2)}
    from app.jobs.models import Job

    params = db_session.get(Job, job.json()["id"]).params
    assert params["base"]["uri"] == folder.name and params["base_version_id"] == base["id"]


def test_training_reserves_a_held_out_share_of_the_subjects(client, auth_a, db_session) -> None:
    model = create_model(client, auth_a, task="tabular-classification")
    subjects = {f"person-{i}": 2 for i in range(10)}
    dataset = dataset_for(client, auth_a, "classification", subjects)
    body = {
        "training_set": {"dataset": dataset},
        "heldout": {"fraction": 0.3},
        "params": {"architecture": {}},
    }

    response = client.post(f"/v1/models/{model}/versions:train", json=body, headers=auth_a)

    assert response.status_code == 202, response.text
    version = client.get(f"/v1/models/{model}/versions/1", headers=auth_a).json()
    assert (version["training_set_size"], version["heldout_size"]) == (14, 6)
    from app.provenance.membership import heldout_sample_ids, training_sample_ids

    stored = db_session.get(ModelVersion, version["id"])
    trained = set(db_session.scalars(training_sample_ids(stored)))
    heldout = set(db_session.scalars(heldout_sample_ids(stored)))
    subjects_of = {
        sample.id: sample.subject_hmac
        for sample in db_session.scalars(select(Sample).where(Sample.id.in_(trained | heldout)))
    }
    assert not {subjects_of[i] for i in trained} & {subjects_of[i] for i in heldout}
    none_kept = {**body, "heldout": {"fraction": 0}}
    again = client.post(f"/v1/models/{model}/versions:train", json=none_kept, headers=auth_a)
    assert client.get(f"/v1/models/{model}/versions/2", headers=auth_a).json()["heldout_size"] == 0
    assert again.status_code == 202
