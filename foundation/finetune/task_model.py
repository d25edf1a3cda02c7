"""A pretrained encoder plus a task head, and the supervised objective that trains it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from foundation.config import dataclass_from_dict
from foundation.errors import ConfigError
from foundation.finetune.features import pool_tokens, split_batch
from foundation.hub import HubMixin
from foundation.registry import MODELS

__all__ = ["TaskModelConfig", "TaskModel", "SupervisedConfig", "Supervised"]

_TASKS = ("classification", "regression")


@dataclass
class TaskModelConfig:
    """Which encoder, with which config, under which head."""

    encoder: str = field(default="", metadata={"help": "registered model name of the encoder"})
    encoder_config: dict[str, Any] = field(default_factory=dict, metadata={"help": "the encoder's config fields"})
    num_outputs: int = field(default=2, metadata={"help": "classes (classification) or targets (regression)"})
    task: str = field(default="classification", metadata={"help": "classification | regression"})
    pool: str = field(default="mean", metadata={"help": "token pooling before the head: mean | cls"})

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            raise ConfigError(f"task {self.task!r} unknown; valid: {', '.join(_TASKS)}")
        if self.pool not in ("mean", "cls"):
            raise ConfigError(f"pool {self.pool!r} unknown; valid: cls, mean")
        if self.num_outputs < 1:
            raise ConfigError(f"num_outputs must be >= 1, got {self.num_outputs}")


class TaskModel(nn.Module, HubMixin):
    """``head(pool(encoder.forward_features(x)))``: ``[B, ...] -> [B, num_outputs]``.

    The encoder is any registered model with ``forward_features`` and ``embed_dim``.
    """

    model_name = "task-model"
    config_class = TaskModelConfig

    def __init__(self, config: TaskModelConfig) -> None:
        super().__init__()
        self.config = config
        enc_cls = MODELS.get(config.encoder, where="TaskModelConfig.encoder")
        self.encoder = enc_cls(dataclass_from_dict(enc_cls.config_class, config.encoder_config, "encoder_config"))
        self.head = nn.Linear(self.encoder.embed_dim, config.num_outputs)

    def forward_features(self, x: Any) -> torch.Tensor:
        return self.encoder.forward_features(x)

    def forward(self, x: Any) -> torch.Tensor:
        return self.head(pool_tokens(self.forward_features(x), self.config.pool))


@dataclass
class SupervisedConfig:
    task: str = field(default="classification", metadata={"help": "classification | regression"})
    input_key: str = field(default="x", metadata={"help": "key of the model input in dict batches"})
    label_key: str = field(default="label", metadata={"help": "key of the label in dict batches"})
    sparsity_weight: float = field(default=0.0, metadata={"help": "weight of Dopamine's gate-activity term"})

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            raise ConfigError(f"objective.task {self.task!r} unknown; valid: {', '.join(_TASKS)}")


class Supervised(nn.Module):
    """Cross-entropy (classification) or MSE (regression) of ``model(inputs)`` against the labels."""

    config_class = SupervisedConfig

    def __init__(self, config: SupervisedConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs, labels = split_batch(batch, self.config.input_key, self.config.label_key)
        out = model(inputs).float()
        if self.config.task == "classification":
            loss = nn.functional.cross_entropy(out, labels.long())
            metrics = {"accuracy": (out.argmax(-1) == labels).float().mean().detach()}
        else:
            loss = nn.functional.mse_loss(out.reshape(labels.shape), labels.float())
            metrics = {}
        if self.config.sparsity_weight and hasattr(model, "gate_activity"):
            loss = loss + self.config.sparsity_weight * model.gate_activity()
        return loss, metrics


MODELS.register("task-model", TaskModel)
