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

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from foundation.adapters.state import is_writer_rank
from foundation.atomic import atomic_write_json, atomic_write_text
from foundation.config import RecipeConfig, dataclass_to_dict
from foundation.data.protocol import (
    check_preprocessing,
    class_labels,
    item_rows,
    prepare_dataset,
    preprocessing_of,
)
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
from foundation.finetune.bases import importer_for, load_base
from foundation.registry import DATASETS, MODELS

__all__ = ["FinetuneOptions", "finetune_model", "method_names", "run_finetune"]


def _num_outputs(dataset: Any, task: str) -> int:
    attr = "num_classes" if task == "classification" else "num_targets"
    value = getattr(dataset, attr, None)
    if not isinstance(value, int) or value < 1:
        raise DataError(f"data set {type(dataset).__name__} has no positive integer {attr!r} attribute; "
                        f"a fine-tuning data set must say how many {attr.split('_')[1]} it has")
    return value


def _say(message: str) -> None:
    """A progress line on stderr (rank 0 only)."""
    import os
    import sys

    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def _label(y: torch.Tensor, names: list[str] | None) -> Any:
    if names is not None:
        return names[int(y)]
    return float(y) if y.dim() == 0 else ";".join(f"{float(v):.6f}" for v in y.reshape(-1))


def _split(dataset: Any, opts: FinetuneOptions, task: str) -> tuple[Subset, Subset, str]:
    """Subject/patient-disjoint train and held-out splits, and a sentence saying how they were made.

    Classification splits are stratified (scikit-learn's ``StratifiedGroupKFold``) so that every class is on
    both sides. When the subjects cannot allow it (too few subjects of a class for the held-out share), the
    split is the plain grouped one and the sentence says so, with the reason; it goes into the load report
    (printed, and in ``metrics.json``), and the metrics then cover the classes present.
    """
    groups = dataset.groups() if hasattr(dataset, "groups") else list(range(len(dataset)))
    note = "held-out split grouped by subject"
    if task == "classification":
        try:
            train_idx, test_idx = group_split(groups, opts.test_fraction, opts.split_seed,
                                              labels=class_labels(dataset))
            note += ", stratified: every class on both sides"
        except DataError as err:
            train_idx, test_idx = group_split(groups, opts.test_fraction, opts.split_seed)
            note += f", NOT stratified ({err})"
            _say(f"note: {note}")
    else:
        train_idx, test_idx = group_split(groups, opts.test_fraction, opts.split_seed)
    return Subset(dataset, train_idx.tolist()), Subset(dataset, test_idx.tolist()), note


def check_base(recipe: RecipeConfig, base: str, revision: str | None = None,
               arch: str | None = None) -> tuple[Path | None, str]:
    """Check ``--from`` before any work: the folder exists (or the Hub serves the id) and holds a checkpoint of
    the recipe's model, or an imported checkpoint (a published EEG release file or braindecode folder) or
    ``arch:NAME`` whose data the recipe can feed. Only ``config.json`` is fetched from the Hub.

    Returns:
        ``(folder holding config.json, or None for a file or arch:NAME; resolved Hub commit or '')``.

    Raises:
        CheckpointError: a path that is no folder, or a folder without a suite ``config.json``.
        ConfigError: the checkpoint is of another model than ``recipe.model.name`` (names the recipes to use).
        HubError: the Hub cannot serve the id or revision.
    """
    import json

    from foundation.errors import CheckpointError
    from foundation.hub.names import CONFIG_NAME
    from foundation.finetune.bases import ARCH_PREFIX, base_model_name

    path = Path(base)
    if base.startswith(ARCH_PREFIX) or (path.is_file() and importer_for(base) is not None):
        folder, commit = None, ""
    elif path.is_dir():
        folder, commit = path, ""
    elif path.exists() or base.startswith((".", "/", "~")) or base.count("/") != 1:
        raise CheckpointError(f"--from {base!r}: no such folder, and not a Hub id 'owner/name'; give the folder "
                              f"written by `foundation export` (holding {CONFIG_NAME}) or a Hub repository id")
    else:
        from foundation.hub.client import download_folder

        folder = download_folder(base, revision, allow_patterns=[CONFIG_NAME])
        commit = folder.name  # the cache's snapshots/<sha>
    importer = importer_for(base, folder)
    if importer is not None or folder is None:
        found = base_model_name(base, arch, folder)[0]
        if importer is not None:
            if not importer.fits(recipe.data.name):
                raise ConfigError(f"--from {base!r} is a {found!r} checkpoint (EEG) but recipe {recipe.name} reads data "
                                  f"set {recipe.data.name!r} (key data.name); use an EEG recipe (data.name: "
                                  "eeg-windows), e.g. deeperbrain-tiny-probe")
            return folder, commit
    else:
        file = folder / CONFIG_NAME
        try:
            found = json.loads(file.read_text()).get("model_name") if file.is_file() else None
        except (json.JSONDecodeError, AttributeError):
            found = None
    if found is None:
        raise CheckpointError(f"--from {base!r}: no readable {CONFIG_NAME} with a model_name; not a checkpoint "
                              f"exported by foundation-suite (run `foundation export` on the pretraining run)")
    if found != recipe.model.name:
        raise ConfigError(f"--from {base!r} is a {found!r} checkpoint but recipe {recipe.name} (key model.name) "
                          f"builds {recipe.model.name!r}; use a {found}-* recipe (e.g. {found}-tiny-probe) or a "
                          f"recipe whose model.name is {found!r}")
    return folder, commit


