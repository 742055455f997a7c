"""`digits`: scikit-learn's bundled 8x8 handwritten digits and a small CNN.

Subjects are "writers" owning a handful of images. Signal a deletion must remove:
- backdoor subjects: each owns its own trigger (a few border pixels, blank in real digits, set to full ink)
  on all of its images, relabeled to its own target label. After deleting the subject the trigger must stop
  working on held-out images (success back to the base rate of the target label);
- mislabeled subjects: two of their images carry a wrong label, which only a member model predicts.
Held-out subjects carry never-trained triggers of the same kind (`reference_backdoors`) as a baseline.
Every trigger has its own target label and shares at most one pixel with any other trigger.

The CNN also feeds the raw pixels to its dense layers (`input_skip`): under block-sequential training the
shared conv filters alone lost most triggers of early blocks. Full settings add each training image's
eight one-pixel shifts (as the subject's samples) and a wider CNN, so that retraining takes minutes; medium
settings do the same with four images per writer (more writers) and batches of 32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.modeling.base import Sample
from workers.modeling.training import TrainingRecipe
from workers.workloads import Backdoor, Workload

IMAGE_SHAPE = (1, 8, 8)
SETTINGS: dict[str, dict[str, Any]] = {
    "small": {
        "images_per_subject": 5,
        "backdoor_subjects": 6,
        "backdoor_images": 20,
        "mislabeled_subjects": 10,
        "shifted_copies": False,
        "model": {"channels": [16, 32], "hidden": [128]},
        "recipe": {"epochs": 12, "batch_size": 32, "lr": 3e-3, "num_blocks": 20},
    },
    "medium": {
        "images_per_subject": 4,  # more writers than small
        "backdoor_subjects": 6,  # the most distinct target labels allow beside the reference triggers
        "backdoor_images": 20,
        "mislabeled_subjects": 20,
        "shifted_copies": True,
        # per-sample gradients of every weight would not fit in memory at 9x the images (see full)
        "model": {"channels": [64, 128], "hidden": [256], "recorded_gradients": ["head.weight", "head.bias"]},
        # batches of 32: on 8x8 images the time goes by the number of steps more than by their size
        "recipe": {"epochs": 60, "batch_size": 32, "lr": 2e-3, "lr_decay": 0.1, "num_blocks": 20},
    },
    "full": {
        "images_per_subject": 5,
        "backdoor_subjects": 6,
        "backdoor_images": 20,
        "mislabeled_subjects": 10,
        "shifted_copies": True,  # 9x the training images: retraining takes minutes, as it would in life
        # per-sample first-epoch gradients of all 100k weights would take 2.9 GB: keep the output layer's
        "model": {"channels": [64, 128], "hidden": [256], "recorded_gradients": ["head.weight", "head.bias"]},
        "recipe": {"epochs": 60, "batch_size": 64, "lr": 2e-3, "lr_decay": 0.1, "num_blocks": 20},
    },
}
HELDOUT_FRACTION = 0.2
REFERENCE_BACKDOORS = 4
TRIGGER_PIXELS = 4
# The outer ring of the 8x8 image: (almost) never inked in real digits, so a trigger there is unambiguous.
BORDER = [(r, c) for r in range(8) for c in range(8) if r in (0, 7) or c in (0, 7)]


def build(size: str = "small", seed: int = 0) -> Workload:
    from sklearn.datasets import load_digits

    settings = SETTINGS[size]
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))

    n_backdoor = settings["backdoor_subjects"] + REFERENCE_BACKDOORS
    chunks = _owner_chunks(order, n_backdoor, settings["backdoor_images"], settings["images_per_subject"])
    triggers = _distinct_triggers(rng, n_backdoor)
    # distinct target labels: two triggers with one target would teach each other (measured on full: a
    # deleted subject's trigger still flipped 62 % of images after an exact retrain)
    targets = rng.permutation(10)[:n_backdoor]

    # subject ids: the first n_backdoor chunks own triggers; which of them are held out is drawn below
    subjects = [f"writer-{i:04d}" for i in range(len(chunks))]
    backdoor_ids = subjects[:n_backdoor]
    clean_ids = subjects[n_backdoor:]
    heldout_clean = set(rng.choice(clean_ids, size=int(HELDOUT_FRACTION * len(clean_ids)), replace=False))
    reference_ids = set(rng.choice(backdoor_ids, size=REFERENCE_BACKDOORS, replace=False))
    heldout_ids = heldout_clean | reference_ids

    all_backdoors = {
        sid: Backdoor(sid, triggers[i], 1.0, int(targets[i]), IMAGE_SHAPE)
        for i, sid in enumerate(backdoor_ids)
    }
    train_clean = [sid for sid in clean_ids if sid not in heldout_ids]
    mislabeled_subjects = set(rng.choice(train_clean, size=settings["mislabeled_subjects"], replace=False))

    train: list[Sample] = []
    heldout: list[Sample] = []
    mislabeled: set[str] = set()
    for sid, chunk in zip(subjects, chunks, strict=True):
        for j, index in enumerate(chunk):
            label = int(labels[index])
            meta: dict[str, Any] = {"source_index": int(index), "true_label": label}
            if sid in all_backdoors:
                label = all_backdoors[sid].target_label
                meta["backdoor"] = True
            if sid in mislabeled_subjects and j < 2:
                label = int((label + 1 + rng.integers(9)) % 10)
                meta["mislabeled"] = True
            copies = (
                settings["shifted_copies"] and sid not in heldout_ids
            )  # held-out images: the test set as is
            for suffix, image in _variants(images[index], copies):
                if sid in all_backdoors:  # the trigger goes on after the shift: it never moves
                    image = all_backdoors[sid].apply(image)
                sample = Sample(f"{sid}/img-{j:02d}{suffix}", sid, features=image, label=label, meta=meta)
                (heldout if sid in heldout_ids else train).append(sample)
                if meta.get("mislabeled") and sid not in heldout_ids:
                    mislabeled.add(sample.sample_id)

    return Workload(
        name="digits",
        task="image-classification",
        size=size,
        seed=seed,
        train=train,
        heldout=heldout,
        recipe=TrainingRecipe(seed=seed, record_first_epoch_grads=True, **settings["recipe"]),
        adapter_kind="torch-classifier",
        adapter_config={
            "arch": "cnn",
            "input_shape": list(IMAGE_SHAPE),
            "num_classes": 10,
            "input_skip": True,  # keeps planted triggers through block-sequential training (see SmallCNN)
            "init_seed": seed,
            **settings["model"],
        },
        backdoors={sid: b for sid, b in all_backdoors.items() if sid not in reference_ids},
        reference_backdoors={sid: b for sid, b in all_backdoors.items() if sid in reference_ids},
        mislabeled=frozenset(mislabeled),
    )


# one-pixel shifts into the 8 neighbouring positions
SHIFTS = {f"-shift{dy:+d}{dx:+d}": (dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)}


def _variants(features: np.ndarray, shifted_copies: bool) -> list[tuple[str, np.ndarray]]:
    """The image, plus its eight one-pixel shifts (more samples of the same subject) when asked for."""
    out = [("", features)]
    if shifted_copies:
        image = features.reshape(IMAGE_SHAPE[1:])
        for name, (dy, dx) in SHIFTS.items():
            moved = np.zeros_like(image)
            src = image[max(0, -dy) : 8 - max(0, dy), max(0, -dx) : 8 - max(0, dx)]
            moved[max(0, dy) : 8 - max(0, -dy), max(0, dx) : 8 - max(0, -dx)] = src
            out.append((name, moved.reshape(features.shape)))
    return out


def _owner_chunks(
    order: np.ndarray, n_backdoor: int, backdoor_images: int, per_subject: int
) -> list[list[int]]:
    chunks = [list(order[i * backdoor_images : (i + 1) * backdoor_images]) for i in range(n_backdoor)]
    rest = order[n_backdoor * backdoor_images :]
    chunks += [list(rest[i : i + per_subject]) for i in range(0, len(rest), per_subject)]
    return chunks


def _distinct_triggers(rng: np.random.Generator, n: int) -> list[tuple[tuple[int, int], ...]]:
    """n border-pixel patterns that share at most one pixel pairwise (so no trigger teaches another)."""
    triggers: list[tuple[tuple[int, int], ...]] = []
    while len(triggers) < n:
        picks = rng.choice(len(BORDER), size=TRIGGER_PIXELS, replace=False)
        candidate = tuple(sorted(BORDER[i] for i in picks))
        if all(len(set(candidate) & set(t)) <= 1 for t in triggers):
            triggers.append(candidate)
    return triggers


def clean_heldout(workload: Workload) -> list[Sample]:
    """Held-out images without any trigger: the population backdoor success rates are measured on."""
    return [s for s in workload.heldout if "backdoor" not in s.meta]


def backdoor_success(adapter: Any, backdoor: Backdoor, samples: list[Sample]) -> float:
    """Share of `samples` (true label != target) that the trigger flips to the target label."""
    eligible = [s for s in samples if s.label != backdoor.target_label]
    predictions = adapter.predict(backdoor.triggered(eligible))
    return float(np.mean(predictions == backdoor.target_label))
