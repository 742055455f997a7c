"""A sharded model (SISA, Bourtoule et al. 2021): S member models, each trained on its own shard of the
data subjects, served as one model that aggregates them.

The members are models of one kind (`member_kind`, `member_config`), each with its own initialisation
(`init_seed` derived per member). The served output aggregates them:
- classifiers average the members' logits (Bourtoule et al. aggregate labels; averaged logits keep a loss
  that the gate can read per sample);
- language models mix the members' next-token distributions, p(token) = mean_s p_s(token), as a
  mixture of experts: a sample's loss is then the mixture's negative log-likelihood, finite wherever one
  member predicts the token, and greedy generation reads the mixture too.

`ShardedAdapter` is driven through the member kind's own adapter code: its `_view` is a member adapter
whose module is the ensemble, so collation, losses, predictions and the kind's extras (canary losses,
completions) are the member kind's, computed on the aggregate. Training is per member
(workers/modeling/training/shards.py); `members[s]` is an adapter sharing member s's module.

A pre-trained base (MiniLM, a customer's save_pretrained model) is copied into every member, each fine-
tuned on its shard; S3T (Chowdhury et al. 2024) shares one frozen base and shards LoRA adapters instead,
which saves memory but is the same algorithm: every member's trainable part sees only its shard.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.registry.training_params import MAX_SHARDS
from workers.modeling.base import ADAPTER_FILE, Batch, ModelAdapter, Sample

MEMBER_DIR = "shard_{:02d}"


def member_seed(init_seed: int, shard: int) -> int:
    """Member `shard`'s init seed: distinct per member, a function of the ensemble's seed only."""
    from workers.modeling.training.determinism import derive_seed

    return derive_seed(int(init_seed), "shard", shard)


def sharded_config(member_kind: str, member_config: Mapping[str, Any], shards: int) -> dict[str, Any]:
    """The config of a sharded model of `shards` members of this kind and config; the members' init seeds
    derive from the config's `init_seed`."""
    return {
        "shards": int(shards),
        "init_seed": int(member_config.get("init_seed", 0)),
        "member_kind": member_kind,
        "member_config": {k: v for k, v in member_config.items() if k != "init_seed"},
    }


class EnsembleOutput:
    """What a transformers model returns, as far as the adapters read it: logits and hidden states."""

    def __init__(self, logits: torch.Tensor, hidden_states: tuple[torch.Tensor, ...] | None = None):
        self.logits = logits
        self.hidden_states = hidden_states


class ShardEnsemble(nn.Module):
    """The members' modules called alike and aggregated (`aggregate`: "mean-logits" or "mixture")."""

    def __init__(self, members: Sequence[nn.Module], aggregate: str):
        super().__init__()
        if aggregate not in ("mean-logits", "mixture"):
            raise ValueError(f"unknown aggregate {aggregate!r}")
        self.members = nn.ModuleList(members)
        self.aggregate = aggregate

    def combine(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(logits))
        if self.aggregate == "mean-logits":
            return stacked.mean(0)
        # log of the mean probability; a normalised log-distribution is its own log_softmax, so the
        # adapters' cross-entropy on it is the mixture's negative log-likelihood
        return torch.logsumexp(torch.log_softmax(stacked, -1), 0) - math.log(len(logits))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = [member(*args, **kwargs) for member in self.members]
        first = outputs[0]
        if isinstance(first, torch.Tensor):
            return self.combine(outputs)
        if isinstance(first, tuple):  # (logits, per-layer features): features side by side
            logits = self.combine([o[0] for o in outputs])
            layers = [torch.cat(per_layer, -1) for per_layer in zip(*(o[1] for o in outputs), strict=True)]
            return logits, layers
        hidden = None
        if getattr(first, "hidden_states", None) is not None:
            hidden = tuple(torch.cat(h, -1) for h in zip(*(o.hidden_states for o in outputs), strict=True))
        return EnsembleOutput(self.combine([o.logits for o in outputs]), hidden)

    def get_input_embeddings(self) -> nn.Module:
        return self.members[0].get_input_embeddings()

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 20,
        eos_token_id: int | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """Greedy decoding from the mixture (batch of one, as the completion checks call it)."""
        ids = input_ids
        for _step in range(max_new_tokens):
            out = self(input_ids=ids, attention_mask=torch.ones_like(ids))
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], 1)
            if eos_token_id is not None and bool((token == eos_token_id).all()):
                break
        return ids


