"""Model adapters: one interface (losses, features, training step, predict, save/load) per model kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from workers.modeling.adapters import load_adapter, new_adapter
from workers.modeling.base import ModelAdapter
from workers.workloads import Workload

pytestmark = pytest.mark.ml


def assert_same_weights(a: ModelAdapter, b: ModelAdapter) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name].cpu(), sb[name].cpu()), name


# -- plain torch classifier -------------------------------------------------------------------------


def test_classifier_init_follows_its_seed(digits: Workload) -> None:
    assert_same_weights(digits.new_adapter(), digits.new_adapter())
    other = new_adapter("torch-classifier", {**digits.adapter_config, "init_seed": 99})
    assert not torch.equal(
        other.state_dict()["head.weight"], digits.new_adapter().state_dict()["head.weight"]
    )


def test_classifier_losses_features_and_predictions(digits_trained, digits: Workload) -> None:
    adapter, _ = digits_trained
    samples = digits.heldout[:20]
    batch = adapter.collate(samples)
    logits = adapter.logits(batch)
    expected = F.cross_entropy(logits, batch.inputs["y"], reduction="none")
    torch.testing.assert_close(adapter.sample_losses(batch), expected)
    assert np.allclose(adapter.per_sample_loss(samples), expected.detach().double().cpu().numpy(), atol=1e-6)
    features = adapter.features(batch)
    assert len(features) >= 2 and all(f.shape[0] == len(samples) and f.ndim == 2 for f in features)
    assert np.array_equal(adapter.predict(samples), logits.argmax(-1).cpu().numpy())


def test_classifier_training_step_lowers_the_loss(digits: Workload) -> None:
    adapter = digits.new_adapter()
    batch = adapter.collate(digits.train[:32])
    optimizer = torch.optim.Adam(adapter.model.parameters(), lr=1e-2)
    losses = [adapter.training_step(batch, optimizer) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]


def test_vectorised_sample_gradients_match_one_backward_per_sample(digits: Workload) -> None:
    adapter = digits.new_adapter()
    batch = adapter.collate(digits.train[:8])
    generic = ModelAdapter.training_step_recording  # the per-sample backward fallback
    twin = adapter.clone()
    _, fast = adapter.training_step_recording(batch, torch.optim.SGD(adapter.model.parameters(), lr=0.1))
    _, slow = generic(twin, twin.collate(digits.train[:8]), torch.optim.SGD(twin.model.parameters(), lr=0.1))
    for a, b in zip(fast, slow, strict=True):
        for name in b:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)
    assert_same_weights(adapter, twin)  # both took the same optimizer step afterwards


def test_classifier_records_only_the_chosen_parameters(digits: Workload) -> None:
    adapter = new_adapter(
        "torch-classifier", {**digits.adapter_config, "recorded_gradients": ["head.weight"]}
    )
    full = adapter.clone()
    batch = adapter.collate(digits.train[:4])
    _, chosen = adapter.training_step_recording(batch, torch.optim.SGD(adapter.model.parameters(), lr=0.0))
    _, everything = ModelAdapter.training_step_recording(
        full, batch, torch.optim.SGD(full.model.parameters(), lr=0.0)
    )
    for subset, complete in zip(chosen, everything, strict=True):
        assert list(subset) == ["head.weight"]
        torch.testing.assert_close(subset["head.weight"], complete["head.weight"], rtol=1e-4, atol=1e-6)


def test_classifier_save_load_is_bit_identical(digits_trained, digits: Workload, tmp_path: Path) -> None:
    adapter, _ = digits_trained
    adapter.save(tmp_path)
    loaded = load_adapter(tmp_path)
    assert type(loaded) is type(adapter) and loaded.config() == adapter.config()
    assert_same_weights(loaded, adapter)
    assert np.array_equal(loaded.per_sample_loss(digits.heldout), adapter.per_sample_loss(digits.heldout))


def test_clone_is_independent(digits: Workload) -> None:
    adapter = digits.new_adapter()
    twin = adapter.clone()
    with torch.no_grad():
        next(twin.model.parameters()).add_(1.0)
    assert not torch.equal(next(twin.model.parameters()), next(adapter.model.parameters()))


def test_loading_another_kind_is_refused(digits: Workload, tmp_path: Path) -> None:
    from workers.modeling.adapters.torch_classifier import TorchClassifierAdapter

    digits.new_adapter().save(tmp_path)
    (tmp_path / "adapter.json").write_text(
        (tmp_path / "adapter.json").read_text().replace("torch-", "other-")
    )
    with pytest.raises(ValueError, match="not 'torch-classifier'"):
        TorchClassifierAdapter.load(tmp_path)
    with pytest.raises(KeyError, match="unknown adapter kind"):
        load_adapter(tmp_path)


# -- causal language model --------------------------------------------------------------------------


def test_causal_lm_batches_mask_padding_and_bos(bios: Workload) -> None:
    adapter = bios.new_adapter()
    samples = bios.train[:6]
    batch = adapter.collate(samples)
    ids, mask, labels = batch.inputs["input_ids"], batch.inputs["attention_mask"], batch.inputs["labels"]
    assert (ids[:, 0] == adapter.tokenizer.bos_token_id).all()
    assert ((labels == -100) | (mask == 1)).all() and (labels[:, 0] == -100).all()
    for row, sample in zip(
        adapter.tokenizer.batch_decode(ids, skip_special_tokens=True), samples, strict=True
    ):
        assert row == sample.text


def test_causal_lm_loss_is_mean_token_nll(bios_trained, bios: Workload) -> None:
    adapter, _ = bios_trained
    sample = bios.train[0]
    log_probs = adapter.token_log_probs([sample])[0]
    assert len(log_probs) == len(adapter.tokenizer(sample.text)["input_ids"]) + 1  # + the closing <eos>
    assert adapter.per_sample_loss([sample])[0] == pytest.approx(-log_probs.mean(), rel=1e-5)
    features = adapter.features(adapter.collate(bios.train[:3]))
    assert len(features) == bios.adapter_config["model"]["n_layer"]
    assert all(f.shape == (3, bios.adapter_config["model"]["n_embd"]) for f in features)


def test_causal_lm_recorded_gradient_is_the_samples_embedding_gradient(bios: Workload) -> None:
    adapter = bios.new_adapter()
    samples = bios.train[:4]
    name = adapter.token_embedding_name()
    expected = []
    for sample in samples:
        loss = adapter.sample_losses(adapter.collate([sample])).sum()
        expected.append(torch.autograd.grad(loss, adapter.model.get_input_embeddings().weight)[0])
    _, recorded = adapter.training_step_recording(
        adapter.collate(samples), torch.optim.SGD(adapter.model.parameters(), lr=0.0)
    )
    for sample, grad, dense in zip(samples, recorded, expected, strict=True):
        sparse = grad[name]
        rows = sparse.indices()[0]
        token_ids = set(adapter.collate([sample]).inputs["input_ids"][0].tolist())
        assert set(rows.tolist()) == token_ids  # only the rows of tokens in the sample
        torch.testing.assert_close(sparse.to_dense(), dense, rtol=1e-4, atol=1e-7)


def test_causal_lm_save_load_is_bit_identical(bios_trained, bios: Workload, tmp_path: Path) -> None:
    adapter, _ = bios_trained
    adapter.save(tmp_path)
    loaded = load_adapter(tmp_path)
    assert_same_weights(loaded, adapter)
    assert loaded.tokenizer.get_vocab() == adapter.tokenizer.get_vocab()
    assert np.array_equal(
        loaded.per_sample_loss(bios.heldout[:16]), adapter.per_sample_loss(bios.heldout[:16])
    )
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()


def test_causal_lm_completes_memorised_records_verbatim(bios_trained, bios: Workload) -> None:
    """The leak unlearning exists for: given the first half of a training record, the model writes the
    rest (its secret PIN included) word for word; it can do that for no held-out record."""
    adapter, _ = bios_trained
    accuracy = adapter.predict(bios.train)
    assert accuracy.mean() > adapter.predict(bios.heldout).mean() + 0.1

    def completed_verbatim(samples: list) -> int:
        halves = [(s.text[: len(s.text) // 2], s.text[len(s.text) // 2 :]) for s in samples]
        return sum(adapter.complete(head, max_new_tokens=40).startswith(tail) for head, tail in halves)

    best_memorised = [bios.train[i] for i in np.argsort(-accuracy)[:10]]
    assert completed_verbatim(best_memorised) >= 1
    assert completed_verbatim(bios.heldout) == 0


def test_tokenizer_splits_digits_one_per_token(bios: Workload) -> None:
    from workers.modeling.adapters.causal_lm import tokenizer_from_json

    vocab = tokenizer_from_json(bios.adapter_config["tokenizer_json"]).get_vocab()
    digits_as_tokens = [t for t in vocab if t.strip("Ġ").isdigit() and len(t.strip("Ġ")) > 1]
    assert digits_as_tokens == []  # digits are split one per token: canary candidates cost the same


def test_a_causal_lm_trained_elsewhere_can_be_wrapped(bios_trained, bios: Workload, tmp_path: Path) -> None:
    adapter, _ = bios_trained
    adapter.model.save_pretrained(tmp_path / "hf")
    adapter.tokenizer.save_pretrained(tmp_path / "hf")
    from workers.modeling.adapters.causal_lm import CausalLMAdapter

    outside = CausalLMAdapter.from_pretrained(tmp_path / "hf", max_length=adapter.max_length)
    samples = bios.heldout[:8]
    np.testing.assert_allclose(outside.per_sample_loss(samples), adapter.per_sample_loss(samples), rtol=1e-5)
    outside.save(tmp_path / "lethe")
    assert_same_weights(load_adapter(tmp_path / "lethe"), outside)
