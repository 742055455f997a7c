"""Session fixtures of the verification tests: deletions on the reference workloads (small settings), each
unlearned and verified once per session and shared by the tests that read its report.

Heavy parts are cached on disk under LETHE_CACHE_DIR: trained models and exact retrains by the workloads,
the gate's references (once per workload lineage) and the served versions' scores by verification, so only
the first run trains them. The seed methods' verdicts are recorded (not asserted) and printed at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.engine.conftest import (  # noqa: F401 - shared fixtures
    bios,
    bios_trained,
    digits,
    digits_trained,
    minilm,
    minilm_trained,
)
from workers.verification.gate import Policy
from workers.verification.workload_case import DEFAULT_FORGET_SUBJECTS as FORGET_SUBJECTS
from workers.verification.workload_case import CaseResult

WORKLOADS = ("digits", "bios", "minilm")
SEED_METHODS = ("nabla_tau", "first_epoch_ascent", "lora_residual_alignment", "deepobliviate")
# Seeds of exact retrains the gate never saw (its references use 1_000_000 and up; bench.gate 70_000 and up).
UNSEEN_SEEDS = (60_001, 60_002, 60_003, 60_004)

_recorded: list[dict] = []


@pytest.fixture(scope="session")
def verified(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., CaseResult]:
    """verified(workload, method, exact_trusted=True, candidate_seed=None) -> CaseResult, once per session.

    method "retrain" takes the workload's cached exact retrain as the candidate (the registry's `retrain`
    produces the same weights), or with `candidate_seed` an exact retrain from that fresh seed; with
    exact_trusted=False the gate judges it like an approximate method, by every rule.
    """
    from workers.unlearning.base import UnlearningResult
    from workers.verification.workload_case import run_case
    from workers.workloads import load_workload

    done: dict[tuple[str, str, bool], CaseResult] = {}

    def run(
        workload: str, method: str, exact_trusted: bool = True, candidate_seed: int | None = None
    ) -> CaseResult:
        key = (workload, method, exact_trusted, candidate_seed)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{workload}-{method}")
            candidate = None
            if method == "retrain" and candidate_seed is None:
                w = load_workload(workload, "small")
                from workers.unlearning.evaluation import scenario

                subjects = scenario(w, FORGET_SUBJECTS[workload]).subjects
                candidate = UnlearningResult(w.retrained(subjects), "retrain", exact=True, seconds=0.0)
            policy = Policy(trust_exact=exact_trusted)
            done[key] = run_case(
                workload,
                method,
                FORGET_SUBJECTS[workload],
                "small",
                out,
                policy,
                candidate=candidate,
                with_reference=method == "none",  # the report's memorisation view beside a retrain
                candidate_seed=candidate_seed,
            )
        return done[key]

    return run


def record_verdict(case: CaseResult) -> None:
    _recorded.append(case.summary())


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001 - pytest hook
    if not _recorded:
        return
    terminalreporter.section("gate verdicts of the seed methods (recorded, not asserted)")
    for row in _recorded:
        rules = ", ".join(row["deciding_rules"])
        terminalreporter.write_line(
            f"{row['workload']:7s} {row['method']:24s} {row['verdict']:12s} by {rules[:90]}"
        )
    from workers.workloads import cache_dir

    path = cache_dir("verification") / "seed-method-verdicts.json"
    path.write_text(json.dumps(_recorded, indent=2))
    terminalreporter.write_line(f"written to {path}")
