"""Which samples sit in which block, and the order each (block, epoch) visits them in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from workers.modeling.base import Sample
from workers.modeling.training.determinism import derive_seed


def subject_aligned_blocks(samples: Sequence[Sample], num_blocks: int, seed: int) -> list[list[Sample]]:
    """Split samples into `num_blocks` blocks, each subject's samples in exactly one block.

    Subjects are shuffled by the seed and grouped by their most common label (classifiers; one group for
    language models); each subject goes to the block holding the fewest samples of its group, then the
    fewest samples overall. So blocks are balanced in size and, as far as whole subjects allow, in labels:
    with unstratified small blocks the classifier drifted towards the last block's labels (measured on
    minilm: 0.59 held-out accuracy). Within a block samples keep their input order (epochs reshuffle).
    """
    by_subject: dict[str, list[Sample]] = {}
    for sample in samples:
        by_subject.setdefault(sample.subject, []).append(sample)
    subjects = sorted(by_subject)
    rng = np.random.default_rng(derive_seed(seed, "blocks"))
    shuffled = [subjects[i] for i in rng.permutation(len(subjects))]
    groups: dict[str, list[str]] = {}
    for subject in shuffled:
        groups.setdefault(_majority_label(by_subject[subject]), []).append(subject)
    blocks: list[list[Sample]] = [[] for _ in range(max(1, num_blocks))]
    for group in sorted(groups):
        in_group = [0] * len(blocks)
        for subject in groups[group]:
            target = min(range(len(blocks)), key=lambda b: (in_group[b], len(blocks[b]), b))
            blocks[target].extend(by_subject[subject])
            in_group[target] += len(by_subject[subject])
    return blocks


def _majority_label(samples: Sequence[Sample]) -> str:
    labels = [s.label for s in samples if s.label is not None]
    if not labels:
        return ""
    values, counts = np.unique(labels, return_counts=True)
    return str(values[int(np.argmax(counts))])


def epoch_order(block: Sequence[Sample], seed: int, block_index: int, epoch: int) -> list[Sample]:
    """The order block `block_index` is visited in at `epoch`.

    Sorting by id first makes the order a function of which samples the block holds (not of how the caller
    listed them), so the original run, a restart and a retrain visit a given block content identically.
    """
    ordered = sorted(block, key=lambda s: s.sample_id)
    rng = np.random.default_rng(derive_seed(seed, "order", block_index, epoch))
    return [ordered[i] for i in rng.permutation(len(ordered))]
