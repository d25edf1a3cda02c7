"""Adapter fine-tuning: a registered adapter method on the frozen encoder, plus a trainable new head.

The adapter class comes from :mod:`foundation.adapters` (``lora``, ``dopamine``, or any registered
:class:`~foundation.adapters.base.AdapterModel`); this strategy never looks at its name. Its config is
``AdapterClass.config_for(encoder name, --targets, excluded modules, --adapter fields)``; the new head and
the encoder parts ``forward_features`` does not reach are excluded from the targets.
"""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from foundation.adapters.base import AdapterModel, AdapterReportContext
from foundation.adapters.state import gathered_state_dict, is_writer_rank
from foundation.atomic import atomic_path
from foundation.finetune.strategies.base import FinetuneJob, Strategy
from foundation.finetune.strategies.training import card_info, init_head_from_probe, predict_held_out, train_with_engine
from foundation.finetune.task_model import TaskModel
from foundation.hub.names import HEAD_WEIGHTS_NAME

__all__ = ["AdapterFinetune", "unused_modules"]


def unused_modules(model: TaskModel, unused: list[str]) -> tuple[str, ...]:
    """Names of the modules whose own parameters are all in ``unused`` (adapters skip them)."""
    gone = set(unused)
    names = []
    for name, module in model.named_modules():
        own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        if own and all(n in gone for n in own):
            names.append(name)
    return tuple(names)


class AdapterFinetune(Strategy):
    """Train ``adapter_cls`` injected into the task model, and the new head.

    Args:
        adapter_cls: a registered :class:`~foundation.adapters.base.AdapterModel` subclass.
    """

    def __init__(self, adapter_cls: type[AdapterModel]) -> None:
        self.adapter_cls = adapter_cls
        self.name = adapter_cls.method
        self.wrapped: AdapterModel | None = None
        self._trainable = 0

    def fit(self, job: FinetuneJob) -> None:
        model = job.model
        exclude = ("head",) + unused_modules(model, job.unused)  # the new head trains whole
        config = self.adapter_cls.config_for(model.config.encoder, job.opts.targets, exclude, job.opts.adapter,
                                             where=f"--method {self.name} (--targets / --adapter-set)")
        self.wrapped = self.adapter_cls(model, config)  # every check before the first change (head included)
        if job.opts.head_init == "probe":
            init_head_from_probe(job)  # through the adapter, an exact identity at step 0
        for p in model.head.parameters():  # the new head always trains
            p.requires_grad_(True)
        self._trainable = self.wrapped.num_trainable()
        train_with_engine(job, self.wrapped)

    def predict(self, job: FinetuneJob) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_held_out(job, self.wrapped)

    def trainable_params(self) -> int:
        return self._trainable

    def save(self, job: FinetuneJob, metrics: dict[str, float]) -> dict[str, str]:
        """``adapter/`` (peft layout + model card) and ``head.safetensors``; ZeRO-3 shards gathered."""
        from foundation.hub.card import write_model_card

        folder = job.out / "adapter"
        self.wrapped.save(folder)
        head = gathered_state_dict(job.model.head, keep=lambda name: True)
        if is_writer_rank():
            with atomic_path(job.out / HEAD_WEIGHTS_NAME) as tmp:
                save_file(head, str(tmp))
            write_model_card(folder, card_info(job, metrics), job.model.model_name, job.model.config)
        return {"adapter": str(folder), "head": str(job.out / HEAD_WEIGHTS_NAME)}

    def report(self, job: FinetuneJob) -> dict[str, str]:
        """What the adapter writes about itself (:meth:`AdapterModel.report`)."""
        ctx = AdapterReportContext(job.out, lambda: job.batches(job.test), job.task, job.model.config.num_outputs,
                                   is_writer_rank())  # every rank runs the forward passes
        return self.wrapped.report(ctx)
