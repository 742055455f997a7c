"""Models in their owners' formats: Hugging Face save_pretrained folders (causal LMs, sequence classifiers
with their trained heads), torch classifiers as safetensors + classifier.json, loaded, trained with
provenance (full or LoRA fine-tuning), saved back in the same format, and checked against their sha256."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny_models import save_distilbert_classifier, save_gpt2, save_torch_classifier, sequential_mlp
from workers.modeling.adapters.hf import HFCausalLMAdapter, HFSequenceClassifierAdapter
from workers.modeling.adapters.torch_classifier import TorchClassifierAdapter
from workers.modeling.artifacts import ArtifactCorrupted, content_id, directory_checksums
from workers.modeling.base import Sample
from workers.modeling.formats import load_folder, local_folder
from workers.modeling.training import TrainingRecipe, retrain_without, train_with_provenance

pytestmark = pytest.mark.ml

TEXTS = [f"{name} reported problem {n} with the {thing}" for n, name in enumerate(["ann", "bo", "cy", "di"])
         for thing in ("router", "invoice")]  # fmt: skip
LABELS = ["billing", "technical"]


def text_samples(with_labels: bool) -> list[Sample]:
    return [
        Sample(f"s{i}", f"subject-{i // 2}", text=text, label=(i % 2) if with_labels else None)
        for i, text in enumerate(TEXTS)
    ]


@pytest.fixture
def gpt2_folder(tmp_path: Path) -> Path:
    save_gpt2(tmp_path / "gpt2", TEXTS, seed=5)
    return tmp_path / "gpt2"


@pytest.fixture
def distilbert_folder(tmp_path: Path) -> Path:
    save_distilbert_classifier(tmp_path / "distilbert", TEXTS, LABELS, seed=3)
    return tmp_path / "distilbert"


def test_a_causal_lm_folder_loads_and_saves_back_as_a_save_pretrained_folder(gpt2_folder, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    adapter = load_folder(gpt2_folder)
    samples = text_samples(with_labels=False)
    assert isinstance(adapter, HFCausalLMAdapter)
    losses = adapter.per_sample_loss(samples)
    adapter.save(tmp_path / "saved")

    again = load_folder(tmp_path / "saved")
    assert np.array_equal(again.per_sample_loss(samples), losses)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    for name, tensor in AutoModelForCausalLM.from_pretrained(gpt2_folder).state_dict().items():
        assert torch.equal(reference.state_dict()[name], tensor), name
    # a rebuild of a registered model starts from a fresh initialisation, never from the weights to forget
    rebuilt = type(adapter).from_config(adapter.config())
    assert not np.allclose(rebuilt.per_sample_loss(samples), losses)


def test_a_sequence_classifier_keeps_its_trained_head(distilbert_folder) -> None:
    from transformers import AutoModelForSequenceClassification

    adapter = load_folder(distilbert_folder)
    owners = AutoModelForSequenceClassification.from_pretrained(distilbert_folder).eval()
    samples = text_samples(with_labels=True)
    batch = adapter.collate(samples)
    with torch.no_grad():
        expected = owners(
            input_ids=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"]
        ).logits
    assert isinstance(adapter, HFSequenceClassifierAdapter)
    probabilities = adapter.predict_proba(samples)
    assert np.allclose(probabilities, torch.softmax(expected, -1).numpy(), atol=1e-6)
    assert [tuple(f.shape) for f in adapter.features(batch)] == [(len(samples), 32)] * 2  # one per layer


@pytest.mark.parametrize("fine_tuning", ["full", "lora"])
def test_fine_tuning_from_a_base_records_provenance_and_retrains_exactly(
    distilbert_folder, tmp_path, fine_tuning
) -> None:
    sha256 = content_id(directory_checksums(distilbert_folder))
    config = {"base": {"uri": str(distilbert_folder), "sha256": sha256}, "from_scratch": False,
              "lora": {"r": 4} if fine_tuning == "lora" else None, "max_length": 32}  # fmt: skip
    adapter = HFSequenceClassifierAdapter.from_config(config)
    samples = text_samples(with_labels=True)
    recipe = TrainingRecipe(epochs=2, batch_size=4, lr=5e-3, num_blocks=2, record_first_epoch_grads=True)
    frozen = {n for n, p in adapter.model.named_parameters() if not p.requires_grad}
    assert bool(frozen) == (fine_tuning == "lora")

    record = train_with_provenance(adapter, samples, recipe, tmp_path / "run")

    assert record.has_checkpoints and record.has_first_epoch_grads and record.num_blocks == 2
    gradient = record.first_epoch_gradient("s0")
    assert all(g.is_sparse for g in gradient.values())  # token-embedding rows of the sample's tokens
    adapter.save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["architectures"] == ["DistilBertForSequenceClassification"]
    loaded = load_folder(tmp_path / "saved")
    assert np.allclose(loaded.predict_proba(samples), adapter.predict_proba(samples), atol=1e-5)
    # exact unlearning replays the recorded run from the same base without the forgotten subject
    forget = [s.sample_id for s in samples if s.subject == "subject-0"]
    retrained, _ = retrain_without(record, samples, forget)
    again, _ = retrain_without(record, samples, forget)
    assert np.array_equal(retrained.predict_proba(samples), again.predict_proba(samples))
    assert not np.allclose(retrained.predict_proba(samples), adapter.predict_proba(samples))


def test_a_torch_classifier_saved_from_nn_sequential_loads_and_saves_back(tmp_path) -> None:
    owners = sequential_mlp(5, 7, 3, seed=1)
    save_torch_classifier(tmp_path / "mlp", owners, features=5, classes=3)
    adapter = load_folder(tmp_path / "mlp")
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    samples = [Sample(f"x{i}", "s", features=row, label=0) for i, row in enumerate(x)]

    assert isinstance(adapter, TorchClassifierAdapter) and adapter.config()["hidden"] == [7]
    with torch.no_grad():
        expected = torch.softmax(owners(torch.from_numpy(x)), -1).numpy()
    assert np.allclose(adapter.predict_proba(samples), expected, atol=1e-6)
    adapter.save(tmp_path / "saved")
    described = json.loads((tmp_path / "saved" / "classifier.json").read_text())
    assert described == {"architecture": "mlp", "input_shape": [5], "num_classes": 3, "hidden": [7]}
    (tmp_path / "saved" / "adapter.json").unlink()  # as a customer would keep it: no Lethe note
    assert np.allclose(load_folder(tmp_path / "saved").predict_proba(samples), expected, atol=1e-6)


def test_a_folder_whose_files_changed_is_refused(gpt2_folder) -> None:
    registered = content_id(directory_checksums(gpt2_folder))
    assert local_folder(str(gpt2_folder), registered) == gpt2_folder
    (gpt2_folder / "config.json").write_text((gpt2_folder / "config.json").read_text() + " ")
    with pytest.raises(ArtifactCorrupted, match="registered as"):
        local_folder(str(gpt2_folder), registered)


def test_the_pooled_encoder_adapter_takes_a_distilbert_base(distilbert_folder) -> None:
    """DistilBERT has no pooler: the encoder adapter used to fail with "unexpected keyword argument
    'add_pooling_layer'"; its layers sit under transformer.layer, not encoder.layer."""
    from workers.modeling.adapters.sequence_classifier import SequenceClassifierAdapter

    adapter = SequenceClassifierAdapter.from_config({"base_model": str(distilbert_folder), "num_layers": 1})
    samples = text_samples(with_labels=True)
    assert len(adapter.features(adapter.collate(samples))) == 1
    assert np.isfinite(adapter.per_sample_loss(samples)).all()
