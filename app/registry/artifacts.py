"""A model artifact recognised from its files, without loading it: the API never imports torch.

An artifact is a folder, named by `artifact_uri`:
- a path under `settings.models_root` (relative to it, absolute, or `file://`); a path that leaves the
  root (`..`, a symlink out) is refused;
- an fsspec URL of an allowed protocol (`settings.artifact_url_protocols`, e.g. `s3://bucket/model`);
- `artifact://<id>`: a version the workers stored in the artifact store.

Formats (checked in this order):
- `huggingface`: a `save_pretrained` folder: config.json with `model_type` and `architectures`, weights as
  safetensors (model.safetensors, or an index and its shards; pickled .bin weights are refused), tokenizer
  files. A *ForCausalLM / *LMHeadModel architecture serves task causal-lm, a *ForSequenceClassification
  one task sequence-classification (its trained head is kept).
- `torch-classifier`: classifier.json naming the architecture (`mlp` or `cnn`, with its sizes) and
  model.safetensors; tasks tabular-classification and image-classification.
- `lethe`: adapter.json (`{kind, config}`) and model.safetensors, as the engine saves a model.

The artifact's sha256 is `folder_digest`: sha256 over the lines `<relative path>\\0<sha256 of the file>\\n`
of every file, sorted by path (the content id of the artifact store). Loading the model is the workers'
check (a task through the outbox); everything above is checked here, at registration.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.errors import ProblemError, unprocessable
from app.registry.models import ArtifactFormat, ModelTask
from app.settings import get_settings

ARTIFACT_SCHEME = "artifact"
STORE_VERSIONS_DIR = "versions"
STORE_FILES_DIR = "files"
CHUNK = 1 << 20

HF_CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CLASSIFIER_CONFIG = "classifier.json"
ADAPTER_CONFIG = "adapter.json"
MAX_JSON_BYTES = 16 << 20
MAX_SAFETENSORS_HEADER = 100 << 20

CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
SEQUENCE_CLASSIFICATION_SUFFIX = "ForSequenceClassification"
# Model families the Hugging Face adapters drive (token embeddings, hidden states, a padding token);
# another family is refused at registration rather than failing later inside a deletion.
CAUSAL_LM_MODEL_TYPES = frozenset(
    {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen3", "phi", "phi3",
     "gemma", "gemma2", "opt", "bloom", "falcon", "olmo", "olmo2", "starcoder2", "codegen"}
)  # fmt: skip
SEQUENCE_CLASSIFICATION_MODEL_TYPES = frozenset(
    {"bert", "distilbert", "roberta", "xlm-roberta", "albert", "electra", "deberta", "deberta-v2", "mpnet",
     "camembert", "modernbert"}
)  # fmt: skip
TORCH_ARCHITECTURES = frozenset({"mlp", "cnn"})
# Lethe adapter kinds (workers.modeling.adapters) and the tasks they serve.
LETHE_KIND_TASKS: dict[str, frozenset[str]] = {
    "torch-classifier": frozenset({ModelTask.IMAGE_CLASSIFICATION, ModelTask.TABULAR_CLASSIFICATION}),
    "causal-lm": frozenset({ModelTask.CAUSAL_LM}),
    "hf-causal-lm": frozenset({ModelTask.CAUSAL_LM}),
    "sequence-classifier": frozenset({ModelTask.SEQUENCE_CLASSIFICATION}),
    "hf-sequence-classifier": frozenset({ModelTask.SEQUENCE_CLASSIFICATION}),
}
TORCH_TASKS = LETHE_KIND_TASKS["torch-classifier"]


def refused(detail: str, code: str) -> ProblemError:
    return unprocessable(f"artifact_uri: {detail}", code)


# --- where an artifact lives -------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A folder on some filesystem: `fs` is an fsspec filesystem, `root` the folder's path on it. A local
    folder under the models root is `confined` to it: no file may resolve outside (a symlink out would
    let a registrant read, and download, any file of the host)."""

    fs: Any
    root: str
    confined: Path | None = None

    def path(self, relative: str) -> str:
        return posixpath.join(self.root, relative)

    def open(self, relative: str) -> Any:
        return self.fs.open(self.path(relative), "rb")

    def read_bytes(self, relative: str, limit: int) -> bytes:
        with self.open(relative) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise refused(f"{relative} is larger than {limit} bytes", "artifact-file-too-large")
        return data


