"""`foundation finetune`: a pretrained checkpoint, a labelled data set, one of five methods.

    foundation finetune --from runs/x/export --recipe my-task.yaml --method linear-probe
    deepspeed --num_gpus 4 finetune.py --from my-org/deeperbrain --recipe my-task.yaml --method lora

Methods: ``linear-probe`` / ``mlp-probe`` (frozen features computed once and cached), ``full`` (layer-wise
LR decay, separate head LR, through the engine), ``lora`` (peft) and ``dopamine`` (gates on hidden units),
both with a trainable new head. The recipe's ``model`` section names the encoder (its config comes from the
checkpoint), ``data`` a labelled data set (dict batches with ``label`` and the entries the encoder's
``forward_features`` names, e.g. ``x``, ``pos``, ``chan_mask``; a ``num_classes`` attribute, optionally
``groups()`` for subject-disjoint splits), ``objective`` is ``supervised``. Encoder parameters that
``forward_features`` does not reach (decoders, predictors, EMA targets, other task heads) are frozen and
get no adapter (see :meth:`TaskModel.freeze_unused`); LoRA's default targets come from the encoder's
preset in :data:`foundation.adapters.targets.MODEL_PRESETS`.

Shipped recipes, one per modality: ``deeperbrain-tiny-probe``, ``slim-brain-tiny-probe``,
``ultrasound-mtl-tiny-probe`` (demo corpora; see ``benchmarks/bench_finetune.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset

from foundation.config import RecipeConfig, dataclass_to_dict
from foundation.errors import ConfigError, DataError
from foundation.finetune.features import extract_features, split_batch
from foundation.eval.metrics import classification_metrics, regression_metrics
from foundation.eval.probe import fit_probe
from foundation.eval.report import markdown_table, save_confusion_matrix, save_pred_vs_true
from foundation.data.splits import group_split
from foundation.finetune.task_model import TaskModel, TaskModelConfig, predict
from foundation.registry import DATASETS, MODELS

__all__ = ["METHODS", "FinetuneOptions", "run_finetune"]

METHODS = ("linear-probe", "mlp-probe", "full", "lora", "dopamine")
HEAD_INITS = ("probe", "random")


@dataclass
class FinetuneOptions:
    """How to fine-tune (command-line options of ``foundation finetune``)."""

    method: str = field(default="linear-probe", metadata={"help": "one of METHODS"})
    test_fraction: float = field(default=0.25, metadata={"help": "share of groups (subjects) held out"})
    split_seed: int = field(default=0, metadata={"help": "seed of the held-out split"})
    pool: str = field(default="mean", metadata={"help": "token pooling: mean | cls"})
    lr_decay: float = field(default=0.75, metadata={"help": "layer-wise LR decay of full fine-tuning"})
    head_lr_scale: float = field(default=10.0, metadata={"help": "head LR as a multiple of train.lr"})
    targets: tuple[str, ...] = field(default=(), metadata={"help": "LoRA / Dopamine target module suffixes"})
    skip_targets: tuple[str, ...] = field(default=(), metadata={"help": "Dopamine: linear layers after the gates "
                                                                        "that skip inactive units at inference"})
    lora_preset: str = field(default="", metadata={"help": "LoRA target preset when targets is empty ('': the "
                                                           "encoder's preset in MODEL_PRESETS)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    head_init: str = field(default="probe", metadata={"help": "new head of full / lora / dopamine: 'probe' (LP-FT: "
                                                              "a linear probe of the frozen features) or 'random'"})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r} unknown; valid: {', '.join(METHODS)}")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"--head-init {self.head_init!r} unknown; valid: {', '.join(HEAD_INITS)}")


class _LLRDTaskModel(TaskModel):
    """TaskModel whose optimizer groups decay the LR with depth (``blocks.i``) and scale the head's."""

    def setup_llrd(self, decay: float, head_lr_scale: float) -> None:
        self._llrd = (decay, head_lr_scale)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        decay, head_scale = getattr(self, "_llrd", (1.0, 1.0))
        return self.llrd_groups(lr, decay, lr * head_scale, weight_decay)


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


