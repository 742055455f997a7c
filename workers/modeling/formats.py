"""Loading a model from a folder in any of the formats the registry recognises (app.registry.artifacts).

- `huggingface`: a save_pretrained folder: a causal LM or a sequence classifier by its `architectures`;
- `torch-classifier`: classifier.json naming the architecture, and model.safetensors;
- `lethe`: adapter.json and the files `ModelAdapter.save` wrote.
A folder with Lethe's adapter.json (every version the workers store has one) is loaded by it: it records
exactly how the model was built. Folders may live on any fsspec filesystem; `local_folder` brings one
here (once per sha256) and checks every file against the sha256 it was registered with.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from app.registry.artifacts import CLASSIFIER_CONFIG, HF_CONFIG, SEQUENCE_CLASSIFICATION_SUFFIX
from workers.modeling.artifacts import ArtifactCorrupted, content_id, directory_checksums
from workers.modeling.base import ADAPTER_FILE, ModelAdapter, cache_root

FOLDERS_CACHE = "folders"


class UnloadableArtifact(ValueError):
    """The files are there but do not make a model this service can drive (the message says why)."""


def check_digest(directory: Path, sha256: str | None) -> None:
    if sha256 is None:
        return
    found = content_id(directory_checksums(directory))
    if found != sha256:
        raise ArtifactCorrupted(f"{directory}: files have sha256 {found}, registered as {sha256}")


def local_folder(uri: str, sha256: str | None = None) -> Path:
    """A local folder holding the artifact at `uri` (a local path, or an fsspec URL fetched into the cache
    once per sha256), its files checked against `sha256`."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        directory = Path(parts.path if parts.scheme == "file" else uri)
        if not directory.is_dir():
            raise FileNotFoundError(f"no artifact folder at {uri}")
        check_digest(directory, sha256)
        return directory
    if sha256 is None:
        raise ValueError(f"{uri}: a remote artifact is fetched by its sha256, and none is known")
    cached = cache_root() / FOLDERS_CACHE / sha256
    if cached.is_dir():
        check_digest(cached, sha256)
        return cached
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=cached.parent))
    try:
        prefix = root.rstrip("/") + "/"
        for path in fs.find(root):
            target = staging / path[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))
        check_digest(staging, sha256)
        staging.rename(cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cached


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnloadableArtifact(f"{path.name}: {exc}") from exc
    if not isinstance(value, dict):
        raise UnloadableArtifact(f"{path.name} is not a JSON object")
    return value


def load_folder(
    directory: Path, base: dict[str, Any] | None = None, device: torch.device | None = None
) -> ModelAdapter:
    """The model saved in `directory`. `base` ({uri, sha256}: where the folder itself lives) is what a
    rebuild of a registered model's architecture starts from; default: the directory."""
    from workers.modeling.adapters import load_adapter

    directory = Path(directory)
    base = base or {"uri": str(directory), "sha256": None}
    try:
        if (directory / ADAPTER_FILE).is_file():
            return load_adapter(directory, device=device)
        if (directory / HF_CONFIG).is_file():
            return _huggingface(directory, base, device)
        if (directory / CLASSIFIER_CONFIG).is_file():
            from workers.modeling.adapters.torch_classifier import TorchClassifierAdapter

            return TorchClassifierAdapter.from_folder(directory, device)
    except (UnloadableArtifact, FileNotFoundError, ArtifactCorrupted):
        raise
    except Exception as exc:  # transformers and safetensors say what is wrong in their own words
        raise UnloadableArtifact(f"{type(exc).__name__}: {exc}") from exc
    raise UnloadableArtifact(f"{directory}: no {HF_CONFIG}, {CLASSIFIER_CONFIG} or {ADAPTER_FILE}")


def _huggingface(directory: Path, base: dict[str, Any], device: torch.device | None) -> ModelAdapter:
    from workers.modeling.adapters.hf import HFCausalLMAdapter, HFSequenceClassifierAdapter

    architectures = _json(directory / HF_CONFIG).get("architectures") or [""]
    if str(architectures[0]).endswith(SEQUENCE_CLASSIFICATION_SUFFIX):
        return HFSequenceClassifierAdapter.from_folder(directory, base, device)
    return HFCausalLMAdapter.from_folder(directory, base, device)