def _local(path: Path, confined: Path | None = None) -> Location:
    from fsspec.implementations.local import LocalFileSystem

    return Location(LocalFileSystem(), str(path), confined)


def models_root() -> Path:
    return Path(get_settings().models_root).resolve()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def under_models_root(path: str) -> Path:
    """`path` (relative to the models root, or absolute) resolved, symlinks followed; refused when it
    ends up outside the root."""
    root = models_root()
    resolved = (root / path).resolve()
    if not _inside(resolved, root):
        raise refused(
            f"{path!r} is outside the models root (LETHE_MODELS_ROOT); put the artifact below it or use "
            "an fsspec URL",
            "artifact-outside-models-root",
        )
    return resolved


def store_location(artifact_id: str) -> Location:
    """The files of a version in the artifact store (`settings.artifact_root`, a folder or fsspec URL)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(get_settings().artifact_root)
    return Location(fs, posixpath.join(root, STORE_VERSIONS_DIR, artifact_id, STORE_FILES_DIR))


def store_artifact_id(uri: str | None) -> str | None:
    """The artifact-store id of `artifact://<id>`; None for any other URI."""
    if not uri:
        return None
    parts = urlsplit(uri)
    return parts.netloc if parts.scheme == ARTIFACT_SCHEME and parts.netloc else None


def locate(uri: str) -> Location:
    """Where `uri` points; 422 for a path outside the models root or a protocol that is not allowed."""
    stored = store_artifact_id(uri)
    if stored is not None:
        return store_location(stored)
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return _local(under_models_root(parts.path if parts.scheme == "file" else uri), models_root())
    allowed = get_settings().artifact_url_protocols
    if parts.scheme not in allowed:
        raise refused(
            f"protocol {parts.scheme!r} is not allowed (LETHE_ARTIFACT_URL_PROTOCOLS: {', '.join(allowed)})",
            "artifact-protocol-not-allowed",
        )
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise refused(f"cannot open {parts.scheme}:// URLs here: {exc}", "artifact-unreachable") from exc
    return Location(fs, root.rstrip("/"))


def list_files(location: Location) -> list[str]:
    """Relative paths of every file below the folder, sorted; 422 when it is not a folder."""
    try:
        if not location.fs.isdir(location.root):
            raise refused(
                "no folder at this location (an artifact is a folder of files)", "artifact-not-found"
            )
        found = location.fs.find(location.root)
    except (FileNotFoundError, PermissionError) as exc:
        raise refused(f"cannot read the artifact: {exc}", "artifact-not-found") from exc
    prefix = location.root.rstrip("/") + "/"
    files = sorted(path[len(prefix) :] for path in found if path.startswith(prefix))
    if location.confined is not None:
        escaping = [
            name for name in files if not _inside(Path(location.path(name)).resolve(), location.confined)
        ]
        if escaping:
            raise refused(
                f"{escaping[0]!r} links to a file outside the models root", "artifact-outside-models-root"
            )
    return files


# --- the sha256 of an artifact --------------------------------------------------------------------------


def folder_digest(checksums: Mapping[str, str]) -> str:
    """sha256 over the sorted (relative path, sha256) pairs of a folder's files."""
    digest = hashlib.sha256()
    for name in sorted(checksums):
        digest.update(f"{name}\0{checksums[name]}\n".encode())
    return digest.hexdigest()


def file_sha256(location: Location, relative: str) -> str:
    digest = hashlib.sha256()
    with location.open(relative) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(location: Location, files: list[str]) -> dict[str, str]:
    return {name: file_sha256(location, name) for name in files}


# --- recognising the format -----------------------------------------------------------------------------


@dataclass
class ArtifactInfo:
    """What registration learnt of an artifact from its files."""

    format: ArtifactFormat
    sha256: str
    files: list[str]
    facts: dict[str, Any] = field(default_factory=dict)  # architecture, labels, ... (shown to the caller)