def _inputs(batch: Any, recipe: RecipeConfig) -> tuple[Any, torch.Tensor]:
    obj = recipe.objective.config
    return split_batch(batch, obj.input_key, obj.label_key)


def _load_base(recipe: RecipeConfig, base: str, revision: str | None, num_outputs: int, task: str,
               opts: FinetuneOptions, train: Subset) -> tuple[_LLRDTaskModel, list[str], str]:
    """The task model with the checkpoint loaded strictly into its encoder, and the unused encoder parameters."""
    enc_cls = MODELS.get(recipe.model.name, where="recipe key model.name")
    pretrained = enc_cls.from_pretrained(base, revision=revision)  # strict: missing/extra keys raise
    cfg = TaskModelConfig(encoder=recipe.model.name, encoder_config=dataclass_to_dict(pretrained.hub_config()),
                          num_outputs=num_outputs, task=task, pool=opts.pool)
    model = _LLRDTaskModel(cfg)
    model.encoder.load_state_dict(pretrained.state_dict(), strict=True)
    probe_batch = next(iter(DataLoader(train, batch_size=min(2, len(train)))))
    unused = model.freeze_unused(_inputs(probe_batch, recipe)[0])
    tops = sorted({".".join(n.split(".")[:2]) for n in unused})
    report = (f"loaded {base} strictly into the encoder; new task head: head.weight, head.bias ({num_outputs} outputs); "
              f"frozen, not reached by forward_features: {', '.join(tops) or 'none'} ({len(unused)} tensors)")
    return model, unused, report


def _unused_modules(model: TaskModel, unused: list[str]) -> tuple[str, ...]:
    """Names of the modules whose own parameters are all unused (adapters skip them)."""
    gone = set(unused)
    names = []
    for name, module in model.named_modules():
        own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        if own and all(n in gone for n in own):
            names.append(name)
    return tuple(names)


def _init_head_from_probe(model: TaskModel, train: Subset, task: str, opts: FinetuneOptions,
                          recipe: RecipeConfig) -> None:
    """LP-FT (Kumar et al., 2022): set the new head to a linear probe of the frozen features of ``train``.

    Fine-tuning then starts from the probe's solution instead of first pulling the pretrained features
    towards a random head. The probe's standardisation is folded into the head (``ProbeResult.as_linear``),
    so the head reads the encoder's pooled features ``[B, D]`` as they are. A class missing from the
    training split keeps a zero weight row and a bias 10 below the smallest (it is never predicted,
    as with a probe that never saw it).
    """
    obj = recipe.objective.config
    X, y = extract_features(model.encoder, DataLoader(train, batch_size=64), pool=opts.pool,
                            input_key=obj.input_key, label_key=obj.label_key)
    lin = fit_probe(X, y, X, y, kind="linear", task=task, seed=recipe.train.seed).as_linear()
    with torch.no_grad():
        head = model.head
        n = lin.weight.shape[0]
        head.weight.zero_()
        head.bias.fill_(float(lin.bias.min()) - 10.0)
        head.weight[:n].copy_(lin.weight)
        head.bias[:n].copy_(lin.bias)


def _wrap(model: _LLRDTaskModel, opts: FinetuneOptions, unused: list[str]) -> torch.nn.Module:
    if opts.method == "full":
        model.setup_llrd(opts.lr_decay, opts.head_lr_scale)
        return model
    if opts.method == "lora":
        from foundation.adapters import LoraAdapterConfig, LoraAdapterModel
        from foundation.adapters.targets import model_preset

        skip = ("head",) + _unused_modules(model, unused)  # the new head trains whole
        cfg = (LoraAdapterConfig(preset="custom", target_modules=opts.targets, exclude_modules=skip, r=opts.lora_r)
               if opts.targets else LoraAdapterConfig(preset=opts.lora_preset or model_preset(model.config.encoder),
                                                      exclude_modules=skip, r=opts.lora_r))
        wrapped = LoraAdapterModel.inject(model, cfg)
    else:
        from foundation.adapters import DopamineConfig, DopamineModel

        kw = {"target_modules": opts.targets, "skip_modules": opts.skip_targets} if opts.targets else {}
        wrapped = DopamineModel(model, DopamineConfig(**kw))
    for p in model.head.parameters():  # the new head always trains
        p.requires_grad_(True)
    return wrapped


