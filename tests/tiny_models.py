"""Customers' own models, made here the way their owners make them (a config, `save_pretrained`, or a plain
torch module saved as safetensors): tiny, so that tests load and train them in seconds. Nothing is
downloaded: the tokenizers are trained on the texts given."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

GPT2_SIZE = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}
DISTILBERT_SIZE = {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 64}


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def byte_level_tokenizer(texts: Sequence[str], vocab_size: int = 300):
    """A GPT-2 style (byte-level BPE) tokenizer trained on `texts`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from workers.modeling.adapters.causal_lm import BOS, PAD, train_bpe_tokenizer

    raw = Tokenizer.from_str(train_bpe_tokenizer(texts, vocab_size))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=BOS, eos_token=BOS, pad_token=PAD)


def wordpiece_tokenizer(texts: Sequence[str], vocab_size: int = 200):
    """A BERT style (WordPiece, [CLS] ... [SEP]) tokenizer trained on `texts`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    raw.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip


def _save_pretrained(directory: Path, model_class, config, tokenizer, seed: int):
    """A freshly initialised `model_class` of `config` and its tokenizer, saved with save_pretrained."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def save_gpt2(directory: Path, texts: Sequence[str], seed: int = 0):
    """A GPT-2 with a byte-level BPE tokenizer trained on `texts`; answers the model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    quiet()
    tokenizer = byte_level_tokenizer(texts)
    config = GPT2Config(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **GPT2_SIZE,
    )  # fmt: skip
    return _save_pretrained(directory, GPT2LMHeadModel, config, tokenizer, seed)


def save_distilbert_classifier(directory: Path, texts: Sequence[str], labels: Sequence[str], seed: int = 0):
    """A DistilBERT sequence classifier (its head included) with a WordPiece tokenizer trained on `texts`."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    quiet()
    tokenizer = wordpiece_tokenizer(texts)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
        **DISTILBERT_SIZE,
    )  # fmt: skip
    return _save_pretrained(directory, DistilBertForSequenceClassification, config, tokenizer, seed)


def sequential_mlp(features: int, hidden: int, classes: int, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def save_torch_classifier(directory: Path, model, features: int, classes: int) -> None:
    """A plain nn.Sequential MLP as a torch-classifier artifact: its state dict as safetensors and
    classifier.json naming the architecture (hidden widths are read off the weights)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors")
    )
    described = {"architecture": "mlp", "input_shape": [features], "num_classes": classes}
    (directory / "classifier.json").write_text(json.dumps(described))
