"""Hugging Face causal language models (AutoModelForCausalLM) with a fast tokenizer.

A sample is `Sample.text`; the model reads `<bos> text <eos>` and its per-sample loss is the mean token
negative log-likelihood of everything after `<bos>`. The config carries the transformers model config (as
the keys that differ from the architecture's defaults) and the tokenizer's JSON, so `from_config` rebuilds
the same architecture and tokenizer anywhere without files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from workers.modeling.adapters.text import TextAdapter
from workers.modeling.base import Batch, Sample

BOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> str:
    """A byte-level BPE tokenizer trained on `texts`, as JSON. Digits are split one per token, so every
    number of a given length costs the same number of tokens (canary candidates compete on equal terms)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer.to_str()


DEFAULT_SPECIAL_TOKENS = {"bos_token": BOS, "eos_token": BOS, "pad_token": PAD}


def tokenizer_from_json(tokenizer_json: str, special_tokens: Mapping[str, str] | None = None) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokens = dict(special_tokens or DEFAULT_SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), **tokens)
    tokenizer.padding_side = "right"
    return tokenizer


class CausalLMAdapter(TextAdapter):
    task = "causal-lm"
    kind = "causal-lm"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, config: Mapping[str, Any], device=None):
        super().__init__(model, tokenizer, config["max_length"], device)
        self._config = dict(config)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], device: torch.device | None = None) -> CausalLMAdapter:
        """config: {"model": transformers config keys incl. model_type, "tokenizer_json", "max_length",
        "init_seed"}; vocab size and special token ids come from the tokenizer."""
        from transformers import AutoConfig, AutoModelForCausalLM

        tokenizer = tokenizer_from_json(config["tokenizer_json"], config.get("special_tokens"))
        model_keys = {
            **dict(config["model"]),
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        hf_config = AutoConfig.for_model(**model_keys)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config["init_seed"]))
            model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
        return cls(model, tokenizer, config, device)

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @classmethod
    def from_pretrained(
        cls, directory: Path | str, max_length: int = 128, device: torch.device | None = None
    ) -> CausalLMAdapter:
        """Wrap a causal LM saved elsewhere with `save_pretrained` (a local directory; nothing downloaded)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
        bos = tokenizer.bos_token or tokenizer.eos_token
        special = {
            "bos_token": bos,
            "eos_token": tokenizer.eos_token or bos,
            "pad_token": tokenizer.pad_token or bos,
        }
        config = {
            "model": model.config.to_diff_dict(),
            "tokenizer_json": tokenizer.backend_tokenizer.to_str(),
            "special_tokens": special,
            "max_length": max_length,
            "init_seed": 0,  # unknown: the model was initialised elsewhere
        }
        adapter = cls(model, tokenizer_from_json(config["tokenizer_json"], special), config, device)
        return adapter

    # -- data ---------------------------------------------------------------------------------------
    def collate(self, samples: Sequence[Sample]) -> Batch:
        bos = self.tokenizer.bos_token
        inputs = self.encode([f"{bos}{s.text}{bos}" for s in samples])
        labels = inputs["input_ids"].clone()
        labels[inputs["attention_mask"] == 0] = -100
        labels[:, 0] = -100  # <bos> is given, not predicted
        inputs["labels"] = labels
        return Batch(samples=samples, inputs=inputs)

    def _token_losses(self, batch: Batch):
        """(token losses masked, mask, logits, targets) with position t predicting token t+1."""
        out = self.model(input_ids=batch.inputs["input_ids"], attention_mask=batch.inputs["attention_mask"])
        logits = out.logits[:, :-1]
        targets = batch.inputs["labels"][:, 1:]
        losses = F.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
        mask = (targets != -100).to(losses.dtype)
        return losses * mask, mask, logits, targets

    # -- forward passes -----------------------------------------------------------------------------
    def sample_losses(self, batch: Batch) -> torch.Tensor:
        losses, mask, *_ = self._token_losses(batch)
        return losses.sum(1) / mask.sum(1).clamp_min(1.0)

    def features(self, batch: Batch) -> list[torch.Tensor]:
        out = self.model(
            input_ids=batch.inputs["input_ids"],
            attention_mask=batch.inputs["attention_mask"],
            output_hidden_states=True,
        )
        return [self.mean_pool(h, batch.inputs["attention_mask"]) for h in out.hidden_states[1:]]

    @torch.no_grad()
    def token_log_probs(self, samples: Sequence[Sample], batch_size: int = 64) -> list[np.ndarray]:
        """Per sample, the log-probability of each predicted token (Min-K %, zlib ratio, exposure)."""
        was_training = self.model.training
        self.model.eval()
        out: list[np.ndarray] = []
        for batch in self.batches(samples, batch_size):
            losses, mask, *_ = self._token_losses(batch)
            for row, keep in zip(losses, mask, strict=True):
                out.append(-self.to_numpy(row[keep.bool()]))
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def predict(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        """Per sample, the share of its tokens the model predicts exactly (greedy, teacher forcing)."""
        was_training = self.model.training
        self.model.eval()
        out = []
        for batch in self.batches(samples, batch_size):
            _, mask, logits, targets = self._token_losses(batch)
            hits = (logits.argmax(-1) == targets).to(mask.dtype) * mask
            out.append(self.to_numpy(hits.sum(1) / mask.sum(1).clamp_min(1.0)))
        self.model.train(was_training)
        return np.concatenate(out) if out else np.zeros(0)

    def text_losses(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Mean token loss of raw texts (e.g. a canary sentence filled with each candidate secret)."""
        return self.per_sample_loss(self.texts_as_samples(texts), batch_size)

    @torch.no_grad()
    def complete(self, prefix: str, max_new_tokens: int = 20) -> str:
        """Greedy continuation of `prefix` (verbatim-extraction checks)."""
        was_training = self.model.training
        self.model.eval()
        ids = self.tokenizer(self.tokenizer.bos_token + prefix, return_tensors="pt")["input_ids"].to(
            self.device
        )
        generated = self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        self.model.train(was_training)
        return self.tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
