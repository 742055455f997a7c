"""A version handed back in the format it came in: its artifact folder as one tar archive.

The archive is deterministic (files sorted, owner 0, mode 0644, mtime 0) and holds the folder under one
top-level directory `<model>-v<version>/`, so `tar xf` gives a folder that the format's own loader opens
(`from_pretrained` for a Hugging Face folder). It is written to a spooled temporary file first: every
file's sha256 is checked against the version's `artifact_sha256` before a byte is sent, and the archive's
own digest goes out as a header (`Repr-Digest`, RFC 9530) with the length.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from app.errors import ProblemError
from app.registry import artifacts
from app.registry.models import ModelVersion

SPOOL_IN_MEMORY_BYTES = 64 << 20
STREAM_CHUNK = 1 << 20


@dataclass
class Archive:
    file: IO[bytes]
    size: int
    sha256: str  # of the archive's bytes
    directory: str  # the top-level folder inside it

    @property
    def repr_digest(self) -> str:
        return f"sha-256=:{base64.b64encode(bytes.fromhex(self.sha256)).decode()}:"

    def chunks(self) -> Iterator[bytes]:
        try:
            self.file.seek(0)
            while chunk := self.file.read(STREAM_CHUNK):
                yield chunk
        finally:
            self.file.close()


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes what passes through it into `target`."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.target.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)


class _HashingReader:
    """Reads a file while hashing it (each file is read once: into the archive and into its checksum)."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        return data


def build_archive(version: ModelVersion, directory: str) -> Archive:
    """The version's files as a tar archive; 409 when they no longer match the registered sha256."""
    location = artifacts.locate(version.artifact_uri or "")
    try:
        files = artifacts.list_files(location)
    except ProblemError as exc:
        raise ProblemError(
            409,
            "Conflict",
            f"the artifact of version {version.version} is gone: {exc.detail}",
            "artifact-gone",
        ) from exc
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 - closed by chunks()
    writer = _HashingWriter(spool)
    checksums: dict[str, str] = {}
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in files:
            info = tarfile.TarInfo(f"{directory}/{name}")
            info.size = location.fs.size(location.path(name))
            info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
            with location.open(name) as handle:
                reader = _HashingReader(handle)
                tar.addfile(info, reader)  # type: ignore[arg-type]
            checksums[name] = reader.digest.hexdigest()
    if artifacts.folder_digest(checksums) != version.artifact_sha256:
        spool.close()
        raise ProblemError(
            409, "Conflict",
            f"the files of version {version.version} changed since registration (sha256 differs); "
            "nothing was sent",
            "artifact-changed",
        )  # fmt: skip
    return Archive(spool, writer.size, writer.digest.hexdigest(), directory)