def _predict(model: torch.nn.Module, data: Subset, task: str, recipe: RecipeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    obj = recipe.objective.config
    return predict(model, DataLoader(data, batch_size=64), task, obj.input_key, obj.label_key)


def _cached_features(encoder: torch.nn.Module, train: Subset, test: Subset, out: Path, key: str,
                     pool: str, recipe: RecipeConfig) -> tuple[torch.Tensor, ...]:
    file = out / "features.safetensors"
    if file.is_file():
        cached = load_file(file)
        meta = json.loads((out / "features.json").read_text()) if (out / "features.json").is_file() else {}
        if meta.get("key") == key:
            return cached["X_train"], cached["y_train"], cached["X_test"], cached["y_test"]
    keys = {"input_key": recipe.objective.config.input_key, "label_key": recipe.objective.config.label_key}
    Xtr, ytr = extract_features(encoder, DataLoader(train, batch_size=64), pool=pool, **keys)
    Xte, yte = extract_features(encoder, DataLoader(test, batch_size=64), pool=pool, **keys)
    tmp = out / ".features.tmp.safetensors"
    save_file({"X_train": Xtr, "y_train": ytr, "X_test": Xte, "y_test": yte}, str(tmp))
    os.replace(tmp, file)
    (out / "features.json").write_text(json.dumps({"key": key}))
    return Xtr, ytr, Xte, yte


def run_finetune(recipe: RecipeConfig, base: str, output_dir: str | Path, opts: FinetuneOptions,
                 revision: str | None = None) -> dict[str, Any]:
    """Fine-tune ``base`` on the recipe's labelled data with ``opts.method``; write results to ``output_dir``.

    Returns:
        ``{"method", "base", "metrics", "trainable_params", "outputs"}`` (also written to ``metrics.json``).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = recipe.objective.config.task
    data_cls = DATASETS.get(recipe.data.name, where="recipe key data.name")
    if hasattr(data_cls, "prepare"):
        data_cls.prepare(recipe.data.config)
    dataset = data_cls(recipe.data.config)
    train, test = _split(dataset, opts)
    model, unused, load_report = _load_base(recipe, base, revision, _num_outputs(dataset, task), task, opts, train)
    outputs: dict[str, str] = {}
    if opts.method.endswith("probe"):
        key = hashlib.sha256(f"{base}|{revision}|{recipe.data.to_dict()}|{opts.split_seed}|{opts.test_fraction}|"
                             f"{opts.pool}".encode()).hexdigest()
        Xtr, ytr, Xte, yte = _cached_features(model.encoder, train, test, out, key, opts.pool, recipe)
        res = fit_probe(Xtr, ytr, Xte, yte, kind=opts.method.split("-")[0], task=task, seed=recipe.train.seed)
        metrics, y_pred, y_true = res.metrics, res.y_pred, yte
        trainable = sum(p.numel() for p in res.model.parameters())
        save_file({k: v.contiguous() for k, v in res.model.state_dict().items()}, str(out / "probe_head.safetensors"))
        outputs["probe_head"] = str(out / "probe_head.safetensors")
        is_main = True
    else:
        from foundation.pretrain.engine import Engine

        if opts.head_init == "probe":
            _init_head_from_probe(model, train, task, opts, recipe)
        wrapped = _wrap(model, opts, unused)
        wrapped.train()  # frozen batch norms stay in eval mode (TaskModel.train)
        trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        Engine(recipe, out / "run", export=False, model=wrapped, dataset=train).run()
        is_main = torch.distributed.get_rank() == 0
        if opts.method == "dopamine":
            wrapped.reset_mac_counts()
        prob, y_true = _predict(wrapped, test, task, recipe)
        if opts.method == "dopamine":
            outputs.update(_dopamine_report(wrapped, test, task, model.config.num_outputs, out, is_main, recipe))
        metrics = classification_metrics(y_true, prob) if task == "classification" else regression_metrics(y_true, prob)
        y_pred = prob.argmax(-1) if task == "classification" else prob
        outputs.update(_save_trained(wrapped, model, opts, out, base, metrics))  # every rank: ZeRO-3 gathers
    result = {"method": opts.method, "base": base, "metrics": metrics, "trainable_params": trainable,
              "load_report": load_report, "outputs": outputs}
    if is_main:
        if task == "classification":
            labels = getattr(dataset, "class_names", None) or [str(i) for i in range(model.config.num_outputs)]
            outputs["plot"] = str(save_confusion_matrix(y_true, y_pred, labels, out / "confusion_matrix.png",
                                                        title=f"{opts.method} on {recipe.data.name}"))
        else:
            outputs["plot"] = str(save_pred_vs_true(y_true, y_pred, out / "pred_vs_true.png"))
        (out / "results.md").write_text(markdown_table([{"method": opts.method, **metrics}]))
        tmp = out / ".metrics.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, out / "metrics.json")
    return result


def _dopamine_report(wrapped: Any, test: Subset, task: str, num_outputs: int, out: Path,
                     is_main: bool, recipe: RecipeConfig) -> dict[str, str]:
    """Multiply-adds skipped by the hard gate on the test set (``macs.json``); per-class neuron firing
    (table + heatmap) for classification."""
    from foundation.adapters.dopamine.attribution import neuron_attribution, write_attribution

    macs = wrapped.mac_counts()
    done, dense = sum(d for d, _ in macs.values()), sum(n for _, n in macs.values())
    files: dict[str, str] = {}
    if is_main and dense:
        report = {"layers": {k: {"done": d, "dense": n} for k, (d, n) in macs.items()},
                  "done": done, "dense": dense, "saved_fraction": 1 - done / dense}
        (out / "macs.json").write_text(json.dumps(report, indent=2))
        files["macs"] = str(out / "macs.json")
    if task == "classification":
        pairs = (_inputs(b, recipe) for b in DataLoader(test, batch_size=64))
        rates = neuron_attribution(wrapped, pairs, num_outputs)  # every rank (ZeRO-3 forward is collective)
        if is_main:
            files.update({f"attribution_{k}": str(v) for k, v in write_attribution(rates, out / "attribution").items()})
    return files


def _save_trained(wrapped: torch.nn.Module, model: TaskModel, opts: FinetuneOptions, out: Path, base: str,
                  metrics: dict[str, float]) -> dict[str, str]:
    """Save the fine-tuned model (full) or adapter + head; call on every rank (ZeRO-3 shards are gathered)."""
    from foundation.adapters.state import gathered_state_dict, is_writer_rank
    from foundation.hub import ModelCardInfo
    from foundation.hub.card import write_model_card

    card = ModelCardInfo(description=f"{opts.method} fine-tune of {base}.", tags=("fine-tuned", opts.method),
                         metrics=metrics, base_model=base)
    if opts.method == "full":
        state = gathered_state_dict(model, keep=lambda name: True)
        if is_writer_rank():
            fresh = TaskModel(model.config)
            fresh.load_state_dict(state, strict=True)
            fresh.save_pretrained(out / "model", card=card)
        return {"model": str(out / "model")}
    folder = out / "adapter"
    if opts.method == "lora":
        from foundation.adapters import LoraAdapterModel

        LoraAdapterModel.save(wrapped, folder)
    else:
        wrapped.save_adapter(folder)
    head = gathered_state_dict(model.head, keep=lambda name: True)
    if is_writer_rank():
        tmp = out / ".head.tmp.safetensors"
        save_file(head, str(tmp))
        os.replace(tmp, out / "head.safetensors")
        write_model_card(folder, card, model.model_name, model.config)
    return {"adapter": str(folder), "head": str(out / "head.safetensors")}
