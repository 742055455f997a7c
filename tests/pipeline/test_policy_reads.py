"""The stages read a model's stored policy through its typed form: the gate's overrides, the probes, the
training spec and a model trained elsewhere's retrain recipe reach the code that uses them."""

from __future__ import annotations

import pytest

from app.registry.models import Model
from app.registry.policy import GatePolicy, ModelPolicy
from app.registry.training_params import TrainingParams
from workers.pipeline.unlearn import method_config
from workers.pipeline.verify import gate_policy, planted_probes


def test_the_gate_runs_with_the_stored_overrides_and_the_defaults_for_the_rest() -> None:
    model = Model(policy={"gate": {"n_boot": 300, "fprs": [0.01]}})
    assert gate_policy(model) == GatePolicy(n_boot=300, fprs=(0.01,))
    assert gate_policy(Model(policy={})) == GatePolicy()
    assert planted_probes(Model(policy={}), []) is None


def test_a_stored_policy_with_an_unknown_key_fails_by_name() -> None:
    with pytest.raises(ValueError, match="mia_auc_tolernce"):
        gate_policy(Model(policy={"gate": {"mia_auc_tolernce": 0.1}}))


def test_a_training_request_takes_the_policys_training_under_its_own_params() -> None:
    policy = ModelPolicy.model_validate(
        {"training": {"workload": "digits", "recipe": {"num_blocks": 5, "epochs": 1}}}
    )
    params = policy.training_params(TrainingParams())
    assert (params.workload, params.recipe.num_blocks, params.recipe.epochs) == ("digits", 5, 1)
    params = policy.training_params(TrainingParams.model_validate({"recipe": {"epochs": 2}}))
    assert (params.workload, params.recipe.num_blocks, params.recipe.epochs) == ("digits", 20, 2)
    # the job carries what was set, so the workload's own recipe fills in the rest
    assert params.model_dump(exclude_unset=True) == {"workload": "digits", "recipe": {"epochs": 2}}
    assert ModelPolicy().training_params(TrainingParams()).model_dump(exclude_unset=True) == {}


def test_retrain_of_a_model_trained_elsewhere_uses_the_policys_recipe() -> None:
    policy = ModelPolicy.model_validate(
        {"retrain_recipe": {"epochs": 4}, "method_config": {"nabla_tau": {"batch_size": 16}}}
    )
    assert method_config(policy, "retrain", record=None) == {"recipe": {"epochs": 4}}
    assert method_config(policy, "retrain", record=object()) == {}  # the record's recipe rules
    assert method_config(policy, "nabla_tau", record=None) == {"batch_size": 16}


def test_targeting_references_come_from_the_lineage_record(monkeypatch, tmp_path) -> None:
    """The per-sample targets of an approximate method are trained from the nearest training record of the
    lineage (an approximate version has none of its own) and cached with that version's verification
    files; with no record anywhere the methods fall back."""
    from types import SimpleNamespace

    from workers.pipeline import store, unlearn

    ancestor, record = SimpleNamespace(id="v1"), object()
    monkeypatch.setattr(store, "lineage_record", lambda session, base: (ancestor, record))
    monkeypatch.setattr(store, "verification_cache", lambda version: tmp_path / version.id)
    source = unlearn.targeting_source(None, SimpleNamespace(id="v3"))
    assert source.record is record and source.directory == tmp_path / "v1" / "targeting"
    monkeypatch.setattr(store, "lineage_record", lambda session, base: None)
    assert unlearn.targeting_source(None, SimpleNamespace(id="v3")) is None
