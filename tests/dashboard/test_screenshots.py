"""`make screenshots` (python -m tests.dashboard.screenshots) photographs every page it promises, from
this checkout, in a process of its own (it builds its own scratch database)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.dashboard.screenshots import REPO, WIDTH

pytestmark = pytest.mark.browser
SHOTS = (
    "requests.png",
    "request-running.png",
    "request-completed.png",
    "request-failed.png",
    "certificate.png",
    "models.png",
    "audit.png",
)


def test_screenshots_are_made_by_one_command(tmp_path: Path, database_url: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "LETHE_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.dashboard.screenshots", str(tmp_path)],
        cwd=REPO,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in tmp_path.glob("*.png")) == sorted(SHOTS)
    for name in SHOTS:
        with Image.open(tmp_path / name) as shot:
            assert shot.format == "PNG" and shot.width == WIDTH and shot.height >= 400
    shown = re.findall(r"\(docs/screenshots/([\w-]+\.png)\)", (REPO / "README.md").read_text())
    assert shown and set(shown) <= set(SHOTS)  # the README shows one that the command makes
