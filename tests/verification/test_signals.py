"""Per-sample signals: LiRA's confidence, greedy decoding read off teacher forcing, token-level LM stats."""

from __future__ import annotations

import numpy as np
import pytest

from workers.verification.signals import classifier_confidence, continuation, extraction_strength, min_k_score

pytestmark = pytest.mark.ml


def test_classifier_confidence_is_the_logit_of_the_true_class_probability() -> None:
    p = np.array([0.5, 0.9, 0.999999, 1e-6])
    assert classifier_confidence(-np.log(p)) == pytest.approx(np.log(p) - np.log1p(-p), rel=1e-6)


def test_extraction_strength_and_continuation_from_argmax_hits() -> None:
    hits = np.array([False, True, False, True, True, True, True, True])
    assert extraction_strength(hits) == pytest.approx(1 - 3 / 8)  # a 3-token prefix suffices
    assert extraction_strength(np.ones(4, bool)) == 1.0
    assert extraction_strength(np.array([True, False])) == 0.0
    verbatim, matched = continuation(hits)
    assert verbatim == 1.0 and matched == 1.0
    verbatim, matched = continuation(np.array([True, True, True, True, True, False, True, True]))
    assert verbatim == 0.0 and matched == pytest.approx(1 / 4)


def test_min_k_averages_the_least_likely_tokens() -> None:
    logprobs = np.log(np.array([0.9, 0.8, 0.01, 0.5, 0.7]))
    assert min_k_score(logprobs, 0.2) == pytest.approx(np.log(0.01))
    assert min_k_score(logprobs, 0.4) == pytest.approx((np.log(0.01) + np.log(0.5)) / 2)


def test_language_model_signals_agree_with_the_adapter_and_with_greedy_decoding(bios, bios_trained) -> None:
    from workers.verification.signals import lm_token_arrays, model_signals

    served, _ = bios_trained
    samples = bios.train[:6]
    signals = model_signals(served, samples)
    assert signals["loss"] == pytest.approx(served.per_sample_loss(samples), abs=1e-5)
    assert signals["exact_memorization"] == pytest.approx(served.predict(samples), abs=1e-6)
    # greedy decoding from the shortest prefix that extraction strength names reproduces the rest verbatim
    import torch

    for sample in samples:
        arrays = lm_token_arrays(served, [sample])[0]
        ids = served.collate([sample]).inputs["input_ids"][0]
        n = arrays.hits.size  # targets: every token after <bos>
        shortest = n - round(extraction_strength(arrays.hits) * n)
        if shortest == n:
            continue
        with torch.no_grad():
            generated = served.model.generate(
                ids[None, : shortest + 1],
                attention_mask=torch.ones_like(ids[None, : shortest + 1]),
                max_new_tokens=n - shortest,
                do_sample=False,
                pad_token_id=served.tokenizer.pad_token_id,
            )
        assert torch.equal(generated[0, : n + 1], ids[: n + 1])
