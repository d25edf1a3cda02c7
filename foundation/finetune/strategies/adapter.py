"""Adapter fine-tuning: a registered adapter method on the frozen encoder, plus a trainable new head.

The adapter class comes from :mod:`foundation.adapters` (``lora``, ``dopamine``, or any registered
:class:`~foundation.adapters.base.AdapterModel`); this strategy never looks at its name. Its config is
``AdapterClass.config_for(encoder name, --targets, excluded modules, --adapter fields)``; the new head and
the encoder parts ``forward_features`` does not reach are excluded from the targets.

The saved ``adapter/`` folder is the whole fine-tune: the adapter (``adapter_config.json`` with
``base_model_name_or_path`` + ``adapter_model.safetensors``, the new head inside as peft's ``modules_to_save``
where the method's config has that field, else ``head.safetensors``), the task model's ``config.json``
(encoder name and config, head size, class names, the base's Hub id and commit) and a model card.
``foundation.load`` reads it back; LoRA folders also load with plain ``peft.PeftModel.from_pretrained``
onto ``foundation.load(folder, adapter=False)``.
"""
from __future__ import annotations

import dataclasses

import torch
from safetensors.torch import save_file

import foundation
from foundation.adapters.base import AdapterModel, AdapterReportContext
from foundation.adapters.state import gathered_state_dict, is_writer_rank
from foundation.atomic import atomic_path, atomic_write_json
from foundation.config import dataclass_to_dict
from foundation.finetune.strategies.base import FinetuneJob, Strategy
from foundation.finetune.strategies.training import (
    card_info,
    init_head_from_probe,
    predict_held_out,
    train_with_engine,
)
from foundation.finetune.task_model import TaskModel, head_linear
from foundation.hub.names import CONFIG_NAME, HEAD_WEIGHTS_NAME

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
        self._head_inside = False

    def fit(self, job: FinetuneJob) -> None:
        model = job.model
        exclude = ("head",) + unused_modules(model, job.unused)  # the new head trains whole
        fields = dict(job.opts.adapter)
        self._head_inside = "modules_to_save" in {f.name for f in dataclasses.fields(self.adapter_cls.config_class)}
        if self._head_inside:
            fields["modules_to_save"] = ("head",) + tuple(fields.get("modules_to_save", ()))
        config = self.adapter_cls.config_for(model.config.encoder, job.opts.targets, exclude, fields,
                                             where=f"--method {self.name} (--targets / --adapter-set)")
        self.wrapped = self.adapter_cls(model, config)  # every check before the first change (head included)
        self.wrapped.base_model_name_or_path = model.config.base_model or None
        self.wrapped.preflight(self._context(job, is_main=False))  # the report's path too, before training
        if job.opts.head_init == "probe":
            init_head_from_probe(job)  # through the adapter, an exact identity at step 0
        for p in head_linear(model).parameters():  # the new head always trains (peft's copy under modules_to_save)
            p.requires_grad_(True)
        self._trainable = self.wrapped.num_trainable()
        train_with_engine(job, self.wrapped)

    def predict(self, job: FinetuneJob) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_held_out(job, self.wrapped)

    def trainable_params(self) -> int:
        return self._trainable

    def save(self, job: FinetuneJob, metrics: dict[str, float]) -> dict[str, str]:
        """``adapter/``: the adapter with the head, the task model's ``config.json`` and a model card (ZeRO-3
        shards gathered: every rank)."""
        from foundation.hub.card import write_model_card

        folder = job.out / "adapter"
        self.wrapped.save(folder)
        head = None if self._head_inside else gathered_state_dict(head_linear(job.model), keep=lambda name: True)
        if is_writer_rank():
            if head is not None:
                with atomic_path(folder / HEAD_WEIGHTS_NAME) as tmp:
                    save_file(head, str(tmp))
            atomic_write_json(folder / CONFIG_NAME, {"model_name": TaskModel.model_name,
                                                     "foundation_version": foundation.__version__,
                                                     **dataclass_to_dict(job.model.config)})
            write_model_card(folder, card_info(job, metrics), job.model.model_name, job.model.config)
        return {"adapter": str(folder)}

    def report(self, job: FinetuneJob) -> dict[str, str]:
        """What the adapter writes about itself (:meth:`AdapterModel.report`)."""
        return self.wrapped.report(self._context(job, is_writer_rank()))  # every rank runs the forward passes

    @staticmethod
    def _context(job: FinetuneJob, is_main: bool) -> AdapterReportContext:
        return AdapterReportContext(job.out, lambda: job.batches(job.test), job.task, job.model.config.num_outputs,
                                    is_main)
