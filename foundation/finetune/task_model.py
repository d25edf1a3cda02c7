"""A pretrained encoder plus a task head, and the supervised objective that trains it.

The encoder interface fine-tuning relies on (the three modalities' models and any registered model):

- ``embed_dim``: width D of its features;
- ``forward_features(...)``: called through :func:`~foundation.finetune.features.encode`, with the input
  tensor positionally or with the batch's entries that name its parameters by keyword (DeeperBrain:
  ``x [B, C, T], pos [B, C, 3], chan_mask [B, C]``; SLIM-Brain: ``x [B, 1, T, Z, Y, X]``; ultrasound:
  ``x [B, 3, S, S]``), returning ``[B, N, D]``, ``[B, D]`` or packed ``(tokens [K, D], cu_seqlens [B + 1])``;
- a block stack named ``blocks`` somewhere below it (``blocks``, ``encoder.blocks``, ``backbone.blocks``), or a
  ``block_stack()`` method naming it, for layer-wise LR decay.

Pretraining-only parts of the checkpoint (decoders, JEPA predictor and EMA target, the other task heads)
load strictly with the rest but stay frozen: :meth:`TaskModel.freeze_unused` finds them as the parameters
that one ``forward_features`` pass does not reach.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from foundation.config import dataclass_from_dict, dataclass_to_dict
from foundation.errors import ConfigError
from foundation.finetune.features import encode, pool_tokens, split_batch
from foundation.finetune.llrd import depths_by_order, find_block_stack, layerwise_lr_groups
from foundation.hub.mixin import HubMixin
from foundation.registry import MODELS

__all__ = ["Supervised", "SupervisedConfig", "TaskModel", "TaskModelConfig", "head_linear", "predict"]

_TASKS = ("classification", "regression")


@dataclass
class TaskModelConfig:
    """Which encoder, with which config, under which head."""

    encoder: str = field(default="", metadata={"help": "registered model name of the encoder"})
    encoder_config: dict[str, Any] = field(default_factory=dict, metadata={"help": "the encoder's config fields"})
    num_outputs: int = field(default=2, metadata={"help": "classes (classification) or targets (regression)"})
    task: str = field(default="classification", metadata={"help": "classification | regression"})
    pool: str = field(default="mean", metadata={"help": "token pooling before the head: mean | cls"})
    class_names: tuple[str, ...] = field(default=(), metadata={"help": "names of the classes, in output order"})
    base_model: str = field(default="", metadata={"help": "where the encoder's pretrained weights came from: a Hub "
                                                          "id or a local folder ('' in memory)"})
    base_revision: str = field(default="", metadata={"help": "the Hub commit of base_model ('' for a folder)"})
    provenance: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "how the fine-tune was made: command line, --from and its commit, method, versions, git commit"})
    preprocessing: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "what the model expects of new data (sampling rate, grid, image size, units, normalisation), as "
                "the training data set said; foundation predict checks a data set against it"})

    def __post_init__(self) -> None:
        self.class_names = tuple(str(c) for c in self.class_names)
        if self.task not in _TASKS:
            raise ConfigError(f"task {self.task!r} unknown; valid: {', '.join(_TASKS)}")
        if self.pool not in ("mean", "cls"):
            raise ConfigError(f"pool {self.pool!r} unknown; valid: cls, mean")
        if self.num_outputs < 1:
            raise ConfigError(f"num_outputs must be >= 1, got {self.num_outputs}")


class TaskModel(nn.Module, HubMixin):
    """``head(pool(encoder.forward_features(inputs)))``: ``[B, ...]`` or a batch dict -> ``[B, num_outputs]``.

    Args:
        config: encoder name and config, head size, task and pooling.
        encoder: an already built encoder to use (and train) in place of a fresh one; its
            ``hub_config()`` must be ``config.encoder_config`` (see :meth:`for_encoder`).
    """

    model_name = "task-model"
    config_class = TaskModelConfig

    def __init__(self, config: TaskModelConfig, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        if encoder is None:
            enc_cls = MODELS.get(config.encoder, where="TaskModelConfig.encoder")
            encoder = enc_cls(dataclass_from_dict(enc_cls.config_class, config.encoder_config, "encoder_config"))
        self.encoder = encoder
        self.head = nn.Linear(self.encoder.embed_dim, config.num_outputs)

    @classmethod
    def for_encoder(cls, encoder: nn.Module, num_outputs: int, task: str = "classification",
                    pool: str = "mean") -> TaskModel:
        """A task model around ``encoder`` itself (a registered model with ``model_name`` and ``hub_config``)."""
        cfg = TaskModelConfig(encoder=encoder.model_name, encoder_config=dataclass_to_dict(encoder.hub_config()),
                              num_outputs=num_outputs, task=task, pool=pool)
        return cls(cfg, encoder=encoder)

    def forward_features(self, x: Any) -> Any:
        """The encoder's features of ``x`` (a tensor or a dict of batch entries; see ``features.encode``)."""
        return encode(self.encoder, x)

    def forward(self, x: Any) -> torch.Tensor:
        """``x`` (``[B, ...]`` or a dict of batch entries) -> ``[B, num_outputs]``."""
        return self.head(pool_tokens(self.forward_features(x), self.config.pool))

    def train(self, mode: bool = True) -> TaskModel:
        """Set the training mode; a batch norm of the encoder whose parameters are all frozen stays in eval mode.

        So a frozen base (LoRA, Dopamine, unused parts) keeps its running statistics as well as its weights,
        and the saved adapter plus head reproduce the fine-tuned model.
        """
        super().train(mode)
        if mode:
            for m in self.encoder.modules():
                own = list(m.parameters(recurse=False))
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and own and not any(p.requires_grad for p in own):
                    m.eval()
        return self

    def freeze_unused(self, inputs: Any) -> list[str]:
        """Freeze the encoder parameters that ``forward_features`` does not reach; return their names.

        Runs one forward and backward pass on ``inputs`` (a few samples are enough) in eval mode, so that
        normalisation statistics stay untouched, with every encoder parameter briefly trainable. A parameter
        left without gradient (a pretraining decoder or predictor, an EMA target, another task's head) is
        set ``requires_grad=False``; the others keep their flag. Gradients are cleared afterwards.
        """
        params = dict(self.encoder.named_parameters())
        flags = {n: p.requires_grad for n, p in params.items()}
        was_training = self.training
        self.eval()
        try:
            for p in params.values():
                p.requires_grad_(True)
                p.grad = None
            feats = pool_tokens(self.forward_features(inputs), "mean")
            feats.float().square().sum().backward()
            unused = [n for n, p in params.items() if p.grad is None]
        finally:
            self.train(was_training)
            for n, p in params.items():
                p.grad = None
                p.requires_grad_(flags[n])
        for n in unused:
            params[n].requires_grad_(False)
        return [f"encoder.{n}" for n in unused]

    def blocks_path(self) -> str | None:
        """Path of the encoder's block stack (:func:`~foundation.finetune.llrd.find_block_stack`), or None."""
        return find_block_stack(self)

    def llrd_groups(self, lr: float, decay: float, head_lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups with layer-wise LR decay over :meth:`blocks_path` and the head at ``head_lr``.

        Raises:
            ConfigError: ``decay < 1`` and the encoder has no trainable block stack to decay over.
        """
        path = self.blocks_path()
        if path is None:
            if decay != 1:
                raise ConfigError(f"layer-wise LR decay {decay}: encoder {self.config.encoder!r} has no trainable "
                                  "module stack named 'blocks'; set the decay (--lr-decay) to 1")
            return layerwise_lr_groups(self, lr, decay=1.0, head_lr=head_lr, weight_decay=weight_decay,
                                       layer_of=lambda name: 0, num_layers=0)
        depths, n = depths_by_order(self, path)
        return layerwise_lr_groups(self, lr, decay=decay, head_lr=head_lr, weight_decay=weight_decay,
                                   layer_of=depths.__getitem__, num_layers=n)


def head_linear(model: TaskModel) -> nn.Linear:
    """The head that computes: ``model.head``, or its trainable copy when peft wrapped it (``modules_to_save``)."""
    head = model.head
    copies = getattr(head, "modules_to_save", None)
    if isinstance(head, nn.Linear) or copies is None:
        return head
    active = head.active_adapter
    return copies[active if isinstance(active, str) else active[0]]


@dataclass
class SupervisedConfig:
    task: str = field(default="classification", metadata={"help": "classification | regression"})
    input_key: str = field(default="*", metadata={"help": "batch key of the input tensor, or '*': every entry but "
                                                          "the label, passed by name to forward_features"})
    label_key: str = field(default="label", metadata={"help": "key of the label in dict batches"})
    sparsity_weight: float = field(default=0.0, metadata={"help": "weight of the adapter's auxiliary loss "
                                                                  "(Dopamine: mean gate activity); 0 = none"})

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            raise ConfigError(f"objective.task {self.task!r} unknown; valid: {', '.join(_TASKS)}")
        if not self.sparsity_weight >= 0:
            raise ConfigError(f"objective.sparsity_weight: expected >= 0, got {self.sparsity_weight!r}")


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
        if self.config.sparsity_weight:
            loss = loss + self.config.sparsity_weight * _auxiliary_loss(model)
        return loss, metrics


def _auxiliary_loss(model: nn.Module) -> torch.Tensor:
    """The adapter's own loss term (:meth:`AdapterModel.auxiliary_loss`).

    Raises:
        ConfigError: the model is no adapter with an auxiliary loss (the weight would be silently ignored).
    """
    from foundation.adapters.base import AdapterModel

    aux = model.auxiliary_loss() if isinstance(model, AdapterModel) else None
    if aux is None:
        raise ConfigError(f"objective.sparsity_weight is set but {type(model).__name__} has no auxiliary loss (only "
                          "adapter methods such as dopamine have one); set objective.sparsity_weight=0")
    return aux


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, task: str = "classification", input_key: str = "*",
            label_key: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of ``model`` (eval mode) over ``loader`` and the labels.

    Returns:
        ``(out, y)``: classification ``out`` = probabilities ``[S, C]`` (softmax), regression ``out`` = ``[S]``
        or ``[S, K]`` shaped as the labels ``y``; both float32 on the model's device.
    """
    model.eval()
    outs, labels = [], []
    for batch in loader:
        x, y = split_batch(batch, input_key, label_key)
        outs.append(model(x).float())
        labels.append(torch.as_tensor(y))
    out, y = torch.cat(outs), torch.cat(labels)
    return (out.softmax(-1) if task == "classification" else out.reshape(y.shape)), y