class ShardedAdapter(ModelAdapter):
    """S member adapters of one kind served as their aggregate (see the module docstring)."""

    kind = "sharded"

    def __init__(self, members: Sequence[ModelAdapter], config: Mapping[str, Any]):
        if not members:
            raise ValueError("a sharded model needs at least one member")
        self.members = list(members)
        self._config = dict(config)
        self.task = members[0].task  # type: ignore[misc] - per instance: the members' task
        aggregate = "mixture" if self.task == "causal-lm" else "mean-logits"
        super().__init__(ShardEnsemble([m.model for m in members], aggregate), members[0].device)
        self._view = self._make_view()

    def _make_view(self) -> ModelAdapter:
        view = copy.copy(self.members[0])
        view.model = self.model
        return view

    @property
    def num_shards(self) -> int:
        return len(self.members)

    # the member kind's extras (token_log_probs, text_losses, complete, predict_proba, tokenizer, ...)
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or "_view" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self._view, name)

    # -- construction and persistence ---------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], device: torch.device | None = None) -> ShardedAdapter:
        from workers.modeling.adapters import new_adapter

        shards = int(config["shards"])
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"shards must be within 1..{MAX_SHARDS}, not {shards}")
        init_seed = int(config.get("init_seed", 0))
        members = []
        for s in range(shards):
            member_config = dict(config["member_config"])
            member_config["init_seed"] = member_seed(init_seed, s)
            members.append(new_adapter(str(config["member_kind"]), member_config, device=device))
        return cls(members, config)

    @classmethod
    def around(cls, member: ModelAdapter, shards: int) -> ShardedAdapter:
        """A fresh sharded model whose members are of `member`'s kind and config."""
        return cls.from_config(sharded_config(member.kind, member.config(), shards), device=member.device)

    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self._config)

    def save(self, directory: Path) -> None:
        """Each member in its own folder (its kind's layout), the ensemble's config in adapter.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for s, member in enumerate(self.members):
            member.save(directory / MEMBER_DIR.format(s))
        (directory / ADAPTER_FILE).write_text(
            json.dumps({"kind": self.kind, "config": self._config}, indent=1)
        )

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None) -> ShardedAdapter:
        from workers.modeling.adapters import load_adapter

        directory = Path(directory)
        spec = json.loads((directory / ADAPTER_FILE).read_text())
        if spec["kind"] != cls.kind:
            raise ValueError(f"{directory} holds a {spec['kind']!r} model, not {cls.kind!r}")
        shards = int(spec["config"]["shards"])
        members = [load_adapter(directory / MEMBER_DIR.format(s), device=device) for s in range(shards)]
        return cls(members, spec["config"])

    def clone(self) -> ShardedAdapter:
        return ShardedAdapter([m.clone() for m in self.members], self._config)

    def with_members(self, members: Sequence[ModelAdapter]) -> ShardedAdapter:
        """The same ensemble with `members` in place of its own (e.g. some retrained)."""
        if len(members) != self.num_shards:
            raise ValueError(f"{len(members)} members for a {self.num_shards}-shard model")
        return ShardedAdapter(members, self._config)

    # -- the member kind's code on the aggregate -----------------------------------------------------
    def collate(self, samples: Sequence[Sample]) -> Batch:
        return self._view.collate(samples)

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        return self._view.sample_losses(batch)

    def features(self, batch: Batch) -> list[torch.Tensor]:
        return self._view.features(batch)

    def predict(self, samples: Sequence[Sample], batch_size: int = 64) -> np.ndarray:
        return self._view.predict(samples, batch_size)
