"""Verification of unlearned candidates: one module per check, the gate, the report.

Entry point: `workers.verification.report.verify(...) -> Report` (report.json and plots in a directory);
thresholds: `workers.verification.gate.Policy`; statistics: `workers.verification.stats`.
"""
