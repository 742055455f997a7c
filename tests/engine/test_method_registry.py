"""One list of methods: what the API accepts, what a policy may name and what the workers run agree, and
each method's settings are its config class (defaults there, unknown keys refused)."""

from __future__ import annotations

import pydantic
import pytest

from app.registry.methods import AUTO, BASELINES, METHOD_CONFIGS, REQUESTABLE, MethodName
from app.registry.policy import GatePolicy, ModelPolicy
from app.requests.schemas import UnlearningMethod
from workers.pipeline.chain import is_exact
from workers.unlearning import METHODS, MethodUnavailable, UnlearningContext, get_method
from workers.verification.gate import Policy

pytestmark = pytest.mark.ml


def test_the_workers_run_exactly_the_listed_methods_and_the_api_offers_the_deletion_methods() -> None:
    assert set(METHODS) == set(MethodName) == set(METHOD_CONFIGS)
    assert all(cls.name == name for name, cls in METHODS.items())
    assert {choice.value for choice in UnlearningMethod} == {AUTO, *REQUESTABLE}
    assert "finetune" in BASELINES and "finetune" not in {choice.value for choice in UnlearningMethod}


@pytest.mark.parametrize("name", list(MethodName))
def test_a_method_runs_with_its_config_class_and_refuses_unknown_settings(name: str) -> None:
    method = get_method(name)
    assert method.config == METHOD_CONFIGS[name]()
    with pytest.raises(pydantic.ValidationError, match="not_a_setting"):
        get_method(name, not_a_setting=1)


def test_a_setting_of_the_wrong_type_is_refused_before_the_method_runs() -> None:
    with pytest.raises(pydantic.ValidationError, match="steps"):
        get_method("finetune", steps="twenty")
    assert get_method("finetune", steps=3).config.steps == 3


@pytest.mark.parametrize(
    ("policy", "method", "exact"),
    [
        ({}, "retrain", True),
        ({}, "deepobliviate", True),
        ({"method_config": {"deepobliviate": {"early_stop": True}}}, "deepobliviate", False),
        ({}, "nabla_tau", False),
        ({}, "first_epoch_ascent", False),
        ({}, "lora_residual_alignment", False),
        ({}, "finetune", False),
    ],
)
def test_exactness_is_the_methods_own_answer_under_the_policys_settings(policy, method, exact) -> None:
    assert is_exact(method, ModelPolicy.model_validate(policy)) is exact
    assert get_method(method, **ModelPolicy.model_validate(policy).config_of(method)).is_exact is exact


def test_a_declared_provenance_need_is_checked_before_the_method_runs(digits, digits_trained) -> None:
    served, _ = digits_trained
    forget = digits.samples_of(digits.subjects[:1])
    for name in ("deepobliviate", "retrain"):
        with pytest.raises(MethodUnavailable, match="no training record"):
            get_method(name).unlearn(served, forget, [], [], UnlearningContext(training=None))


def test_the_gate_reads_the_policy_the_api_validates() -> None:
    assert Policy is GatePolicy
    policy = ModelPolicy.model_validate({"gate": {"n_boot": 300, "fprs": [0.01]}})
    assert policy.gate_policy() == GatePolicy(n_boot=300, fprs=(0.01,))
    assert ModelPolicy().gate_policy() == GatePolicy()