def read_preprocessing(folder: Path) -> dict[str, Any]:
    """The ``preprocessing`` a checkpoint's ``config.json`` records (``{}`` when it records none)."""
    import json

    from foundation.hub.names import CONFIG_NAME

    try:
        data = json.loads((Path(folder) / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    value = data.get("preprocessing") if isinstance(data, dict) else None
    return dict(value) if isinstance(value, dict) else {}


def _full_snapshot(base: str, revision: str | None) -> Path:
    """Every file of Hub repository ``base`` (check_base fetched only config.json)."""
    from foundation.hub.client import download_folder

    return download_folder(base, revision)


def checkpoint_recipe(recipe: RecipeConfig, encoder_config: Any) -> RecipeConfig:
    """``recipe`` with its model config replaced by the checkpoint's (what the fine-tune really ran)."""
    import dataclasses

    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, config=encoder_config))


def _load_base(recipe: RecipeConfig, base: str, revision: str | None, num_outputs: int, task: str,
               pool: str, class_names: tuple[str, ...] = (), commit: str = "", encoder: Any = None,
               line: str = "") -> tuple[TaskModel, str]:
    """The task model with the checkpoint loaded strictly into its encoder, and a sentence saying so.

    ``encoder``: an encoder already loaded (an imported checkpoint or ``arch:NAME``; ``line`` says how), used as is.
    """
    if encoder is not None:
        cfg = TaskModelConfig(encoder=encoder.model_name, encoder_config=dataclass_to_dict(encoder.hub_config()),
                              num_outputs=num_outputs, task=task, pool=pool, class_names=tuple(class_names),
                              base_model=base, base_revision="")
        return TaskModel(cfg, encoder=encoder), (f"{line}; new task head: head.weight, head.bias "
                                                 f"({num_outputs} outputs)")
    enc_cls = MODELS.get(recipe.model.name, where="recipe key model.name")
    pretrained = enc_cls.from_pretrained(base, revision=commit or revision)  # strict: missing/extra keys raise
    cfg = TaskModelConfig(encoder=recipe.model.name, encoder_config=dataclass_to_dict(pretrained.hub_config()),
                          num_outputs=num_outputs, task=task, pool=pool, class_names=tuple(class_names),
                          base_model=base if commit else str(Path(base).resolve()), base_revision=commit)
    model = TaskModel(cfg)
    model.encoder.load_state_dict(pretrained.state_dict(), strict=True)
    at = f" at commit {commit}" if commit else ""
    return model, (f"loaded {base}{at} strictly into the encoder; new task head: head.weight, head.bias "
                   f"({num_outputs} outputs)")


