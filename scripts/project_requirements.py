"""Prints the requirements that pyproject.toml names: the base dependencies, then those of each extra given.

    python scripts/project_requirements.py [EXTRA ...] > requirements.txt

The Dockerfile installs them before it copies the code, so a code change does not reinstall them.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"no such extra in {pyproject}: {', '.join(unknown)}")
    return list(project["dependencies"]) + [item for extra in extras for item in optional[extra]]


if __name__ == "__main__":
    print("\n".join(requirements(Path("pyproject.toml"), sys.argv[1:])))
