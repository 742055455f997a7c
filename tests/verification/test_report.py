"""The report a job stores and serves: complete JSON, valid plots, and the `lethe verify` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.verification.conftest import WORKLOADS

pytestmark = pytest.mark.ml

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_report(case) -> dict:
    path = case.report.directory / "report.json"
    return json.loads(path.read_text())  # strict JSON: NaN would have been refused when writing


@pytest.mark.parametrize("workload", WORKLOADS)
def test_report_json_has_every_metric_with_count_and_interval(verified, workload: str) -> None:
    data = read_report(verified(workload, "none"))
    assert data["verdict"] == "fail" and data["passed"] is False
    assert data["reasons"] and all(isinstance(r, str) for r in data["reasons"])
    assert data["summary"].startswith("The ") and any(ch.isdigit() for ch in data["summary"])
    assert set(data["not_checked_rules"]) == {
        r["rule"] for r in data["rules"] if r["status"] == "not_checked"
    }
    assert data["references"]["out_per_subject"] >= 8 and data["references"]["seed_replicas"] >= 3
    assert data["thresholds"]["mia_auc_tolerance"] == 0.03
    metrics = [m for check in data["checks"].values() for m in check["metrics"].values()]
    assert len(metrics) > 20
    for m in metrics:
        assert set(m) >= {"value", "ci95", "n"}
        assert m["n"] >= 0 and len(m["ci95"]) == 2
    finite = [m for m in metrics if m["value"] is not None and m["ci95"][0] is not None]
    assert all(m["ci95"][0] <= m["value"] + 1e-9 and m["value"] <= m["ci95"][1] + 1e-9 for m in finite)
    assert data["samples"]["forget"] > 0 and data["samples"]["heldout"] > 0
    assert data["not_checked"], "the report says what it did not check"
    for rule in data["rules"]:
        assert rule["status"] in ("pass", "fail", "not_checked") and rule["detail"]
    timings = data["timings"]
    assert timings["verification_seconds"] > 0 and "reference_training_seconds" in timings


@pytest.mark.parametrize("workload", WORKLOADS)
def test_plots_are_written_as_png(verified, workload: str) -> None:
    import matplotlib.image

    case = verified(workload, "none")
    data = read_report(case)
    assert set(data["plots"]) == {"roc.png", "loss_hist.png", "canary_ranks.png"}
    for name in data["plots"]:
        path = Path(case.report.directory) / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 100 and width > 100


def test_report_lists_the_language_model_checks(verified) -> None:
    checks = read_report(verified("bios", "none"))["checks"]
    assert {"zlib_ratio", "min_k_20", "min_k_40", "ref_ratio", "lira", "loss"} <= {
        name.split(".")[0] for name in checks["mia"]["metrics"]
    }
    memorization = checks["memorization"]["metrics"]
    for signal in ("exact_memorization", "extraction_strength", "continuation_verbatim"):
        assert (
            memorization[f"memorization.{signal}_forget.served"]["value"]
            > (memorization[f"memorization.{signal}_forget.reference"]["value"])
        ), f"the served model reproduces more of the forget records than the retrain ({signal})"
    table = checks["canary"]["values"]["canary.table"]
    assert {row["group"] for row in table} == {"deleted", "kept", "control"}


def test_cli_prints_verdict_writes_report_and_exits_nonzero_on_fail(tmp_path: Path, capsys) -> None:
    from workers.cli import main

    out = tmp_path / "report"
    code = main(
        ["verify", "--workload", "digits", "--method", "none", "--forget-subjects", "2", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 1
    assert "verdict: FAIL" in printed
    summary = json.loads(printed.splitlines()[0])
    assert summary["verdict"] == "fail" and summary["metrics"]
    assert summary["summary"] in printed
    assert (out / "report.json").is_file() and (out / "roc.png").is_file()


def test_cli_judges_an_exact_retrain_of_a_fresh_seed_under_policy_overrides(tmp_path: Path, capsys) -> None:
    from workers.cli import main

    args = ["verify", "--workload", "digits", "--method", "retrain", "--forget-subjects", "2"]
    code = main(
        [*args, "--out", str(tmp_path), "--candidate-seed", "60001", "--policy", '{"trust_exact": false}']
    )
    printed = capsys.readouterr().out
    summary = json.loads(printed.splitlines()[0])
    assert code == 0 and summary["verdict"] == "pass" and summary["label"] is None  # judged by every rule
    assert summary["candidate_seed"] == 60001 and "candidate seed 60001" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["thresholds"]["trust_exact"] is False and report["exact"] is True
    # a seed of the gate's own references, or an unknown policy setting: refused before any work
    assert main([*args, "--candidate-seed", "1000003"]) == 64
    assert main([*args, "--policy", '{"trust_excat": false}']) == 64
    assert "reserved for the gate references" in capsys.readouterr().err


def test_relearning_probe_fine_tunes_every_changed_parameter_frozen_ones_included(
    minilm, minilm_trained
) -> None:
    """An edit to minilm's frozen token embeddings is something the probe must be able to undo."""
    import torch

    from workers.unlearning.evaluation import scenario
    from workers.verification.gate import Policy
    from workers.verification.relearning import differing_parameter_names, relearn

    served, _ = minilm_trained
    frozen = {name for name, p in served.model.named_parameters() if not p.requires_grad}
    assert frozen, "minilm trains with frozen token embeddings"
    name = sorted(frozen)[0]
    candidate = served.clone()
    with torch.no_grad():
        dict(candidate.model.named_parameters())[name].add_(0.01)
    assert differing_parameter_names(candidate, served) == {name}
    case = scenario(minilm, 1)
    relearned, record = relearn(
        candidate, case.forget, case.retain, case.test, Policy(relearn_steps=2), {name}
    )
    after = dict(relearned.model.named_parameters())
    before = dict(candidate.model.named_parameters())
    assert not torch.equal(after[name], before[name]), "the frozen parameter the candidate changed is trained"
    others = [n for n in before if n != name]
    assert all(torch.equal(after[n], before[n]) for n in others), "nothing the candidate left alone moves"
    assert record.values["relearning.parameters"] == [name]
