"""Customers' own models through the whole pipeline, as docs/bring-your-own-model.md tells it: every request
body here is read from the guide and sent as it stands (the guide's examples are these tests' requests).

The models are made in the test from a config and saved with `save_pretrained` (or as a torch module's
safetensors), their tokenizers trained on the test's texts: nothing is downloaded. Each deletion completes
with a verdict measured on held-out data and the promoted version is downloaded and loaded as its owner
would load it; registered without held-out data, a deletion ends inconclusive and is not promoted."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.client import ok, wait_job, wait_request
from tests.e2e.conftest import new_tenant_auth
from tests.e2e.stack import REPO_ROOT, Api, wait_for
from tests.tiny_models import save_distilbert_classifier, save_gpt2
from workers.unlearning.cli import EXIT_USAGE
from workers.verification.cli import EXIT_CODES

pytestmark = pytest.mark.e2e

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "bring-your-own-model.md"
EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w-]+) -->")
REQUEST = re.compile(r"```json (?P<method>GET|POST|PUT) (?P<path>\S+)\n(?P<body>.*?)\n```", re.S)


@dataclass
class Request:
    method: str
    path: str
    body: Any


def guide_examples() -> dict[str, list[Request]]:
    """Example name -> its requests, in the guide's order."""
    text = GUIDE.read_text()
    marks = list(EXAMPLE.finditer(text))
    examples = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        section = text[mark.end() : following.start() if following else len(text)]
        examples[mark["name"]] = [
            Request(m["method"], m["path"], json.loads(m["body"])) for m in REQUEST.finditer(section)
        ]
    return examples


class Walkthrough:
    """Sends one example's requests in order, as a client following the guide would."""

    def __init__(self, http: httpx.Client, requests: list[Request]) -> None:
        self.http = http
        self.pending = list(requests)

    def next(self, path_suffix: str = "") -> Request:
        request = self.pending.pop(0)
        assert request.path.endswith(path_suffix), f"the guide's next request is {request.path}"
        return request

    def send(self, path_suffix: str = "", extra: list[dict[str, Any]] | None = None) -> Any:
        """Send the guide's next request; `extra` rows follow a sample batch in a second request."""
        request = self.next(path_suffix)
        headers = {"Idempotency-Key": str(uuid.uuid4())} if request.path == "/v1/deletion-requests" else {}
        answer = ok(self.http.request(request.method, request.path, json=request.body, headers=headers))
        if extra:
            ok(self.http.post(request.path, json=extra))
        return answer

    def done(self) -> None:
        assert self.pending == [], f"requests of the guide not sent: {[r.path for r in self.pending]}"


@pytest.fixture(scope="module")
def guide() -> dict[str, list[Request]]:
    return guide_examples()


