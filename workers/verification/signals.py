"""Per-sample signals of one model, computed in one pass and shared by every check.

Classifiers: loss and the logit-scaled confidence phi = log p_y - log sum_{y' != y} p_y' (LiRA's signal;
it is a function of the cross-entropy loss alone, so the adapter's per-sample loss suffices), and whether
the prediction is right. Language models: one teacher-forced forward pass yields every token's log-prob of
the true next token and whether the argmax hit it; the mean token loss, Min-K %, zlib ratio, exact
memorization, extraction strength and greedy continuation all derive from those two arrays.

Why teacher forcing gives greedy decoding exactly: if greedy decoding has reproduced the text up to
position i, its context IS the true prefix, so it emits the next true token iff the teacher-forced argmax
at i is that token. Greedy decoding from a prefix of length L reproduces the rest iff every position >= L
is an argmax hit, so the shortest such prefix is one past the last miss: no generation loop needed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.modeling.base import ModelAdapter, Sample
from workers.unlearning.common import is_language_model

IGNORE_INDEX = -100  # label value the language-model adapters use for positions that carry no target
MIN_K_SHARES = (0.2, 0.4)
CONTINUATION_PREFIX_SHARE = 0.5  # forget prefixes: the first half of a record, continued greedily


@dataclass
class TokenArrays:
    """Targets of one sample: log-prob of each true next token and whether the argmax predicted it."""

    logprobs: np.ndarray
    hits: np.ndarray


def classifier_confidence(losses: np.ndarray) -> np.ndarray:
    """phi = log p_y - log(1 - p_y) with p_y = exp(-loss), stable for losses near 0 and large ones."""
    loss = np.clip(np.asarray(losses, float), 1e-12, None)
    return -loss - np.log(-np.expm1(-loss))


def lm_token_arrays(
    adapter: ModelAdapter, samples: Sequence[Sample], batch_size: int = 32
) -> list[TokenArrays]:
    import torch

    out: list[TokenArrays] = []
    was_training = adapter.model.training
    adapter.model.eval()
    with torch.no_grad():
        for batch in adapter.batches(samples, batch_size):
            inputs = batch.inputs
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
            labels = inputs.get("labels")
            if labels is None:
                labels = ids.masked_fill(mask == 0, IGNORE_INDEX) if mask is not None else ids
            logits = adapter.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = labels[:, 1:]
            valid = targets != IGNORE_INDEX
            safe = targets.clamp(min=0)
            logp = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
            hits = logits.argmax(dim=-1) == safe
            for row in range(ids.shape[0]):
                keep = valid[row]
                out.append(TokenArrays(logp[row][keep].double().cpu().numpy(), hits[row][keep].cpu().numpy()))
    adapter.model.train(was_training)
    return out


def min_k_score(logprobs: np.ndarray, share: float) -> float:
    """Mean of the lowest `share` of token log-probs (Min-K %): members lack very unlikely tokens."""
    if logprobs.size == 0:
        return float("nan")
    k = max(1, int(np.ceil(share * logprobs.size)))
    return float(np.sort(logprobs)[:k].mean())


def extraction_strength(hits: np.ndarray) -> float:
    """1 - (shortest prefix share from which greedy decoding reproduces the rest); 0 if none does."""
    n = hits.size
    if n == 0:
        return float("nan")
    misses = np.flatnonzero(~hits)
    shortest_prefix = 0 if misses.size == 0 else int(misses[-1]) + 1
    return 1.0 - shortest_prefix / n


def continuation(hits: np.ndarray, prefix_share: float = CONTINUATION_PREFIX_SHARE) -> tuple[float, float]:
    """Greedy continuation of the record's first part: (reproduced verbatim 0/1, share matched before the
    first divergence)."""
    n = hits.size
    start = int(np.floor(prefix_share * n))
    rest = hits[start:]
    if rest.size == 0:
        return float("nan"), float("nan")
    first_miss = np.flatnonzero(~rest)
    run = rest.size if first_miss.size == 0 else int(first_miss[0])
    return float(run == rest.size), run / rest.size


def zlib_length(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def model_signals(
    adapter: ModelAdapter, samples: Sequence[Sample], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Every per-sample signal of `adapter` on `samples`, as arrays aligned with `samples`."""
    if not samples:
        return {}
    if is_language_model(adapter):
        return _lm_signals(adapter, samples, batch_size)
    labels = np.array([s.label for s in samples])
    if hasattr(adapter, "predict_proba"):  # one pass: cross-entropy is -log p_y
        proba = adapter.predict_proba(samples, batch_size)
        loss = -np.log(np.clip(proba[np.arange(len(samples)), labels], 1e-300, None))
        predicted = proba.argmax(axis=1)
    else:
        loss, predicted = adapter.per_sample_loss(samples, batch_size), adapter.predict(samples, batch_size)
    return {"loss": loss, "phi": classifier_confidence(loss), "correct": (predicted == labels).astype(float)}


def loss_and_correct(
    adapter: ModelAdapter, samples: Sequence[Sample], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Per-sample loss and (classifiers) whether the prediction is right, NaN for language models: what the
    gate's reference models are scored on, in one pass."""
    if not samples:
        return {"loss": np.zeros(0), "correct": np.zeros(0)}
    if is_language_model(adapter):
        loss = adapter.per_sample_loss(samples, batch_size)
        return {"loss": np.asarray(loss, float), "correct": np.full(len(samples), np.nan)}
    signals = model_signals(adapter, samples, batch_size)
    return {"loss": signals["loss"], "correct": signals["correct"]}


def _lm_signals(adapter: ModelAdapter, samples: Sequence[Sample], batch_size: int) -> dict[str, np.ndarray]:
    arrays = lm_token_arrays(adapter, samples, batch_size)
    loss = np.array([-a.logprobs.mean() if a.logprobs.size else np.nan for a in arrays])
    cont = np.array([continuation(a.hits) for a in arrays]).reshape(-1, 2)
    signals = {
        "loss": loss,
        "nll_sum": np.array([-a.logprobs.sum() for a in arrays]),
        "n_tokens": np.array([a.logprobs.size for a in arrays], float),
        "zlib_ratio": loss / np.array([max(1, zlib_length(s.text or "")) for s in samples], float),
        "exact_memorization": np.array([a.hits.mean() if a.hits.size else np.nan for a in arrays]),
        "extraction_strength": np.array([extraction_strength(a.hits) for a in arrays]),
        "continuation_verbatim": cont[:, 0],
        "continuation_match": cont[:, 1],
    }
    for share in MIN_K_SHARES:
        signals[f"min_k_{int(share * 100)}"] = np.array([min_k_score(a.logprobs, share) for a in arrays])
    return signals


def sequence_nll(adapter: ModelAdapter, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """-log P(text) summed over its tokens, for scoring same-template canary candidates against each other."""
    samples = [Sample(sample_id=f"probe-{i}", subject="", text=t) for i, t in enumerate(texts)]
    return np.array([-a.logprobs.sum() for a in lm_token_arrays(adapter, samples, batch_size)])
