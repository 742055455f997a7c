"""Where and when a section of docs/benchmarks.md was measured: `--update` merges sections of different
runs, and each keeps its own run's machine, commit and load (bench.__main__.merge_sections)."""

from __future__ import annotations

from typing import Any


def run_sentence(started_at: str | None, machine: dict[str, Any]) -> str:
    """'<start> at commit <c> on <cpu> (...); load average at start ...': the run that measured something."""
    changed = " plus uncommitted changes" if machine.get("git_worktree_changed") else ""
    return (
        f"{started_at or '?'} at commit {machine.get('git_commit', '?')}{changed} on "
        f"{machine.get('cpu_model', '?')} ({machine.get('cores', '?')} cores, torch threads "
        f"{machine.get('torch_threads', '?')}, {machine.get('accelerator', '?')}); load average at start "
        f"{machine.get('load_average_at_start', '?')} (the machine was shared: times are upper bounds)."
    )


def measured_at(section: dict[str, Any]) -> list[str]:
    """The section's own run as a markdown paragraph (nothing for a section of the whole run)."""
    machine = section.get("machine_at_run")
    if not machine:
        return []
    return [f"Measured {run_sentence(section.get('started_at'), machine)}", ""]