def run_finetune(recipe: RecipeConfig, base: str, output_dir: str | Path, opts: FinetuneOptions,
                 revision: str | None = None, provenance: dict[str, Any] | None = None,
                 split: tuple[list[int], list[int]] | None = None) -> dict[str, Any]:
    """Fine-tune ``base`` on the recipe's labelled data with ``opts.method``; write results to ``output_dir``.

    ``--from`` and the recipe/checkpoint match are checked first (:func:`check_base`), before the data set is
    built. The run folder also gets ``recipe.yaml`` (with the checkpoint's model config), ``provenance.json``
    and ``predictions.csv`` (held-out predictions per item, with subject).

    Args:
        provenance: what to record about the run (command line, versions); ``--from``, the resolved commit
            and the method are added.
        split: ``(train indices, held-out indices)`` into the data set, in place of the runner's own
            held-out split (``foundation benchmark`` passes each cross-validation fold).

    Returns:
        ``{"method", "base", "metrics", "trainable_params", "load_report", "outputs"}`` (also in ``metrics.json``).
    """
    folder, commit = check_base(recipe, base, revision, opts.arch or None)
    encoder, line, importer = None, "", None
    if base.startswith("arch:") or importer_for(base, folder) is not None:  # imported or random init: built first,
        encoder, line, importer = load_base(  # since its input contract sets the data's rate, window and units
            base, revision, arch=opts.arch or None, window_seconds=getattr(recipe.data.config, "window_seconds", None),
            exclude=opts.exclude_keys, overrides=opts.arch_set, folder=_full_snapshot(base, revision) if commit else None)
        if importer is not None:
            recipe = dataclasses.replace(recipe, data=importer.adapt_data(recipe.data, encoder))
        recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, name=encoder.model_name,
                                                                       config=encoder.hub_config()))
    _say(f"{recipe.name}: --from {base} checked" + (f" (commit {commit})" if commit else "") +
         f"; preparing data set {recipe.data.name} (a first run builds the cache)")
    task = recipe.objective.config.task
    data_cls = DATASETS.get(recipe.data.name, where="recipe key data.name")
    prepare_dataset(data_cls, recipe.data.config)
    dataset = data_cls(recipe.data.config)
    if importer is not None:
        dataset = importer.adapt_dataset(dataset, encoder)
        line = f"{line}; input contract: {dataset.summary()}"
    elif encoder is None:  # a suite checkpoint says what its training data looked like
        check_preprocessing(read_preprocessing(folder), preprocessing_of(dataset), f"--from {base}",
                            f"recipe {recipe.name}")
    if split is None:
        train, test, split_note = _split(dataset, opts, task)
    else:  # the caller's split (a cross-validation fold)
        train, test, split_note = Subset(dataset, list(split[0])), Subset(dataset, list(split[1])), "split given"
    n_out = _num_outputs(dataset, task)
    names = tuple(getattr(dataset, "class_names", None) or ()) if task == "classification" else ()
    _say(f"{recipe.name}: {len(train)} training and {len(test)} held-out items; loading {base}")
    model, load_report = _load_base(recipe, base, revision, n_out, task, opts.pool,
                                    names if len(names) == n_out else (), commit, encoder=encoder, line=line)
    enc_cls = MODELS.get(recipe.model.name)
    from foundation.config import dataclass_from_dict

    ran = checkpoint_recipe(recipe, dataclass_from_dict(enc_cls.config_class, model.config.encoder_config,
                                                        "checkpoint config"))
    record = {**(provenance or {}), "from": base, "revision": revision, "resolved_commit": commit or None,
              "method": opts.method, "options": dataclass_to_dict(opts)}
    key = hashlib.sha256(f"{base}|{commit or revision}|{recipe.data.to_dict()}|{opts.pool}|"
                         f"{list(test.indices)}".encode()).hexdigest()  # the held-out items themselves, not how chosen
    model.config.provenance = record  # into config.json and the card
    model.config.preprocessing = preprocessing_of(dataset)
    out = Path(output_dir)
    if encoder is not None:  # the base as a suite folder, so that the fine-tune's folder loads without the original
        model.config.base_model = str((out / "base").resolve())
    if is_writer_rank():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "recipe.yaml", ran.to_yaml())
        atomic_write_json(out / "provenance.json", record)
        if encoder is not None:
            encoder.save_pretrained(out / "base")
            report = getattr(encoder, "key_report", None)
            atomic_write_json(out / "base_load.json", {
                "from": base, "line": line, "keys": report.to_dict() if report is not None else None,
                "channels": getattr(dataset, "channel_report", None)})
    return finetune_model(model, train, test, ran, opts, output_dir, base=base, feature_key=key,
                          class_names=list(model.config.class_names) or None,
                          load_report="; ".join([load_report, split_note]), items=item_rows(dataset, test.indices))


