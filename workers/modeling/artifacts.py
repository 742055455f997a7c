"""The artifact store for model versions: content-addressed, checksummed, on a local folder or any fsspec URL.

A version is the directory `ModelAdapter.save` writes (safetensors weights, adapter.json, tokenizer files)
plus a manifest. Its id is the sha256 of its files (each file's path and sha256, sorted), so the same
weights always get the same id and a stored version cannot change under its id. Every load re-hashes the
files against the manifest and refuses a mismatch.

Layout under the root: `versions/<id>/manifest.json` and `versions/<id>/files/<path>`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.registry.artifacts import folder_digest
from workers.modeling.base import ModelAdapter, cache_root

MANIFEST_FILE = "manifest.json"
FILES_DIR = "files"
VERSIONS_DIR = "versions"
CHUNK = 1 << 20


class ArtifactCorrupted(RuntimeError):
    """A stored file does not match the checksum its manifest recorded."""


class VersionNotFound(KeyError):
    pass


@dataclass
class VersionManifest:
    """What a stored version is and where it came from."""

    version_id: str
    adapter_kind: str
    adapter_config: dict[str, Any]
    files: dict[str, str]  # relative path -> sha256
    parent: str | None = None  # the version this one was derived from (unlearning) or None
    training_fingerprint: str | None = None  # fingerprint_samples of the samples that trained this version
    method: str | None = None  # "train", "retrain", "nabla_tau", ...
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VersionManifest:
        return cls(**json.loads(text))


def default_store_url() -> str:
    """LETHE_ARTIFACT_URL, else a folder in the cache directory."""
    return os.environ.get("LETHE_ARTIFACT_URL") or str(cache_root() / "artifacts")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def directory_checksums(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below `directory`."""
    return {
        path.relative_to(directory).as_posix(): sha256_file(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def content_id(files: Mapping[str, str]) -> str:
    """The version id of a set of files: sha256 over their sorted (path, sha256) pairs, the registry's
    sha256 of an artifact folder."""
    return folder_digest(files)


class ArtifactStore:
    """Model versions under `url` (a local path or any fsspec URL such as s3://bucket/prefix, memory://x)."""

    def __init__(self, url: str | Path | None = None, **storage_options: Any):
        import fsspec

        self.url = str(url or default_store_url())
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), VERSIONS_DIR, *parts])

    # -- writing ------------------------------------------------------------------------------------
    def put(
        self,
        adapter: ModelAdapter,
        *,
        parent: str | None = None,
        training_fingerprint: str | None = None,
        method: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> VersionManifest:
        """Store `adapter`'s weights and return the manifest. Storing identical weights again returns the
        existing version untouched (the id is the content)."""
        with tempfile.TemporaryDirectory(prefix="lethe-artifact-") as tmp:
            local = Path(tmp)
            adapter.save(local)
            files = directory_checksums(local)
            version_id = content_id(files)
            if self.exists(version_id):
                return self.manifest(version_id)
            manifest = VersionManifest(
                version_id=version_id,
                adapter_kind=adapter.kind,
                adapter_config=adapter.config(),
                files=files,
                parent=parent,
                training_fingerprint=training_fingerprint,
                method=method,
                metrics=dict(metrics or {}),
                extra=dict(extra or {}),
                created_at=dt.datetime.now(dt.UTC).isoformat(),
            )
            staging = self._path(f".staging-{version_id}")
            for name in files:
                target = f"{staging}/{FILES_DIR}/{name}"
                self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(local / name), target)
            with self.fs.open(f"{staging}/{MANIFEST_FILE}", "w") as handle:
                handle.write(manifest.to_json())
            # the manifest is written last and the folder moved into place, so a version never half-exists
            self.fs.mv(staging, self._path(version_id), recursive=True)
        return manifest

    def update_metrics(self, version_id: str, metrics: Mapping[str, Any]) -> VersionManifest:
        """Merge `metrics` into a version's manifest (metrics are measured after storing)."""
        manifest = self.manifest(version_id)
        manifest.metrics.update(metrics)
        with self.fs.open(self._path(version_id, MANIFEST_FILE), "w") as handle:
            handle.write(manifest.to_json())
        return manifest

    def delete(self, version_id: str) -> None:
        """Purge a version's files and manifest (tainted versions)."""
        if not self.exists(version_id):
            raise VersionNotFound(version_id)
        self.fs.rm(self._path(version_id), recursive=True)

    # -- reading ------------------------------------------------------------------------------------
    def exists(self, version_id: str) -> bool:
        return self.fs.exists(self._path(version_id, MANIFEST_FILE))

    def manifest(self, version_id: str) -> VersionManifest:
        try:
            with self.fs.open(self._path(version_id, MANIFEST_FILE), "r") as handle:
                return VersionManifest.from_json(handle.read())
        except FileNotFoundError:
            raise VersionNotFound(version_id) from None

    def versions(self) -> list[str]:
        base = "/".join([self.root.rstrip("/"), VERSIONS_DIR])
        if not self.fs.exists(base):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        return sorted(n for n in names if not n.startswith(".") and self.exists(n))

    def fetch(self, version_id: str, destination: Path) -> VersionManifest:
        """Copy a version's files into `destination` and verify every checksum (ArtifactCorrupted if not)."""
        manifest = self.manifest(version_id)
        destination = Path(destination)
        for name in manifest.files:
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(self._path(version_id, FILES_DIR, name), str(target))
        found = directory_checksums(destination)
        bad = sorted(n for n, checksum in manifest.files.items() if found.get(n) != checksum)
        if bad or content_id(manifest.files) != version_id:
            raise ArtifactCorrupted(f"version {version_id[:12]}: checksum mismatch in {bad or ['manifest']}")
        return manifest

    def load(
        self, version_id: str, device: torch.device | None = None
    ) -> tuple[ModelAdapter, VersionManifest]:
        """The stored model (checksums verified) and its manifest."""
        from workers.modeling.adapters import load_adapter

        with tempfile.TemporaryDirectory(prefix="lethe-artifact-") as tmp:
            manifest = self.fetch(version_id, Path(tmp))
            return load_adapter(Path(tmp), device=device), manifest
