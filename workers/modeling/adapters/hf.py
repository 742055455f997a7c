"""Hugging Face models as their owners save them: a `save_pretrained` folder in, a `save_pretrained` out.

`HFCausalLMAdapter` (kind `hf-causal-lm`) drives any AutoModelForCausalLM, `HFSequenceClassifierAdapter`
(kind `hf-sequence-classifier`) any AutoModelForSequenceClassification, DistilBERT and the BERT family
included, with its own classification head (a customer's trained head is kept, not replaced). Both use
the folder's own tokenizer. `save` writes the save_pretrained layout (config.json, model.safetensors,
tokenizer files) and Lethe's adapter.json beside it, so the folder still opens with `from_pretrained`.

The config (what `from_config` rebuilds a model from, e.g. for an exact retrain):
- `base`: {uri, sha256}: the folder the weights start from (a local path or an fsspec URL; the files are
  checked against the sha256 on every use);
- `from_scratch`: keep the base's architecture and tokenizer, initialise the weights from `init_seed`;
  a model registered from elsewhere gets True, so a retrain never starts from the weights it must forget;
- `lora`: {r, alpha, dropout, target_modules} to train low-rank adapters on the frozen base (peft),
  merged into the weights when saved;
- `max_length`, `init_seed`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from workers.modeling.adapters.causal_lm import CausalLMAdapter
from workers.modeling.adapters.sequence_classifier import SequenceClassifierAdapter
from workers.modeling.adapters.text import TextAdapter
from workers.modeling.base import ADAPTER_FILE, Batch

DEFAULT_MAX_LENGTH = 128


def _quiet_transformers() -> None:
    """No hub, no progress bars, no load reports: the weights are local and the logs are the service's."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def open_base(config: Mapping[str, Any]) -> Path:
    from workers.modeling.formats import local_folder

    base = config["base"]
    return local_folder(str(base["uri"]), base.get("sha256"))


def _tokenizer(directory: Path) -> tuple[Any, Any]:
    """(the tokenizer as saved, a working copy with the special tokens the adapters need)."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    working = copy.deepcopy(saved)
    if working.eos_token is None and working.sep_token is not None:
        working.eos_token = working.sep_token
    if working.bos_token is None:
        working.bos_token = working.eos_token or working.cls_token
    if working.pad_token is None:
        working.pad_token = working.eos_token or working.bos_token
    working.padding_side = "right"
    return saved, working


def _lora(model: torch.nn.Module, settings: Mapping[str, Any], task_type: str) -> torch.nn.Module:
    """LoRA on the linear layers of the base model's blocks; a classifier's head stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    prefix = f"{model.base_model_prefix}."
    in_blocks = sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
         if isinstance(module, torch.nn.Linear) and name.startswith(prefix)}
    )  # fmt: skip
    head = [
        name for name, child in model.named_children()
        if name != model.base_model_prefix and any(True for _ in child.parameters())
    ]  # fmt: skip
    lora = LoraConfig(
        r=int(settings.get("r", 8)),
        lora_alpha=int(settings.get("alpha", 16)),
        lora_dropout=float(settings.get("dropout", 0.0)),
        target_modules=settings.get("target_modules") or in_blocks,
        modules_to_save=head if task_type == "SEQ_CLS" else None,
        task_type=task_type,
    )
    return get_peft_model(model, lora)