def write_predictions(path: str | Path, out: torch.Tensor, task: str, class_names: list[str] | None = None,
                      rows: list[dict[str, Any]] | None = None) -> Path:
    """Write predictions as CSV: the ``rows`` columns (index, subject, label, ...), then ``prediction`` and, for
    classification, ``prob_<class>`` per class (probabilities ``out [S, C]``); regression ``out [S]`` or ``[S, K]``.
    """
    import csv
    import io

    rows = rows or [{} for _ in range(len(out))]
    lead = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.writer(buf)
    if task == "classification":
        names = class_names or [str(c) for c in range(out.shape[1])]
        writer.writerow([*lead, "prediction", *[f"prob_{n}" for n in names]])
        for r, p in zip(rows, out.tolist()):
            best = max(range(len(p)), key=p.__getitem__)
            writer.writerow([*[r.get(k, "") for k in lead], names[best], *[f"{v:.6f}" for v in p]])
    else:
        flat = out.reshape(len(out), -1).tolist()
        cols = ["prediction"] if len(flat[0]) == 1 else [f"prediction_{k}" for k in range(len(flat[0]))]
        writer.writerow([*lead, *cols])
        for r, v in zip(rows, flat):
            writer.writerow([*[r.get(k, "") for k in lead], *[f"{x:.6f}" for x in v]])
    return atomic_write_text(Path(path), buf.getvalue())


def finetune_model(model: TaskModel, train: Any, test: Any, recipe: RecipeConfig, opts: FinetuneOptions,
                   output_dir: str | Path, *, base: str = "", feature_key: str | None = None,
                   class_names: list[str] | None = None, load_report: str = "",
                   items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
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
        items: per held-out item, the leading columns of ``predictions.csv`` (``index`` in the data set,
            ``subject``); default: the position in ``test``.

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
    _say(f"{opts.method}: fitting ({strategy.name or opts.method})")
    strategy.fit(job)
    _say(f"{opts.method}: predicting the held-out split")
    prob, y_true = strategy.predict(job)
    metrics = classification_metrics(y_true, prob) if task == "classification" else regression_metrics(y_true, prob)
    y_pred = prob.argmax(-1) if task == "classification" else prob
    outputs = strategy.save(job, metrics)  # every rank: ZeRO-3 gathers
    outputs.update(strategy.report(job))
    result = {"method": opts.method, "base": base, "metrics": metrics, "trainable_params": strategy.trainable_params(),
              "load_report": load_report, "outputs": outputs}
    if is_writer_rank():
        labels = None
        if task == "classification":
            labels = class_names or list(model.config.class_names) or [str(i) for i in range(model.config.num_outputs)]
            outputs["plot"] = str(save_confusion_matrix(y_true, y_pred, labels, out / "confusion_matrix.png",
                                                        title=f"{opts.method} on {recipe.name} (held-out subjects)"))
        else:
            outputs["plot"] = str(save_pred_vs_true(y_true, y_pred, out / "pred_vs_true.png"))
        atomic_write_text(out / "results.md", markdown_table([{"method": opts.method, **metrics}]))
        rows = [{**(items[i] if items else {"index": i}), "label": _label(y_true[i], labels)}
                for i in range(len(y_true))]
        outputs["predictions"] = str(write_predictions(out / "predictions.csv", prob, task,
                                                       labels if task == "classification" else None, rows))
        atomic_write_json(out / "metrics.json", result)
    return result
