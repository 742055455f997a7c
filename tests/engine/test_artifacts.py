"""Artifact store: content-addressed versions, checksums verified on load, bit-exact round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.modeling.artifacts import ArtifactCorrupted, ArtifactStore, VersionNotFound, content_id
from workers.workloads import Workload

pytestmark = pytest.mark.ml


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name].cpu(), sb[name].cpu()), name


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(tmp_path / "store")
    return ArtifactStore(f"memory://lethe-test-{tmp_path.name}")  # any fsspec URL works the same way


def test_a_version_round_trips_bit_for_bit(store: ArtifactStore, digits_trained, digits: Workload) -> None:
    adapter, record = digits_trained
    manifest = store.put(
        adapter, training_fingerprint=record.fingerprint, method="train", metrics={"test_accuracy": 0.95}
    )
    loaded, read_back = store.load(manifest.version_id)
    assert_same_weights(loaded, adapter)
    assert (loaded.per_sample_loss(digits.heldout) == adapter.per_sample_loss(digits.heldout)).all()
    assert read_back == manifest
    assert read_back.training_fingerprint == record.fingerprint
    assert read_back.adapter_kind == "torch-classifier" and read_back.adapter_config == adapter.config()
    assert store.versions() == [manifest.version_id]


def test_the_id_is_the_content(store: ArtifactStore, digits: Workload) -> None:
    first = store.put(digits.new_adapter(), method="train")
    again = store.put(digits.new_adapter(), method="something else")
    assert again.version_id == first.version_id and again.method == "train"
    assert first.version_id == content_id(first.files)
    changed = digits.new_adapter()
    with torch.no_grad():
        changed.model.head.bias.add_(1e-6)
    assert store.put(changed).version_id != first.version_id


def test_a_child_names_its_parent_and_method(store: ArtifactStore, digits: Workload) -> None:
    parent = store.put(digits.new_adapter(), method="train")
    child_model = digits.new_adapter()
    with torch.no_grad():
        child_model.model.head.weight.mul_(0.5)
    child = store.put(child_model, parent=parent.version_id, method="retrain", metrics={"forget_loss": 2.5})
    assert store.manifest(child.version_id).parent == parent.version_id
    assert store.manifest(child.version_id).method == "retrain"
    store.update_metrics(child.version_id, {"gate": "pass"})
    assert store.manifest(child.version_id).metrics == {"forget_loss": 2.5, "gate": "pass"}


def test_a_tampered_file_is_refused(tmp_path: Path, digits: Workload) -> None:
    store = ArtifactStore(tmp_path)
    manifest = store.put(digits.new_adapter())
    weights = tmp_path / "versions" / manifest.version_id / "files" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupted, match="model.safetensors"):
        store.load(manifest.version_id)


def test_deleted_and_unknown_versions(store: ArtifactStore, digits: Workload) -> None:
    manifest = store.put(digits.new_adapter())
    store.delete(manifest.version_id)
    assert not store.exists(manifest.version_id) and store.versions() == []
    with pytest.raises(VersionNotFound):
        store.load(manifest.version_id)
    with pytest.raises(VersionNotFound):
        store.delete("0" * 64)
