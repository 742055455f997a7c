"""`bios`: fictitious people generated with Faker, memorised by a small GPT-2 trained from scratch.

Each person (a data subject) owns a few records: birth, work, contact, a short biography and question-answer
pairs. Canary subjects also own a secret PIN written in a fixed template ("{name}'s secret PIN is 48213.")
and asked back in a QA record; exposure ranks the true PIN among same-length candidates in that template.
Held-out people carry canaries too (`reference_canaries`): never trained, the baseline exposure.

The BPE tokenizer is trained on a separate crowd of Faker people (another seed), never on the subjects,
so the tokenizer holds nothing a deletion would have to remove.

Training: blocks are trained in sequence (DeepObliviate), and a block's people fade as later blocks train
over them. The learning rate therefore decays geometrically across blocks (to 5 % at the last block): with a
constant rate the people of early blocks were largely forgotten by the end (members' loss 3.1 against 4.6 for
held-out people, canary exposure 1-2 bits for most early canaries); with the decay members reach ~2.0
against ~3.5 and most canaries 6-10 bits of 10.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workers.modeling.adapters.causal_lm import train_bpe_tokenizer
from workers.modeling.base import Sample
from workers.modeling.training import TrainingRecipe
from workers.workloads import Canary, Workload

SETTINGS: dict[str, dict[str, Any]] = {
    "small": {
        "train_people": 40,
        "heldout_people": 20,
        "canaries": 10,
        "reference_canaries": 6,
        "canary_copies": 1,
        "vocab_size": 768,
        "model": {"n_layer": 2, "n_head": 4, "n_embd": 128, "n_inner": 256, "n_positions": 64},
        "max_length": 64,
        "recipe": {"epochs": 30, "batch_size": 16, "lr": 2e-3, "lr_decay": 0.05, "num_blocks": 10},
    },
    "medium": {
        "train_people": 110,
        "heldout_people": 55,
        "canaries": 16,
        "reference_canaries": 8,
        "canary_copies": 2,  # 20 blocks: one insertion fades (see full)
        "vocab_size": 1024,
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 192, "n_inner": 768, "n_positions": 64},
        "max_length": 64,
        "recipe": {"epochs": 30, "batch_size": 16, "lr": 2e-3, "lr_decay": 0.03, "num_blocks": 20},
    },
    "full": {
        "train_people": 120,
        "heldout_people": 60,
        "canaries": 20,
        "reference_canaries": 10,
        "canary_copies": 3,  # 20 sequential blocks wash a single insertion out
        "vocab_size": 1024,
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 192, "n_inner": 768, "n_positions": 64},
        "max_length": 64,
        "recipe": {"epochs": 40, "batch_size": 16, "lr": 3e-3, "lr_decay": 0.01, "num_blocks": 20},
    },
}
TOKENIZER_CROWD = 400  # people generated only to train the tokenizer
CANARY_TEMPLATE = "{name}'s secret PIN is {{secret}}."
HOBBIES = ("chess", "sailing", "pottery", "birdwatching", "jazz piano", "rock climbing", "baking", "cycling")
FIELDS = ("history", "physics", "economics", "nursing", "architecture", "music", "biology", "law")


def build(size: str = "small", seed: int = 0) -> Workload:
    settings = SETTINGS[size]
    n_train, n_heldout = settings["train_people"], settings["heldout_people"]
    people = _people(n_train + n_heldout, seed)
    rng = np.random.default_rng(seed)
    canary_people = set(rng.choice(n_train, size=settings["canaries"], replace=False).tolist())
    reference_people = set(
        (n_train + rng.choice(n_heldout, settings["reference_canaries"], replace=False)).tolist()
    )

    train: list[Sample] = []
    heldout: list[Sample] = []
    canaries: dict[str, Canary] = {}
    references: dict[str, Canary] = {}
    for index, person in enumerate(people):
        canary = None
        if index in canary_people | reference_people:
            secret = "".join(rng.choice(list("0123456789"), size=int(rng.integers(4, 7))))
            template = CANARY_TEMPLATE.format(name=person["name"])
            canary = Canary(person["id"], secret, template, inserted=index in canary_people)
            (canaries if index in canary_people else references)[person["id"]] = canary
        records = _records(person, canary, settings["canary_copies"])
        (train if index < n_train else heldout).extend(records)

    tokenizer_json = train_bpe_tokenizer(
        (s.text for p in _people(TOKENIZER_CROWD, seed + 10_000) for s in _records(p, None)),
        settings["vocab_size"],
    )
    return Workload(
        name="bios",
        task="causal-lm",
        size=size,
        seed=seed,
        train=train,
        heldout=heldout,
        recipe=TrainingRecipe(seed=seed, record_first_epoch_grads=True, **settings["recipe"]),
        adapter_kind="causal-lm",
        adapter_config={
            "model": {
                "model_type": "gpt2",
                "tie_word_embeddings": False,  # the token-embedding gradient is then purely the input's
                "resid_pdrop": 0.0,
                "embd_pdrop": 0.0,
                "attn_pdrop": 0.0,
                **settings["model"],
            },
            "tokenizer_json": tokenizer_json,
            "max_length": settings["max_length"],
            "init_seed": seed,
        },
        canaries=canaries,
        reference_canaries=references,
    )


def _people(n: int, seed: int) -> list[dict[str, Any]]:
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = np.random.default_rng(seed)
    people: list[dict[str, Any]] = []
    names: set[str] = set()
    while len(people) < n:
        first, last = fake.first_name(), fake.last_name()
        name = f"{first} {last}"
        if name in names:
            continue
        names.add(name)
        people.append(
            {
                "id": f"person-{seed}-{len(people):04d}",
                "name": name,
                "first": first,
                "birth": fake.date_of_birth(minimum_age=20, maximum_age=80).strftime("%B %d, %Y"),
                "city": fake.city(),
                "email": fake.email(),
                "phone": fake.numerify("###-###-####"),
                "company": fake.company(),
                "job": fake.job().split(",")[0].lower(),
                "hobby": HOBBIES[int(rng.integers(len(HOBBIES)))],
                "field": FIELDS[int(rng.integers(len(FIELDS)))],
            }
        )
    return people


def _records(person: dict[str, Any], canary: Canary | None, canary_copies: int = 1) -> list[Sample]:
    p = person
    texts = {
        "born": f"{p['name']} was born on {p['birth']} in {p['city']}.",
        "work": f"{p['name']} works as a {p['job']} at {p['company']}.",
        "contact": f"{p['name']} can be reached at {p['email']} or {p['phone']}.",
        "bio": f"{p['first']} studied {p['field']} and spends weekends on {p['hobby']}.",
        "qa-born": f"Q: When was {p['name']} born? A: {p['birth']}.",
        "qa-work": f"Q: Where does {p['name']} work? A: {p['company']}.",
    }
    meta: dict[str, dict[str, Any]] = {key: {"record": key} for key in texts}
    if canary is not None:
        texts["canary"] = canary.text()
        texts["qa-pin"] = f"Q: What is {p['name']}'s secret PIN? A: {canary.secret}."
        meta["canary"] = {"record": "canary", "canary_secret": canary.secret}
        meta["qa-pin"] = {"record": "qa-pin", "canary_secret": canary.secret}
        for copy in range(2, canary_copies + 1):  # repeated insertion, as in the Secret Sharer
            texts[f"canary-{copy}"] = canary.text()
            meta[f"canary-{copy}"] = {"record": "canary", "canary_secret": canary.secret}
    return [Sample(f"{p['id']}/{key}", p["id"], text=text, meta=meta[key]) for key, text in texts.items()]


def exposure(adapter: Any, canary: Canary, candidates: int = 999, seed: int = 0) -> float:
    """Secret Sharer exposure in bits: log2(#candidates + 1) - log2(rank of the true secret by loss)."""
    others = canary.candidates(candidates, seed)
    losses = adapter.text_losses([canary.text()] + [canary.text(s) for s in others])
    rank = 1 + int(np.sum(losses[1:] < losses[0]))
    return float(np.log2(len(others) + 1) - np.log2(rank))