def _build(auto_class: Any, config: Mapping[str, Any], task_type: str) -> tuple[torch.nn.Module, Any, Any]:
    """(model, saved tokenizer, working tokenizer) from the base: its weights, or its architecture only."""
    from transformers import AutoConfig

    _quiet_transformers()
    directory = open_base(config)
    saved, working = _tokenizer(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.get("init_seed", 0)))
        if config.get("from_scratch"):
            hf_config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
            model = auto_class.from_config(hf_config)
        else:
            model = auto_class.from_pretrained(str(directory), local_files_only=True)
        if config.get("lora") is not None:
            model = _lora(model, config["lora"], task_type)
    return model, saved, working


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """The model as one set of weights: LoRA adapters merged into a copy, anything else as it is."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


class HuggingFaceFolder:
    """What both Hugging Face adapters share: folder in, folder out."""

    auto_class_name: ClassVar[str]
    peft_task_type: ClassVar[str]
    kind: ClassVar[str]
    model: torch.nn.Module
    device: torch.device
    _config: dict[str, Any]

    def __init__(self, *args: Any, saved_tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.saved_tokenizer = saved_tokenizer

    @classmethod
    def auto_class(cls) -> Any:
        import transformers

        return getattr(transformers, cls.auto_class_name)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], device: torch.device | None = None) -> Any:
        full = {
            "max_length": DEFAULT_MAX_LENGTH,
            "init_seed": 0,
            "from_scratch": False,
            "lora": None,
            **config,
        }
        model, saved, working = _build(cls.auto_class(), full, cls.peft_task_type)
        return cls(model, working, full, device, saved_tokenizer=saved)  # type: ignore[call-arg]

    @classmethod
    def from_folder(
        cls, directory: Path, base: Mapping[str, Any], device: torch.device | None = None, **settings: Any
    ) -> Any:
        """The model saved in `directory` as it is (its trained weights); `base` ({uri, sha256}) is where
        a from-scratch rebuild finds its architecture and tokenizer."""
        _quiet_transformers()
        saved, working = _tokenizer(directory)
        model = cls.auto_class().from_pretrained(str(directory), local_files_only=True)
        config = {
            "base": dict(base),
            "from_scratch": True,
            "lora": None,
            "max_length": DEFAULT_MAX_LENGTH,
            "init_seed": 0,
            **settings,
        }
        return cls(model, working, config, device, saved_tokenizer=saved)  # type: ignore[call-arg]

    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self._config)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _quiet_transformers()
        _plain(self.model).save_pretrained(str(directory), safe_serialization=True)
        (self.saved_tokenizer or self.tokenizer).save_pretrained(str(directory))  # type: ignore[attr-defined]
        (directory / ADAPTER_FILE).write_text(
            json.dumps({"kind": self.kind, "config": self.config()}, indent=1)
        )

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None) -> Any:
        """Inverse of `save` (adapter.json says how the model was built)."""
        spec = json.loads((Path(directory) / ADAPTER_FILE).read_text())
        if spec["kind"] != cls.kind:
            raise ValueError(f"{directory} holds a {spec['kind']!r} model, not {cls.kind!r}")
        config = spec["config"]
        return cls.from_folder(
            Path(directory), config["base"], device, **{k: v for k, v in config.items() if k != "base"}
        )


class HFCausalLMAdapter(HuggingFaceFolder, CausalLMAdapter):
    kind = "hf-causal-lm"
    auto_class_name = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    # collate writes <bos> text <eos> itself; a tokenizer that adds its own (Llama's <s>) must not
    add_special_tokens = False


class HFSequenceClassifierAdapter(HuggingFaceFolder, SequenceClassifierAdapter):
    kind = "hf-sequence-classifier"
    auto_class_name = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, config: Mapping[str, Any], device=None, **kw: Any
    ):
        super().__init__(
            model, tokenizer, {**config, "num_labels": int(model.config.num_labels)}, device, **kw
        )
        # batches are padded: the model must know which token pads (GPT-style classifiers pool on it)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.model(
            input_ids=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"]
        ).logits

    def features(self, batch: Batch) -> list[torch.Tensor]:
        out = self.model(
            input_ids=batch.inputs["input_ids"],
            attention_mask=batch.inputs["attention_mask"],
            output_hidden_states=True,
        )
        return [TextAdapter.mean_pool(h, batch.inputs["attention_mask"]) for h in out.hidden_states[1:]]
