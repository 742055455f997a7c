"""Checkpoints: each tenant's audit chain head, signed and kept where a database writer cannot rewrite it.

The hash chain (app.audit.service) shows that rows were changed, but someone who can write the database
can also delete the tail and move the head back, delete a tenant's whole chain, or edit an event and
compute every later hash again: the chain then verifies. A checkpoint anchors the chain outside the
database, as Certificate Transparency's signed tree heads (RFC 6962) anchor a log: a statement
{tenant, seq, head hash, time, previous checkpoint}, signed with an Ed25519 key of its own
(settings.audit_signing_key), appended to a per-tenant JSON Lines file under settings.audit_checkpoint_dir
and sent to the tenant's subscribers as an `audit.checkpoint` webhook event, so that a copy also lives
with them. With a hash chain, the consistency proof between two heads is the events between them: a new
checkpoint is signed only if the chain still holds the previous one's head and its later events link
from it; otherwise signing stops and the break is logged.

The workers sign every `audit_checkpoint_interval_seconds` (the heads that moved) and for each issued
deletion certificate (its tenant, through the outbox). Verification against the latest checkpoint
(`check_latest`) finds a truncated tail, a deleted chain and a recomputed one: the event at the
checkpoint's seq must exist and still have the hash that was signed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.models import GENESIS_HASH, AuditEvent, AuditHead
from app.audit.service import event_hash
from app.certificates.signing import SigningKey, canonical_bytes, key_id_of, load_private_key
from app.db import get_session_factory, utcnow
from app.outbox.celery_client import AUDIT_CHECKPOINT_TASK
from app.outbox.service import enqueue
from app.settings import get_settings
from app.webhooks.events import EventType
from app.webhooks.service import enqueue_event

log = logging.getLogger("lethe.audit.checkpoints")

FORMAT = "lethe.audit-checkpoint/1"
ALGORITHM = "Ed25519"
_TENANT_FILE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_SIGNATURE_FIELDS = frozenset({"algorithm", "key_id", "public_key", "value"})
_TAIL_BLOCK = 8192


class CheckpointError(ValueError):
    """A stored checkpoint that does not parse or does not verify."""


@lru_cache(maxsize=1)
def audit_signing_key() -> SigningKey:
    """The configured audit key (settings.audit_signing_key); a throwaway one, loudly, when unset."""
    configured = get_settings().audit_signing_key
    if configured is not None and configured.get_secret_value().strip():
        try:
            return SigningKey(load_private_key(configured.get_secret_value()))
        except ValueError as exc:
            raise ValueError(f"LETHE_AUDIT_SIGNING_KEY: {exc}") from exc
    key = SigningKey(Ed25519PrivateKey.generate())
    log.warning(
        "LETHE_AUDIT_SIGNING_KEY is not set: audit checkpoints are signed with a throwaway key (key id %s) "
        "that dies with this process; they prove integrity but not who signed them",
        key.key_id,
    )
    return key


def trusted_key() -> Ed25519PublicKey | None:
    """The public key checkpoints must be signed with; None when no audit key is configured."""
    configured = get_settings().audit_signing_key
    if configured is None or not configured.get_secret_value().strip():
        return None
    return audit_signing_key().public_key


# --- the signed statement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    tenant_id: str
    seq: int  # events in the chain (its tree size)
    head_hash: str  # hash of event `seq` (GENESIS_HASH for an empty chain)
    issued_at: datetime
    previous: str | None  # sha256 of the tenant's previous checkpoint line
    key_id: str
    line: bytes  # the signed line, as stored

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.line).hexdigest()

    def document(self) -> dict[str, Any]:
        return json.loads(self.line)


def sign_checkpoint(
    key: SigningKey, tenant_id: str, seq: int, head_hash: str, previous: str | None, issued_at: datetime
) -> Checkpoint:
    statement = {
        "format": FORMAT,
        "tenant_id": tenant_id,
        "seq": seq,
        "head_hash": head_hash,
        "issued_at": issued_at.isoformat(),
        "previous": previous,
    }
    public = key.public_key.public_bytes_raw()
    line = canonical_bytes(
        {
            "checkpoint": statement,
            "signature": {
                "algorithm": ALGORITHM,
                "key_id": key.key_id,
                "public_key": base64.b64encode(public).decode(),
                "value": key.private_key.sign(canonical_bytes(statement)).hex(),
            },
        }
    )
    return Checkpoint(tenant_id, seq, head_hash, issued_at, previous, key.key_id, line)


def parse_checkpoint(line: bytes, public_key: Ed25519PublicKey | None = None) -> Checkpoint:
    """A stored line, its signature checked against `public_key` when given, else against the key it
    embeds (integrity only); CheckpointError otherwise."""
    try:
        document = json.loads(line)
        statement, signature = document["checkpoint"], document["signature"]
        if canonical_bytes(document) != line or set(signature) != _SIGNATURE_FIELDS:
            raise CheckpointError("not a checkpoint in canonical form")
        if statement["format"] != FORMAT or signature["algorithm"] != ALGORITHM:
            raise CheckpointError("unknown checkpoint format or signature algorithm")
        embedded = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(signature["public_key"], validate=True)
        )
        value = bytes.fromhex(signature["value"])
        checkpoint = Checkpoint(
            tenant_id=str(statement["tenant_id"]),
            seq=int(statement["seq"]),
            head_hash=str(statement["head_hash"]),
            issued_at=datetime.fromisoformat(statement["issued_at"]),
            previous=statement["previous"],
            key_id=str(signature["key_id"]),
            line=line,
        )
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise CheckpointError(f"not a checkpoint: {exc}") from exc
    if key_id_of(embedded) != checkpoint.key_id:
        raise CheckpointError("the embedded public key does not match the key id")
    if public_key is not None and public_key.public_bytes_raw() != embedded.public_bytes_raw():
        raise CheckpointError(
            f"signed by key {checkpoint.key_id}, not by the audit key {key_id_of(public_key)}"
        )
    try:
        embedded.verify(value, canonical_bytes(statement))
    except InvalidSignature as exc:
        raise CheckpointError("the signature does not match the checkpoint") from exc
    return checkpoint


# --- where checkpoints are kept ------------------------------------------------------------------------


class CheckpointStore:
    """One append-only JSON Lines file per tenant under `root`. Writers of a tenant's file take an
    exclusive lock on it (flock), so that reading the last checkpoint, checking the chain against it and
    appending the next happen as one step across processes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, tenant_id: str) -> Path:
        if not _TENANT_FILE.fullmatch(tenant_id):
            raise ValueError(f"not a tenant id: {tenant_id!r}")
        return self.root / f"{tenant_id}.jsonl"

    def tenants(self) -> list[str]:
        return sorted(path.stem for path in self.root.glob("*.jsonl")) if self.root.is_dir() else []

    def lines(self, tenant_id: str) -> list[bytes]:
        path = self.path(tenant_id)
        return [line for line in path.read_bytes().splitlines() if line] if path.exists() else []

    def latest(self, tenant_id: str, handle: IO[bytes] | None = None) -> bytes | None:
        """The last complete line (a line torn by a crash mid-write is passed over)."""
        if handle is None:
            path = self.path(tenant_id)
            if not path.exists():
                return None
            with path.open("rb") as opened:
                return _last_complete_line(opened)
        return _last_complete_line(handle)

    @contextlib.contextmanager
    def locked(self, tenant_id: str) -> Iterator[IO[bytes]]:
        path = self.path(tenant_id)
        created = not path.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        with path.open("a+b") as handle:
            if created:
                _fsync_folder(self.root)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def append(self, handle: IO[bytes], line: bytes) -> None:
        """Append one line and make it durable before anyone is told of it."""
        handle.seek(0, os.SEEK_END)
        if handle.tell() and not _ends_with_newline(handle):
            handle.write(b"\n")  # end a line torn by a crash, which readers then pass over
        handle.write(line + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def _ends_with_newline(handle: IO[bytes]) -> bool:
    handle.seek(-1, os.SEEK_END)
    last = handle.read(1)
    handle.seek(0, os.SEEK_END)
    return last == b"\n"


def _last_complete_line(handle: IO[bytes]) -> bytes | None:
    handle.seek(0, os.SEEK_END)
    position = handle.tell()
    data = b""
    while position > 0:
        step = min(_TAIL_BLOCK, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
        complete, _, _torn = data.rpartition(b"\n")
        lines = complete.split(b"\n")
        # The first line of `data` may be cut by the block boundary unless the file starts there.
        candidates = lines if position == 0 else lines[1:]
        for line in reversed(candidates):
            if line:
                return line
    return None


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def default_store() -> CheckpointStore:
    return CheckpointStore(get_settings().audit_checkpoint_dir)


# --- signing heads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    tenant_id: str
    checkpoint: Checkpoint | None  # None: nothing new to sign, or refused (see `refused`)
    refused: str | None = None


def request_checkpoint(session: Session, tenant_id: str) -> None:
    """Have a worker checkpoint the tenant's head once the caller's transaction has committed (the head
    then includes what the transaction recorded)."""
    enqueue(session, AUDIT_CHECKPOINT_TASK, {"tenant_id": tenant_id})


def checkpoint_tenants(tenant_ids: Iterable[str], store: CheckpointStore | None = None) -> list[Signed]:
    """Sign the committed head of each tenant that moved since its last checkpoint."""
    store = store or default_store()
    return [_checkpoint_tenant(store, tenant_id) for tenant_id in tenant_ids]


def checkpoint_moved_heads(store: CheckpointStore | None = None) -> list[Signed]:
    """The interval pass: checkpoint every tenant whose head is not the one last signed."""
    store = store or default_store()
    with get_session_factory()() as session:
        heads = session.execute(
            select(AuditHead.tenant_id, AuditHead.seq, AuditHead.hash).where(AuditHead.seq > 0)
        ).all()
    moved = [
        tenant_id for tenant_id, seq, head_hash in heads if _last_signed(store, tenant_id) != (seq, head_hash)
    ]
    return checkpoint_tenants(moved, store)


# The head each tenant's file ends with, as this process last read or wrote it: the interval pass then
# reads a file only when the tenant's head moved.
_signed_heads: dict[tuple[str, str], tuple[int, str]] = {}


def _last_signed(store: CheckpointStore, tenant_id: str) -> tuple[int, str] | None:
    key = (str(store.root), tenant_id)
    if key not in _signed_heads:
        line = store.latest(tenant_id)
        if line is None:
            return None
        try:
            last = parse_checkpoint(line)
        except CheckpointError:
            return None
        _signed_heads[key] = (last.seq, last.head_hash)
    return _signed_heads[key]


def _checkpoint_tenant(store: CheckpointStore, tenant_id: str) -> Signed:
    with store.locked(tenant_id) as handle, get_session_factory()() as session:
        line = store.latest(tenant_id, handle)
        try:
            previous = parse_checkpoint(line) if line is not None else None
        except CheckpointError as exc:
            log.error(
                "audit checkpoint refused for tenant %s: the last checkpoint does not verify: %s",
                tenant_id,
                exc,
            )
            return Signed(tenant_id, None, f"the last checkpoint does not verify: {exc}")
        head = session.get(AuditHead, tenant_id)
        seq, head_hash = (head.seq, head.hash) if head is not None else (0, GENESIS_HASH)
        if previous is not None and (previous.seq, previous.head_hash) == (seq, head_hash):
            _signed_heads[(str(store.root), tenant_id)] = (seq, head_hash)
            return Signed(tenant_id, None)
        problem = chain_extends(session, tenant_id, previous, seq, head_hash)
        if problem is not None:
            log.error("audit checkpoint refused for tenant %s: %s", tenant_id, problem)
            return Signed(tenant_id, None, problem)
        checkpoint = sign_checkpoint(
            audit_signing_key(), tenant_id, seq, head_hash, previous.digest if previous else None, utcnow()
        )
        store.append(handle, checkpoint.line)
        _signed_heads[(str(store.root), tenant_id)] = (seq, head_hash)
        enqueue_event(session, tenant_id, EventType.AUDIT_CHECKPOINT, checkpoint.document())
        session.commit()
        log.info("audit checkpoint: tenant %s at seq %d", tenant_id, seq)
        return Signed(tenant_id, checkpoint)


def chain_extends(
    session: Session, tenant_id: str, previous: Checkpoint | None, seq: int, head_hash: str
) -> str | None:
    """Why the chain at head (seq, head_hash) is not the previous checkpoint's chain grown by later
    events (None when it is): the previous head must still be in the chain, and every event after it
    must link to its predecessor and hash as stored."""
    from_seq, from_hash = (previous.seq, previous.head_hash) if previous else (0, GENESIS_HASH)
    if seq < from_seq:
        return f"the chain ends at seq {seq}, before the last checkpoint's seq {from_seq}"
    if from_seq:
        anchor = session.scalar(
            select(AuditEvent.hash).where(AuditEvent.tenant_id == tenant_id, AuditEvent.seq == from_seq)
        )
        if anchor != from_hash:
            return f"event {from_seq} no longer has the hash the last checkpoint signed"
    events = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.tenant_id == tenant_id, AuditEvent.seq > from_seq, AuditEvent.seq <= seq)
        .order_by(AuditEvent.seq)
    )
    expected, prev_hash = from_seq + 1, from_hash
    for event in events:
        if (
            event.seq != expected
            or event.prev_hash != prev_hash
            or event_hash(prev_hash, event) != event.hash
        ):
            return f"event {expected} is missing or altered"
        expected, prev_hash = expected + 1, event.hash
    if expected != seq + 1 or prev_hash != head_hash:
        return f"event {expected} is missing"
    return None


