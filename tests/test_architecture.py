"""The imports of app/ and workers/ follow the arrows drawn in architecture/README.md.

The picture is the rule: its mermaid diagram names the parts (module patterns) and the imports each part
may make; every import in every file of app/ and workers/ (read with `ast`, nothing is imported) must be
inside its own part or along an arrow.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PICTURE = ROOT / "architecture" / "README.md"
CHECKED = ("app", "workers")
# The project's own top-level packages: importing one that is no part of the picture is never allowed.
PROJECT_PACKAGES = frozenset({"app", "workers", "bench", "scripts", "tests", "migrations"})

_NODE = re.compile(r'^\s*(\w+)\s*[\[\(]+"([^"]+)"[\]\)]+\s*$')
_ARROW = re.compile(r"^\s*(\w+)\s*-->\s*(\w+)\s*$")


@dataclass(frozen=True)
class Picture:
    """The diagram: each part's patterns (modules of the project, or names of libraries) and arrows."""

    parts: dict[str, tuple[str, ...]]
    arrows: frozenset[tuple[str, str]]

    def part_of(self, module: str) -> str | None:
        """The part a module of the project, or a library (its top-level name), belongs to."""
        for part, patterns in self.parts.items():
            for pattern in patterns:
                head = ".".join(module.split(".")[: pattern.count(".") + 1])
                if fnmatch.fnmatchcase(head, pattern):
                    return part
        return None


def read_picture(text: str) -> Picture:
    block = text.split("```mermaid", 1)[1].split("```", 1)[0]
    parts: dict[str, tuple[str, ...]] = {}
    arrows = set()
    for line in block.splitlines():
        if node := _NODE.match(line):
            parts[node[1]] = tuple(name.strip() for name in node[2].split(","))
        elif arrow := _ARROW.match(line):
            arrows.add((arrow[1], arrow[2]))
    unknown = {end for arrow in arrows for end in arrow} - parts.keys()
    assert not unknown, f"arrows between undeclared parts: {sorted(unknown)}"
    return Picture(parts, frozenset(arrows))


@dataclass(frozen=True)
class Import:
    line: int
    module: str  # the imported module (or, for `from a import b` of a submodule b, "a.b")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_project_module(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool = False) -> Iterator[Import]:
    """Every import in `source` (the text of `module`), wherever it stands in the file."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (Import(node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield Import(node.lineno, submodule if _is_project_module(submodule) else base)


def violations(picture: Picture, module: str, source: str, is_package: bool = False) -> list[str]:
    """The imports of `module` that no arrow of the picture allows."""
    own = picture.part_of(module)
    found = []
    for imported in imports_of(source, module, is_package):
        top = imported.module.split(".")[0]
        target = picture.part_of(imported.module if top in PROJECT_PACKAGES else top)
        if target is None and top not in PROJECT_PACKAGES:
            continue  # the standard library, or a library the picture leaves free
        if target != own and (own, target) not in picture.arrows:
            shown = target or f"{top} (no part)"
            found.append(f"{module}:{imported.line} imports {imported.module}: no arrow {own} --> {shown}")
    return found


@pytest.fixture(scope="module")
def picture() -> Picture:
    return read_picture(PICTURE.read_text())


def _checked_files() -> list[Path]:
    return sorted(path for package in CHECKED for path in (ROOT / package).rglob("*.py"))


def test_every_import_follows_an_arrow_of_the_picture(picture: Picture) -> None:
    found = [
        problem
        for path in _checked_files()
        for problem in violations(
            picture, module_name(path), path.read_text(), is_package=path.name == "__init__.py"
        )
    ]
    assert not found, "imports against architecture/README.md:\n" + "\n".join(found)


def test_every_module_of_app_and_workers_is_in_a_part(picture: Picture) -> None:
    outside = [
        module_name(path)
        for path in _checked_files()
        if picture.part_of(module_name(path)) is None and module_name(path) not in CHECKED
    ]
    assert not outside, f"modules in no part of architecture/README.md: {outside}"


def test_the_picture_keeps_the_house_rules(picture: Picture) -> None:
    """Drawing an arrow cannot make these imports allowed: the API without workers or the ML stack,
    an engine that knows no queue, methods that do not know their judge, models that know no method."""
    engine = ("verification", "unlearning", "workloads", "modeling")
    forbidden = (
        {("app", part) for part in picture.parts if part != "app"}
        | {(part, queue) for part in engine for queue in ("pipeline", "tasks", "celery_app", "cli")}
        | {("unlearning", "verification"), ("modeling", "unlearning"), ("modeling", "verification")}
    )
    assert picture.part_of("torch") == "ml" and picture.part_of("app.requests.lifecycle") == "app"
    assert not forbidden & picture.arrows


@pytest.mark.parametrize(
    ("module", "source", "refused"),
    [
        ("app.requests.service", "from workers.pipeline.jobs import fail_job", "workers.pipeline.jobs"),
        ("app.jobs.service", "def f():\n    import torch\n", "torch"),
        ("workers.unlearning.base", "from workers.verification import gate", "workers.verification.gate"),
        ("workers.unlearning.base", "import workers.pipeline.chain", "workers.pipeline.chain"),
        ("workers.modeling.base", "from workers import unlearning", "workers.unlearning"),
        ("workers.pipeline.plan", "from tests.api import seeding", "tests.api.seeding"),
    ],
)
def test_an_import_against_the_arrows_is_refused(
    picture: Picture, module: str, source: str, refused: str
) -> None:
    problems = violations(picture, module, source)
    assert len(problems) == 1 and f"imports {refused}:" in problems[0]


def test_imports_along_the_arrows_pass(picture: Picture) -> None:
    allowed = "from app.requests.lifecycle import move_models\nfrom workers.unlearning import base\n"
    assert violations(picture, "workers.pipeline.unlearn", allowed) == []
    assert violations(picture, "workers.modeling.base", "import torch\nimport json\n") == []
