"""`lethe`: the operator's command line.

Each command group lives beside the code it drives and adds itself through `add_commands(subparsers)`;
the groups import torch only inside their handlers, so `lethe keys create` runs on the API image.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_GROUPS = (
    "app.security.cli",  # lethe keys create
    "app.certificates.cli",  # lethe certificate verify
    "workers.unlearning.cli",  # lethe unlearn
    "workers.verification.cli",  # lethe verify
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lethe", description="Lethe: the right to be forgotten for ML models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # group not part of this installation
            raise
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