@pytest.fixture(scope="module")
def customer_tenant() -> str:
    return f"e2e-byom-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def customer(api: Api, workers: Any, customer_tenant: str) -> Iterator[httpx.Client]:
    """A tenant of its own: the guide's names (support-lm, tickets, ...) are unique per tenant."""
    headers = new_tenant_auth(customer_tenant)
    with httpx.Client(base_url=api.url, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def models_root(stack_env: dict[str, str]) -> Path:
    root = Path(stack_env["LETHE_MODELS_ROOT"])
    root.mkdir(parents=True, exist_ok=True)
    return root


def serving(http: httpx.Client, model: str, version: int) -> dict[str, Any]:
    """Wait for the worker's load check to let the version serve."""

    def checked() -> dict[str, Any] | None:
        found = ok(http.get(f"/v1/models/{model}/versions/{version}"))
        assert found["status"] != "failed", found["status_reason"]
        return found if found["status"] == "registered" else None

    return wait_for(f"{model} v{version} to pass its load check", checked, 120, 0.5)


def download(http: httpx.Client, model: str, version: int, destination: Path) -> tuple[Path, httpx.Response]:
    response = http.get(f"/v1/models/{model}/versions/{version}/artifact")
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        archive.extractall(destination, filter="data")
    return destination / f"{model}-v{version}", response


def measured_pass(http: httpx.Client, request: dict[str, Any], model: str) -> dict[str, Any]:
    """The completed request's promoted version and its report, which measured on held-out samples."""
    assert request["verdict"] == "pass" and request["promoted_versions"] == {model: 2}, request
    job = ok(http.get(f"/v1/jobs/{request['models'][0]['job_id']}"))
    report = ok(http.get(job["report_url"]))
    assert report["verdict"] == "pass"
    assert report["samples"]["forget"] > 0 and report["samples"]["heldout"] > 0, report["samples"]
    assert ok(http.get(f"/v1/models/{model}/aliases/production"))["version"] == 2
    assert ok(http.get(f"/v1/models/{model}/versions/1"))["tainted"]
    return report


# --- example 1 and 4: a GPT-2 trained elsewhere ---------------------------------------------------------

PEOPLE = ["ana", "ben", "cara", "dev", "eli", "fay"]
HELDOUT_PEOPLE = ["hal", "ida", "jo", "kim"]
DAYS = ["Monday", "Tuesday", "Friday"]


def chats(people: list[str], prefix: str = "chat") -> list[dict[str, Any]]:
    return [
        {
            "external_id": f"{prefix}-{name}-{i + 2}",
            "subject_id": f"{name}@example.com",
            "text": f"{name.title()} asked to move order {4400 + 37 * j + i} to {DAYS[i]}.",
        }
        for j, name in enumerate(people)
        for i in range(3)
    ]


def train_elsewhere(folder: Path, texts: list[str]) -> None:
    """What the customer did before coming to Lethe: a GPT-2 trained with a plain loop, save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    save_gpt2(folder, texts)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(
        [f"{tokenizer.bos_token}{t}{tokenizer.eos_token}" for t in texts], return_tensors="pt", padding=True
    )
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(30):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.save_pretrained(folder)


def test_a_gpt2_trained_elsewhere_is_forgotten_verified_and_handed_back(
    customer: httpx.Client, guide: dict[str, list[Request]], models_root: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = Walkthrough(customer, guide["gpt2"])
    steps.send("/v1/datasets")
    steps.send("/v1/datasets")
    training_rows = chats(PEOPLE)
    doc_rows = steps.pending[0].body
    train_elsewhere(models_root / "support-lm", [row["text"] for row in [*doc_rows, *training_rows]])
    steps.send("/samples", extra=training_rows)
    steps.send("/samples", extra=chats(HELDOUT_PEOPLE, "heldout"))
    steps.send("/v1/models")
    registered = steps.send("/versions")
    assert registered["status"] == "checking" and registered["heldout_size"] > 0
    serving(customer, "support-lm", 1)
    steps.send("/aliases/production")
    created = steps.send("/v1/deletion-requests")
    steps.done()

    done = wait_request(customer, created["id"])

    report = measured_pass(customer, done, "support-lm")
    assert report["exact"] and report["method"] == "retrain"
    folder, response = download(customer, "support-lm", 2, tmp_path)
    promoted = ok(customer.get("/v1/models/support-lm/versions/2"))
    assert response.headers["x-artifact-sha256"] == promoted["artifact_sha256"]
    assert response.headers["x-artifact-format"] == "huggingface"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**tokenizer("Ben asked to move order", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_without_held_out_data_a_deletion_is_inconclusive_and_not_promoted(
    customer: httpx.Client, guide: dict[str, list[Request]], models_root: Path
) -> None:
    if not (models_root / "support-lm").is_dir():
        pytest.skip("needs the support-lm artifact and data of the GPT-2 example (run with it)")
    steps = Walkthrough(customer, guide["unverified"])
    steps.send("/v1/models")
    registered = steps.send("/versions")
    assert registered["heldout_size"] == 0
    serving(customer, "support-lm-unverified", 1)
    steps.send("/aliases/production")
    created = steps.send("/v1/deletion-requests")
    steps.done()

    failed = wait_request(customer, created["id"], statuses=("failed",))

    assert failed["verdict"] == "inconclusive" and failed["promoted_versions"] == {}
    assert ok(customer.get("/v1/models/support-lm-unverified/aliases/production"))["version"] == 1
    candidate = ok(customer.get("/v1/models/support-lm-unverified/versions/2"))
    assert candidate["status"] == "rejected" and not candidate["promotable"]
    assert candidate["verification"]["verdict"] == "inconclusive"


# --- example 2: a DistilBERT classifier fine-tuned through versions:train -------------------------------

BILLING = ["I was charged twice for {}", "Please refund the {} invoice", "My card was billed for {}"]
TECHNICAL = ["The app crashes when I open {}", "I cannot log in to {}", "The {} page does not load"]
PRODUCTS = ["my plan", "the pro tier", "the family pack", "the yearly plan"]


def tickets(people: list[str]) -> list[dict[str, Any]]:
    rows = []
    for j, name in enumerate(people):
        for i in range(4):
            label, templates = ("billing", BILLING) if (i + j) % 2 == 0 else ("technical", TECHNICAL)
            text = templates[(i + j) % 3].format(PRODUCTS[(i * 3 + j) % 4])
            rows.append({"external_id": f"ticket-{name}-{i + 2}", "subject_id": f"{name}@example.com",
                         "text": text, "label": label})  # fmt: skip
    return rows


def test_a_distilbert_fine_tuned_from_a_base_folder_is_forgotten_and_handed_back(
    customer: httpx.Client, guide: dict[str, list[Request]], models_root: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    people = ["nora", "omar", "pia", "quinn", "rae", "sam", "tess", "uma", "vic", "wes", "xia", "yan"]
    # a quarter of the people held out, half of them for verification: enough samples (the gate's
    # min_samples) for the utility rule to be measured
    people += ["abe", "bea", "cal", "dot", "eli", "fay", "gus", "hope", "ivo", "june", "kit", "lou"]
    rows = tickets(people)
    steps = Walkthrough(customer, guide["distilbert"])
    steps.send("/v1/datasets")
    doc_rows = steps.pending[0].body
    save_distilbert_classifier(
        models_root / "distilbert-tickets", [r["text"] for r in [*doc_rows, *rows]], ["billing", "technical"]
    )
    steps.send("/samples", extra=rows)
    steps.send("/v1/models")
    job = steps.send("/versions:train")
    wait_job(customer, job["id"])
    trained = ok(customer.get("/v1/models/ticket-router/versions/1"))
    assert trained["status"] == "registered" and trained["heldout_size"] > 0
    assert trained["artifact_format"] == "huggingface" and trained["metrics"]["provenance_recorded"]
    steps.send("/aliases/production")
    created = steps.send("/v1/deletion-requests")
    steps.done()

    done = wait_request(customer, created["id"])

    report = measured_pass(customer, done, "ticket-router")
    assert report["method"] == "deepobliviate" and report["exact"]
    folder, _ = download(customer, "ticket-router", 2, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_labels == 2 and model.config.id2label[0] == "billing"
    with torch.no_grad():
        logits = model(**tokenizer(["I was charged twice for my plan"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


# --- example 3: a tabular MLP on scikit-learn's wine data, string labels -------------------------------

CULTIVARS = ["barolo", "grignolino", "barbera"]


def wine_rows() -> tuple[list[dict[str, Any]], Any, Any]:
    from sklearn.datasets import load_wine

    data = load_wine()
    features = (data.data - data.data.mean(0)) / data.data.std(0)
    rows = [
        {"external_id": f"wine-{i}", "subject_id": f"grower-{i // 2}",
         "features": [round(float(v), 2) for v in x], "label": CULTIVARS[int(y)]}
        for i, (x, y) in enumerate(zip(features, data.target, strict=True))
    ]  # fmt: skip
    return rows, features, data.target


def test_a_tabular_mlp_with_string_labels_is_trained_forgotten_and_handed_back(
    customer: httpx.Client, guide: dict[str, list[Request]], tmp_path: Path
) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from workers.modeling.adapters.torch_classifier import build_model

    rows, features, target = wine_rows()
    steps = Walkthrough(customer, guide["wine"])
    steps.send("/v1/datasets")
    assert steps.pending[0].body[0]["external_id"] == rows[0]["external_id"]
    steps.send("/samples", extra=rows[1:])
    steps.send("/v1/models")
    job = steps.send("/versions:train")
    wait_job(customer, job["id"])
    trained = ok(customer.get("/v1/models/wine-cultivar/versions/1"))
    assert trained["artifact_format"] == "torch-classifier" and trained["heldout_size"] > 0
    steps.send("/aliases/production")
    created = steps.send("/v1/deletion-requests")
    steps.done()

    done = wait_request(customer, created["id"])

    report = measured_pass(customer, done, "wine-cultivar")
    assert report["method"] == "deepobliviate"
    folder, _ = download(customer, "wine-cultivar", 2, tmp_path)
    described = json.loads((folder / "classifier.json").read_text())
    assert described == {"architecture": "mlp", "input_shape": [13], "num_classes": 3, "hidden": [32]}
    config = {"arch": "mlp", "input_shape": [13], "hidden": [32], "num_classes": 3, "init_seed": 0}
    model = build_model(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    with torch.no_grad():
        predicted = model(torch.tensor(features, dtype=torch.float32)).argmax(1).numpy()
    assert float(np.mean(predicted == target)) > 0.8


# --- the command line on a registered model: a deletion tried outside a job -----------------------------


def lethe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def registry_state(http: httpx.Client, model: str) -> tuple[Any, Any]:
    return ok(http.get(f"/v1/models/{model}/versions")), ok(http.get(f"/v1/models/{model}/aliases"))


def trained_growers(tenant: str, model: str, count: int) -> list[str]:
    """Growers whose wines trained the version the model serves (a fifth of them are held out)."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.provenance.membership import training_sample_ids
    from app.provenance.models import Sample
    from app.registry.service import find_model
    from app.security.subjects import subject_hmac
    from app.tenancy.service import get_tenant_by_name
    from workers.pipeline.unlearn import served_version

    with session_scope() as session:
        owner = get_tenant_by_name(session, tenant)
        found = find_model(session, owner.id, model) if owner is not None else None
        assert found is not None
        _, version, _ = served_version(session, found)
        assert version is not None
        ids = training_sample_ids(version)
        trained = set(session.scalars(select(Sample.subject_hmac).where(Sample.id.in_(ids))))
    growers = dict.fromkeys(row["subject_id"] for row in wine_rows()[0])
    return [grower for grower in growers if subject_hmac(grower) in trained][:count]


def test_lethe_unlearn_and_verify_try_a_deletion_from_the_served_model_and_change_nothing(
    customer: httpx.Client, customer_tenant: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    if customer.get("/v1/models/wine-cultivar/aliases/production").status_code != 200:
        pytest.skip("needs the served wine-cultivar model of the tabular example (run with it)")
    wait_for(  # the tabular example's deletion ends by purging v1: the registry is at rest after that
        "wine-cultivar v1 to be purged",
        lambda: ok(customer.get("/v1/models/wine-cultivar/versions/1"))["purged_at"],
        60,
    )
    before = registry_state(customer, "wine-cultivar")
    target = ["--model", "wine-cultivar", "--tenant", customer_tenant]
    for grower in trained_growers(customer_tenant, "wine-cultivar", 2):
        target += ["--subject", grower]

    unlearned = lethe(stack_env, "unlearn", *target, "--method", "finetune")

    assert unlearned.returncode == 0, unlearned.stderr
    line = json.loads(unlearned.stdout.splitlines()[0])
    assert line["dry_run"] and line["version"] == 2 and line["forget_subjects"] == 2
    assert line["n_forget"] > 0 and line["sets"]["heldout"] > 0
    for column in ("served", "finetune"):
        assert set(line[column]["metrics"]) == {"forget", "retain", "heldout"}
        assert 0 <= line[column]["metrics"]["heldout"]["accuracy"] <= 1
    assert "finetune" in unlearned.stdout.splitlines()[1]  # the table's header
    assert "nothing was stored or promoted" in unlearned.stdout

    verified = lethe(stack_env, "verify", *target, "--method", "finetune", "--out", str(tmp_path / "gate"))

    summary = json.loads(verified.stdout.splitlines()[0])
    assert verified.returncode == EXIT_CODES[summary["verdict"]], verified.stderr
    assert summary["dry_run"] and summary["model"] == "wine-cultivar" and summary["deciding_rules"]
    report = json.loads((tmp_path / "gate" / "report.json").read_text())
    assert report["verdict"] == summary["verdict"] and report["samples"]["forget"] == line["n_forget"]
    assert f"verdict: {summary['verdict'].upper()}" in verified.stdout

    nobody = lethe(stack_env, "unlearn", *target, "--subject", "nobody@example.com", "--method", "finetune")

    assert nobody.returncode == EXIT_USAGE
    assert "error: subject 'nobody@example.com' has no sample in wine-cultivar v2" in nobody.stderr
    assert "Traceback" not in nobody.stderr
    assert registry_state(customer, "wine-cultivar") == before
