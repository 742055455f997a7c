"""The API tests' folders: a models root (where customers' artifacts are registered from) and an artifact
store of their own, both under the session's temporary directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import get_settings

FOLDER_SETTINGS = {"LETHE_MODELS_ROOT": "models", "LETHE_ARTIFACT_ROOT": "artifacts"}


@pytest.fixture(scope="session", autouse=True)
def artifact_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("api-folders")
    previous = {name: os.environ.get(name) for name in FOLDER_SETTINGS}
    for name, folder in FOLDER_SETTINGS.items():
        (root / folder).mkdir()
        os.environ[name] = str(root / folder)
    get_settings.cache_clear()
    yield root
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    get_settings.cache_clear()


@pytest.fixture
def models_root(artifact_folders: Path) -> Path:
    return artifact_folders / FOLDER_SETTINGS["LETHE_MODELS_ROOT"]