# --- verifying against the latest checkpoint -----------------------------------------------------------


@dataclass(frozen=True)
class CheckpointCheck:
    ok: bool
    checkpoint: Checkpoint | None  # the latest checkpoint (None: none yet, or it does not verify)
    key_trusted: bool = False  # signed by the configured audit key (False: integrity only)
    reason: str | None = None
    broken_at: int | None = None


def check_latest(session: Session, tenant_id: str, store: CheckpointStore | None = None) -> CheckpointCheck:
    """Whether the tenant's chain in the database still holds the head of its latest checkpoint."""
    store = store or default_store()
    line = store.latest(tenant_id)
    if line is None:
        return CheckpointCheck(ok=True, checkpoint=None)
    key = trusted_key()
    try:
        checkpoint = parse_checkpoint(line, key)
    except CheckpointError as exc:
        return CheckpointCheck(
            ok=False, checkpoint=None, reason=f"the latest checkpoint does not verify: {exc}"
        )
    if checkpoint.tenant_id != tenant_id:
        return CheckpointCheck(ok=False, checkpoint=None, reason="the latest checkpoint names another tenant")
    found = CheckpointCheck(ok=True, checkpoint=checkpoint, key_trusted=key is not None)
    if checkpoint.seq == 0:
        return found
    when = checkpoint.issued_at.isoformat()
    stored = session.scalar(
        select(AuditEvent.hash).where(AuditEvent.tenant_id == tenant_id, AuditEvent.seq == checkpoint.seq)
    )
    if stored == checkpoint.head_hash:
        return found
    broken_at = checkpoint.seq  # the event whose hash changed (an earlier one was edited, then rehashed)
    if stored is not None:
        reason = f"the chain was rewritten: event {checkpoint.seq} does not have the hash signed at {when}"
    else:
        last = session.scalar(
            select(AuditEvent.seq)
            .where(AuditEvent.tenant_id == tenant_id)
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        )
        broken_at = (last or 0) + 1  # the first event missing
        reason = (
            f"the chain was deleted: the checkpoint of {when} covers {checkpoint.seq} events"
            if last is None
            else f"the chain was truncated: it ends at event {last}, the checkpoint of {when} "
            f"covers {checkpoint.seq}"
        )
    return CheckpointCheck(
        ok=False, checkpoint=checkpoint, key_trusted=key is not None, reason=reason, broken_at=broken_at
    )


def check_all(session: Session, store: CheckpointStore | None = None) -> dict[str, CheckpointCheck]:
    """Every tenant with a checkpoint, against the database (for operators: a tenant whose rows were
    all deleted, heads and keys included, can no longer ask for its own verification)."""
    store = store or default_store()
    return {tenant_id: check_latest(session, tenant_id, store) for tenant_id in store.tenants()}
