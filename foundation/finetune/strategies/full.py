"""Full fine-tuning: every encoder parameter ``forward_features`` reaches trains, with layer-wise LR decay.

Depth d of a parameter (``TaskModel.llrd_groups``: 0 for embeddings, i + 1 in block i, n + 1 after the
last block) gets ``lr * decay ** (n + 1 - d)`` (BEiT, Bao et al. 2021, https://arxiv.org/abs/2106.08254);
the new head gets ``lr * head_lr_scale``. The engine's warmup-cosine schedule scales every group alike.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from foundation.adapters.state import gathered_state_dict, is_writer_rank
from foundation.finetune.strategies.base import FinetuneJob, Strategy
from foundation.finetune.strategies.training import card_info, init_head_from_probe, predict_held_out, train_with_engine
from foundation.finetune.task_model import TaskModel

__all__ = ["FullFinetune", "LayerwiseDecay"]


class LayerwiseDecay(nn.Module):
    """``model`` as it is, whose optimizer groups decay the LR with depth (the engine asks ``param_groups``).

    Args:
        model: the task model.
        decay: layer-wise LR decay in (0, 1].
        head_lr_scale: the head's LR as a multiple of the base LR.
    """

    def __init__(self, model: TaskModel, decay: float, head_lr_scale: float) -> None:
        super().__init__()
        self.model, self.decay, self.head_lr_scale = model, decay, head_lr_scale

    def forward(self, x: Any) -> torch.Tensor:
        """``x`` (``[B, ...]`` or a dict of batch entries) -> ``[B, num_outputs]``."""
        return self.model(x)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return self.model.llrd_groups(lr, self.decay, lr * self.head_lr_scale, weight_decay)


class FullFinetune(Strategy):
    """Train the encoder and the new head end to end (``--method full``); saves the whole task model."""

    name = "full"

    def __init__(self) -> None:
        self._trainable = 0

    def fit(self, job: FinetuneJob) -> None:
        if job.opts.head_init == "probe":
            init_head_from_probe(job)
        self._trainable = sum(p.numel() for p in job.model.parameters() if p.requires_grad)
        train_with_engine(job, LayerwiseDecay(job.model, job.opts.lr_decay, job.opts.head_lr_scale))

    def predict(self, job: FinetuneJob) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_held_out(job, job.model)

    def trainable_params(self) -> int:
        return self._trainable

    def save(self, job: FinetuneJob, metrics: dict[str, float]) -> dict[str, str]:
        """``model/``: the fine-tuned task model as a ``save_pretrained`` folder (ZeRO-3 shards gathered)."""
        state = gathered_state_dict(job.model, keep=lambda name: True)
        if is_writer_rank():
            fresh = TaskModel(job.model.config)
            fresh.load_state_dict(state, strict=True)
            fresh.save_pretrained(job.out / "model", card=card_info(job, metrics))
        return {"model": str(job.out / "model")}
