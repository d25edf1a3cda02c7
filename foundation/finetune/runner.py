"""`foundation finetune`: a pretrained checkpoint, a labelled data set, one method.

    foundation finetune --from runs/x/export --recipe my-task.yaml --method linear-probe
    deepspeed --num_gpus 4 finetune.py --from my-org/deeperbrain --recipe my-task.yaml --method lora

Methods (:func:`foundation.finetune.strategies.method_names`): ``linear-probe`` / ``mlp-probe`` (frozen
features computed once and cached), ``full`` (layer-wise LR decay, separate head LR, through the engine)
and every registered adapter method (``lora`` through peft, ``dopamine`` gates on hidden units), each with
a trainable new head. The recipe's ``model`` section names the encoder (its config comes from the
checkpoint), ``data`` a labelled data set (dict batches with ``label`` and the entries the encoder's
``forward_features`` names, e.g. ``x``, ``pos``, ``chan_mask``; a ``num_classes`` attribute, optionally
``groups()`` for subject-disjoint splits), ``objective`` is ``supervised``. Encoder parameters that
``forward_features`` does not reach (decoders, predictors, EMA targets, other task heads) are frozen and
get no adapter (see :meth:`TaskModel.freeze_unused`); LoRA's default targets come from the encoder's
preset in :data:`foundation.adapters.targets.MODEL_PRESETS`.

The runner only orchestrates: split, load the base, pick the strategy by name, train, predict, score,
report. :func:`finetune_model` is the same without the checkpoint and data set look-up (an encoder and
splits already in memory: the modality studies and tests use it).

Shipped recipes, one per modality: ``deeperbrain-tiny-probe``, ``slim-brain-tiny-probe``,
``ultrasound-mtl-tiny-probe`` (demo corpora; see ``benchmarks/bench_finetune.py``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from foundation.adapters.state import is_writer_rank
from foundation.atomic import atomic_write_json, atomic_write_text
from foundation.config import RecipeConfig, dataclass_to_dict
from foundation.data.splits import group_split
from foundation.errors import ConfigError, DataError
from foundation.eval.metrics import classification_metrics, regression_metrics
from foundation.eval.report import (
    markdown_table,
    save_confusion_matrix,
    save_pred_vs_true,
)
from foundation.finetune.features import split_batch
from foundation.finetune.options import FinetuneOptions
from foundation.finetune.strategies import FinetuneJob, make_strategy, method_names
from foundation.finetune.task_model import TaskModel, TaskModelConfig
from foundation.registry import DATASETS, MODELS

__all__ = ["FinetuneOptions", "finetune_model", "method_names", "run_finetune"]


def _num_outputs(dataset: Any, task: str) -> int:
    attr = "num_classes" if task == "classification" else "num_targets"
    value = getattr(dataset, attr, None)
    if not isinstance(value, int) or value < 1:
        raise DataError(f"data set {type(dataset).__name__} has no positive integer {attr!r} attribute; "
                        f"a fine-tuning data set must say how many {attr.split('_')[1]} it has")
    return value


def _split(dataset: Any, opts: FinetuneOptions) -> tuple[Subset, Subset]:
    groups = dataset.groups() if hasattr(dataset, "groups") else list(range(len(dataset)))
    train_idx, test_idx = group_split(groups, opts.test_fraction, opts.split_seed)
    return Subset(dataset, train_idx.tolist()), Subset(dataset, test_idx.tolist())


def resolved_commit(base: str, revision: str | None) -> str:
    """The Hub commit ``base`` resolves to at ``revision`` ('' for a local folder); read from the cache's
    snapshot folder name (``snapshots/<sha>``)."""
    if Path(base).is_dir():
        return ""
    from foundation.hub.client import download_folder
    from foundation.hub.names import CONFIG_NAME

    return download_folder(base, revision, allow_patterns=[CONFIG_NAME]).name


def _load_base(recipe: RecipeConfig, base: str, revision: str | None, num_outputs: int, task: str,
               pool: str, class_names: tuple[str, ...] = ()) -> tuple[TaskModel, str]:
    """The task model with the checkpoint loaded strictly into its encoder, and a sentence saying so."""
    enc_cls = MODELS.get(recipe.model.name, where="recipe key model.name")
    pretrained = enc_cls.from_pretrained(base, revision=revision)  # strict: missing/extra keys raise
    commit = resolved_commit(base, revision)
    cfg = TaskModelConfig(encoder=recipe.model.name, encoder_config=dataclass_to_dict(pretrained.hub_config()),
                          num_outputs=num_outputs, task=task, pool=pool, class_names=tuple(class_names),
                          base_model=base if commit else str(Path(base).resolve()), base_revision=commit)
    model = TaskModel(cfg)
    model.encoder.load_state_dict(pretrained.state_dict(), strict=True)
    return model, (f"loaded {base} strictly into the encoder; new task head: head.weight, head.bias "
                   f"({num_outputs} outputs)")


def run_finetune(recipe: RecipeConfig, base: str, output_dir: str | Path, opts: FinetuneOptions,
                 revision: str | None = None) -> dict[str, Any]:
    """Fine-tune ``base`` on the recipe's labelled data with ``opts.method``; write results to ``output_dir``.

    Returns:
        ``{"method", "base", "metrics", "trainable_params", "load_report", "outputs"}`` (also in ``metrics.json``).
    """
    task = recipe.objective.config.task
    data_cls = DATASETS.get(recipe.data.name, where="recipe key data.name")
    if hasattr(data_cls, "prepare"):
        data_cls.prepare(recipe.data.config)
    dataset = data_cls(recipe.data.config)
    train, test = _split(dataset, opts)
    n_out = _num_outputs(dataset, task)
    names = tuple(getattr(dataset, "class_names", None) or ()) if task == "classification" else ()
    model, load_report = _load_base(recipe, base, revision, n_out, task, opts.pool,
                                    names if len(names) == n_out else ())
    key = hashlib.sha256(f"{base}|{revision}|{recipe.data.to_dict()}|{opts.split_seed}|{opts.test_fraction}|"
                         f"{opts.pool}".encode()).hexdigest()
    return finetune_model(model, train, test, recipe, opts, output_dir, base=base, feature_key=key,
                          class_names=getattr(dataset, "class_names", None), load_report=load_report)


def finetune_model(model: TaskModel, train: Any, test: Any, recipe: RecipeConfig, opts: FinetuneOptions,
                   output_dir: str | Path, *, base: str = "", feature_key: str | None = None,
                   class_names: list[str] | None = None, load_report: str = "") -> dict[str, Any]:
    """Fine-tune ``model`` (a pretrained encoder + new head) on ``train``, score on ``test``, write the results.

    Encoder parameters ``forward_features`` does not reach are frozen first. The strategy is
    ``make_strategy(opts.method)``; training runs through the engine under ``recipe.train`` / ``recipe.deepspeed``
    (its ``data`` and ``model`` sections are not read here). Seeded by ``recipe.train.seed``.

    Args:
        model: the task model; with ``full`` its encoder trains in place.
        train, test: torch Datasets of dict batches (or pairs) with labels.
        recipe: train, deepspeed and the ``supervised`` objective (its task must be ``model.config.task``).
        opts: the method and its options.
        output_dir: the run folder.
        base: where the weights came from (model card).
        feature_key: cache key of the frozen features of probes (None: no cache).
        class_names: names of the classes for the confusion matrix.
        load_report: what loading the base did, opening the returned ``load_report``.

    Returns:
        ``{"method", "base", "metrics", "trainable_params", "load_report", "outputs"}`` (also in ``metrics.json``).

    Raises:
        ConfigError: the recipe's objective task differs from the model's.
    """
    task = model.config.task
    if recipe.objective.config.task != task:
        raise ConfigError(f"recipe {recipe.name}, key objective.task: {recipe.objective.config.task!r} but the task "
                          f"model is built for {task!r}; make them agree")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    strategy = make_strategy(opts.method)
    torch.manual_seed(recipe.train.seed)
    job = FinetuneJob(recipe, model, train, test, out, opts, base=base, feature_key=feature_key)
    first = next(iter(job.loader(train, batch_size=min(2, len(train)))))
    job.unused = model.freeze_unused(split_batch(first, **job.keys)[0])
    tops = sorted({".".join(n.split(".")[:2]) for n in job.unused})
    load_report = "; ".join(filter(None, [load_report, f"frozen, not reached by forward_features: "
                                          f"{', '.join(tops) or 'none'} ({len(job.unused)} tensors)"]))
    strategy.fit(job)
    prob, y_true = strategy.predict(job)
    metrics = classification_metrics(y_true, prob) if task == "classification" else regression_metrics(y_true, prob)
    y_pred = prob.argmax(-1) if task == "classification" else prob
    outputs = strategy.save(job, metrics)  # every rank: ZeRO-3 gathers
    outputs.update(strategy.report(job))
    result = {"method": opts.method, "base": base, "metrics": metrics, "trainable_params": strategy.trainable_params(),
              "load_report": load_report, "outputs": outputs}
    if is_writer_rank():
        if task == "classification":
            labels = class_names or list(model.config.class_names) or [str(i) for i in range(model.config.num_outputs)]
            outputs["plot"] = str(save_confusion_matrix(y_true, y_pred, labels, out / "confusion_matrix.png",
                                                        title=f"{opts.method} on {recipe.name}"))
        else:
            outputs["plot"] = str(save_pred_vs_true(y_true, y_pred, out / "pred_vs_true.png"))
        atomic_write_text(out / "results.md", markdown_table([{"method": opts.method, **metrics}]))
        atomic_write_json(out / "metrics.json", result)
    return result