def _json_object(location: Location, relative: str) -> dict[str, Any]:
    try:
        value = json.loads(location.read_bytes(relative, MAX_JSON_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise refused(f"{relative} is not valid JSON: {exc}", "artifact-config-invalid") from exc
    if not isinstance(value, dict):
        raise refused(f"{relative} must hold a JSON object", "artifact-config-invalid")
    return value


def _check_safetensors(location: Location, relative: str) -> None:
    """The file starts with a safetensors header (8-byte length, then a JSON object of tensors)."""
    with location.open(relative) as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise refused(f"{relative} is not a safetensors file (too short)", "artifact-weights-invalid")
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= MAX_SAFETENSORS_HEADER:
            raise refused(f"{relative} is not a safetensors file", "artifact-weights-invalid")
        header = handle.read(length)
    try:
        tensors = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise refused(f"{relative} is not a safetensors file", "artifact-weights-invalid") from None
    if not isinstance(tensors, dict) or not any(name != "__metadata__" for name in tensors):
        raise refused(f"{relative} holds no tensors", "artifact-weights-invalid")


def _weights(location: Location, files: set[str]) -> list[str]:
    """The safetensors weight files of a Hugging Face folder (the index's shards, or the single file)."""
    if SAFETENSORS_INDEX in files:
        index = _json_object(location, SAFETENSORS_INDEX)
        shards = sorted(set((index.get("weight_map") or {}).values()))
        missing = [name for name in shards if name not in files]
        if not shards or missing:
            raise refused(
                f"{SAFETENSORS_INDEX} names weight files that are not there: {missing[:5]}",
                "artifact-missing-weights",
            )
        return shards
    if SAFETENSORS in files:
        return [SAFETENSORS]
    if files.intersection(PICKLED_WEIGHTS):
        raise refused(
            "weights must be safetensors (pickled pytorch_model.bin files can run code when loaded); "
            "save with save_pretrained(..., safe_serialization=True)",
            "artifact-weights-not-safetensors",
        )
    raise refused(f"no weights: expected {SAFETENSORS} (or {SAFETENSORS_INDEX})", "artifact-missing-weights")


def _task_of_architecture(architecture: str) -> ModelTask | None:
    if architecture.endswith(CAUSAL_LM_SUFFIXES):
        return ModelTask.CAUSAL_LM
    if architecture.endswith(SEQUENCE_CLASSIFICATION_SUFFIX):
        return ModelTask.SEQUENCE_CLASSIFICATION
    return None


def _huggingface(location: Location, files: set[str], task: ModelTask) -> tuple[list[str], dict[str, Any]]:
    config = _json_object(location, HF_CONFIG)
    model_type = config.get("model_type")
    architectures = config.get("architectures")
    if not isinstance(model_type, str) or not isinstance(architectures, list) or not architectures:
        raise refused(
            f"{HF_CONFIG} names no model_type and architectures: save the model with save_pretrained",
            "artifact-config-invalid",
        )
    architecture = str(architectures[0])
    served = _task_of_architecture(architecture)
    if served is None:
        raise refused(
            f"architecture {architecture!r} is not a *ForCausalLM or *ForSequenceClassification model",
            "artifact-unknown-architecture",
        )
    known = CAUSAL_LM_MODEL_TYPES if served == ModelTask.CAUSAL_LM else SEQUENCE_CLASSIFICATION_MODEL_TYPES
    if model_type not in known:
        raise refused(
            f"model_type {model_type!r} is not a family Lethe drives; known: {', '.join(sorted(known))}",
            "artifact-unknown-architecture",
        )
    if served != task:
        raise refused(f"a {architecture} serves task {served}, not {task}", "artifact-task-mismatch")
    if not files.intersection(TOKENIZER_FILES):
        raise refused(
            "no tokenizer: save it into the same folder (tokenizer.save_pretrained)",
            "artifact-missing-tokenizer",
        )
    facts: dict[str, Any] = {"architecture": architecture, "model_type": model_type}
    if served == ModelTask.SEQUENCE_CLASSIFICATION:
        labels = config.get("id2label") or {}
        facts["num_labels"] = len(labels) if isinstance(labels, dict) and labels else 2
    return _weights(location, files), facts


def _positive_ints(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )


def check_classifier_config(config: Mapping[str, Any]) -> str | None:
    """What is wrong with a torch classifier's config (classifier.json), or None."""
    architecture = config.get("architecture")
    if architecture not in TORCH_ARCHITECTURES:
        return f"architecture {architecture!r} is unknown; known: {', '.join(sorted(TORCH_ARCHITECTURES))}"
    if not _positive_ints(config.get("input_shape")) or not config["input_shape"]:
        return "input_shape must be a list of positive integers (e.g. [13] for 13 features)"
    if architecture == "cnn" and len(config["input_shape"]) != 3:
        return "a cnn needs input_shape [channels, height, width]"
    num_classes = config.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        return "num_classes must be an integer >= 2"
    for key in ("hidden", "channels"):
        if key in config and not _positive_ints(config[key]):
            return f"{key} must be a list of positive integers"
    return None


def _torch_classifier(
    location: Location, files: set[str], task: ModelTask
) -> tuple[list[str], dict[str, Any]]:
    config = _json_object(location, CLASSIFIER_CONFIG)
    problem = check_classifier_config(config)
    if problem is not None:
        code = (
            "artifact-unknown-architecture"
            if problem.startswith("architecture")
            else "artifact-config-invalid"
        )
        raise refused(f"{CLASSIFIER_CONFIG}: {problem}", code)
    if task not in TORCH_TASKS:
        raise refused(
            f"a torch classifier serves {sorted(TORCH_TASKS)}, not {task}", "artifact-task-mismatch"
        )
    if SAFETENSORS not in files:
        raise refused(f"no weights: expected {SAFETENSORS}", "artifact-missing-weights")
    facts = {"architecture": config["architecture"], "num_classes": config["num_classes"]}
    return [SAFETENSORS], facts


def _lethe(location: Location, files: set[str], task: ModelTask) -> tuple[list[str], dict[str, Any]]:
    spec = _json_object(location, ADAPTER_CONFIG)
    kind = spec.get("kind")
    if kind not in LETHE_KIND_TASKS or not isinstance(spec.get("config"), dict):
        raise refused(
            f"{ADAPTER_CONFIG}: kind {kind!r} is unknown; known: {', '.join(sorted(LETHE_KIND_TASKS))}",
            "artifact-unknown-architecture",
        )
    if task not in LETHE_KIND_TASKS[kind]:
        raise refused(f"a {kind} model does not serve task {task}", "artifact-task-mismatch")
    if SAFETENSORS not in files:
        raise refused(f"no weights: expected {SAFETENSORS}", "artifact-missing-weights")
    return [SAFETENSORS], {"kind": kind}


def detect_format(files: set[str]) -> ArtifactFormat:
    if HF_CONFIG in files:
        return ArtifactFormat.HUGGINGFACE
    if CLASSIFIER_CONFIG in files:
        return ArtifactFormat.TORCH_CLASSIFIER
    if ADAPTER_CONFIG in files:
        return ArtifactFormat.LETHE
    raise refused(
        f"format not recognised: expected {HF_CONFIG} (a Hugging Face save_pretrained folder), "
        f"{CLASSIFIER_CONFIG} (a torch classifier) or {ADAPTER_CONFIG} (Lethe's layout)",
        "artifact-format-unknown",
    )


CHECKERS = {
    ArtifactFormat.HUGGINGFACE: _huggingface,
    ArtifactFormat.TORCH_CLASSIFIER: _torch_classifier,
    ArtifactFormat.LETHE: _lethe,
}


def inspect_artifact(uri: str, task: ModelTask, expected_sha256: str | None = None) -> ArtifactInfo:
    """Recognise the artifact at `uri` for a model of `task` and compute its sha256; 422 (problem+json
    naming what is wrong) when it is not there, not a known format, incomplete, or not the expected one."""
    location = locate(uri)
    files = list_files(location)
    present = set(files)
    fmt = detect_format(present)
    weights, facts = CHECKERS[fmt](location, present, task)
    for name in weights:
        _check_safetensors(location, name)
    sha256 = folder_digest(file_checksums(location, files))
    stored = store_artifact_id(uri)
    if stored is not None and sha256 != stored:
        raise refused(f"stored artifact {stored[:12]} does not match its id", "artifact-corrupted")
    if expected_sha256 is not None and expected_sha256 != sha256:
        raise ProblemError(
            422, "Unprocessable content",
            f"artifact_sha256: the files at artifact_uri have sha256 {sha256}, not {expected_sha256}",
            "artifact-sha256-mismatch", extensions={"computed_sha256": sha256},
        )  # fmt: skip
    return ArtifactInfo(fmt, sha256, files, facts)
