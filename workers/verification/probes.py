"""Planted signal a workload hands to the checks: canaries (language models) and backdoor triggers.

Canaries and triggers give the gate power where membership inference has none (a small model on clean data
leaks too little for any attack). `probes_for_workload` turns a reference workload's planted signal into
check inputs; the service builds the same from the planted signal it knows about, or leaves it empty.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.modeling.base import Sample
from workers.verification.backdoor import BackdoorProbe
from workers.verification.memorization import CanaryLike

TRIGGERED_PER_SUBJECT = 60  # held-out inputs each trigger is tried on: enough for a rate of a few %


@dataclass
class Probes:
    canaries: Sequence[CanaryLike] = ()  # planted in training subjects' records
    control_canaries: Sequence[CanaryLike] = ()  # same template, never inserted
    backdoor: BackdoorProbe | None = None  # the forget subjects' triggers on clean held-out inputs
    notes: dict[str, Any] = field(default_factory=dict)


def triggered_inputs(
    triggers: Sequence[Any], clean: Sequence[Sample], per_trigger: int
) -> tuple[list[Sample], list[int], list[str]]:
    """Each trigger (`.triggered(samples)`, and `.target_label` or `.label`) applied to clean inputs whose
    label is not its target, so that a hit is the trigger's doing; returns (inputs, target labels, the
    subject whose trigger each input carries)."""
    inputs: list[Sample] = []
    targets: list[int] = []
    owners: list[str] = []
    for trigger in triggers:
        target = int(getattr(trigger, "target_label", getattr(trigger, "label", -1)))
        eligible = [s for s in clean if s.label != target][:per_trigger]
        inputs += trigger.triggered(eligible)
        targets += [target] * len(eligible)
        owners += [trigger.subject] * len(eligible)
    return inputs, targets, owners


def probes_for_workload(workload: Any, forget_subjects: Collection[str], clean: Sequence[Sample]) -> Probes:
    """Canaries of a workload and the triggers (backdoors, rare phrases) of the subjects to forget.

    `clean`: held-out samples without planted signal (the scenario's test set) to apply triggers to.
    """
    triggers = {**workload.backdoors, **workload.phrases}
    forget_triggers = [triggers[s] for s in sorted(forget_subjects) if s in triggers]
    controls = [*workload.reference_backdoors.values(), *workload.reference_phrases.values()]
    inputs, targets, owners = triggered_inputs(forget_triggers, clean, TRIGGERED_PER_SUBJECT)
    control_inputs, control_targets, _ = triggered_inputs(controls, clean, TRIGGERED_PER_SUBJECT)
    backdoor = BackdoorProbe(inputs, targets, control_inputs, control_targets, owners) if inputs else None
    return Probes(
        canaries=list(workload.canaries.values()),
        control_canaries=list(workload.reference_canaries.values()),
        backdoor=backdoor,
        notes={"forget_triggers": len(forget_triggers), "control_triggers": len(controls)},
    )
