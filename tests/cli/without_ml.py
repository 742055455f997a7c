"""`lethe` as the API image runs it: the packages of the `worker` extra cannot be imported.

    python -m tests.cli.without_ml ARGS...    (from the repository root)

The blocked modules are the import names of the distributions that the project's `worker` extra lists
(torch, numpy, transformers, ...), read from the installed project's metadata.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import re
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

WORKER_EXTRA = 'extra == "worker"'


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def worker_extra_modules() -> frozenset[str]:
    requirements = importlib.metadata.requires("lethe") or []
    names = {
        normalized(re.match(r"[A-Za-z0-9_.-]+", requirement).group())  # type: ignore[union-attr]
        for requirement in requirements
        if WORKER_EXTRA in requirement
    }
    return frozenset(
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if any(normalized(distribution) in names for distribution in distributions)
    )


class RefuseModules(importlib.abc.MetaPathFinder):
    def __init__(self, blocked: frozenset[str]) -> None:
        self.blocked = blocked

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not installed here)", name=fullname)
        return None


def block_worker_extra() -> frozenset[str]:
    blocked = worker_extra_modules()
    assert {"torch", "numpy"} <= blocked, blocked
    sys.meta_path.insert(0, RefuseModules(blocked))
    return blocked


if __name__ == "__main__":
    block_worker_extra()
    from workers.cli import main

    sys.exit(main(sys.argv[1:]))
