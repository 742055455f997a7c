"""Method choice: what `auto` picks for a version, and the escalation chain that ends exact."""

from __future__ import annotations

from app.registry.policy import ModelPolicy
from workers.pipeline.chain import Capabilities, choose_chain

DEFAULTS = ModelPolicy()

TRAINED_HERE = Capabilities("image-classification", has_checkpoints=True, has_recipe=True)
PURGED_CHECKPOINTS = Capabilities("image-classification", has_checkpoints=False, has_recipe=True)
ENCODER_FROM_ELSEWHERE = Capabilities("sequence-classification", has_checkpoints=False, has_recipe=False)
LM_FROM_ELSEWHERE = Capabilities("causal-lm", has_checkpoints=False, has_recipe=False)


def test_auto_restarts_from_checkpoints_and_falls_back_to_retraining() -> None:
    assert choose_chain("auto", DEFAULTS, TRAINED_HERE) == ["deepobliviate", "retrain"]


def test_auto_without_checkpoints_tries_nabla_tau_then_retrains() -> None:
    assert choose_chain("auto", DEFAULTS, PURGED_CHECKPOINTS) == ["nabla_tau", "retrain"]


def test_auto_on_a_pretrained_encoder_uses_lora_residual_alignment() -> None:
    assert choose_chain("auto", DEFAULTS, ENCODER_FROM_ELSEWHERE) == ["lora_residual_alignment"]
    assert choose_chain("auto", DEFAULTS, LM_FROM_ELSEWHERE) == ["nabla_tau"]


def test_a_named_approximate_method_is_followed_by_an_exact_one() -> None:
    assert choose_chain("first_epoch_ascent", DEFAULTS, TRAINED_HERE) == [
        "first_epoch_ascent",
        "deepobliviate",
        "retrain",
    ]
    assert choose_chain("nabla_tau", DEFAULTS, PURGED_CHECKPOINTS) == ["nabla_tau", "retrain"]


def test_the_request_overrides_the_policy_and_the_policy_overrides_auto() -> None:
    policy = ModelPolicy(method="nabla_tau")
    assert choose_chain("auto", policy, TRAINED_HERE) == ["nabla_tau", "deepobliviate", "retrain"]
    assert choose_chain("retrain", policy, TRAINED_HERE) == ["retrain"]


def test_an_explicit_policy_chain_is_used_as_written() -> None:
    assert choose_chain("auto", ModelPolicy(chain=["finetune"]), TRAINED_HERE) == ["finetune"]


def test_deepobliviate_with_early_stop_is_approximate() -> None:
    policy = ModelPolicy.model_validate({"method_config": {"deepobliviate": {"early_stop": True}}})
    assert choose_chain("deepobliviate", policy, PURGED_CHECKPOINTS) == ["deepobliviate", "retrain"]


def test_an_exact_method_is_followed_only_by_the_exact_methods_after_it() -> None:
    assert choose_chain("deepobliviate", DEFAULTS, TRAINED_HERE) == ["deepobliviate", "retrain"]
    # a restart the lineage cannot serve is refused at run time; retraining still can
    assert choose_chain("deepobliviate", DEFAULTS, PURGED_CHECKPOINTS) == ["deepobliviate", "retrain"]
    assert choose_chain("deepobliviate", DEFAULTS, LM_FROM_ELSEWHERE) == ["deepobliviate"]


SHARDED = Capabilities("image-classification", has_checkpoints=False, has_recipe=True, sharded=True)


def test_auto_on_a_sharded_version_retrains_its_affected_shards() -> None:
    assert choose_chain("auto", DEFAULTS, SHARDED) == ["sisa", "retrain"]
    assert choose_chain("nabla_tau", DEFAULTS, SHARDED) == ["nabla_tau", "sisa", "retrain"]
    # a version trained unsharded has no shards to restart
    assert "sisa" not in choose_chain("auto", DEFAULTS, TRAINED_HERE)
