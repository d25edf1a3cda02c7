"""The ``foundation`` command: pretrain, finetune, export, push, predict, benchmark, explain, info.

Examples::

    foundation pretrain --recipe deeperbrain-tiny --output-dir runs/eeg
    foundation finetune --from my-org/deeperbrain-tiny --recipe deeperbrain-tiny-probe --method lora
    foundation predict --model runs/deeperbrain-tiny-probe/lora-20261129-230000/adapter \
        --data deeperbrain-tiny-probe --out preds.csv
    deepspeed --num_gpus 8 pretrain.py --recipe slim-brain --set train.lr=3e-4
    foundation pretrain --recipe runs/eeg/recipe.yaml --output-dir runs/eeg --resume
    foundation benchmark --models runs/eeg/export --recipe deeperbrain-tiny-probe --methods linear-probe lora
    foundation export runs/eeg --out exported/
    foundation push exported/ my-org/deeperbrain-tiny --private
    foundation explain --model runs/eeg-lora/adapter --data deeperbrain-tiny-probe --method ig rollout --out expl/
    foundation info
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn
from pathlib import Path

from foundation.errors import FoundationError

__all__ = ["main", "script_main", "build_parser"]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written, and every option's default shown (unless it is None, False or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "%(default)" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


# every dependency of pyproject.toml (a test keeps them in step), the extras the suite imports (braindecode for the
# published EEG models; captum, zennit, grad-cam for `foundation explain`) and triton
RUNTIME_PACKAGES = ("torch", "deepspeed", "numpy", "scipy", "scikit-learn", "safetensors", "huggingface_hub", "httpx2",
                    "peft", "timm", "monai", "mne", "mne-bids", "pybids", "nibabel", "nilearn", "pydicom", "matplotlib",
                    "tqdm", "yaml", "braindecode", "captum", "zennit", "grad-cam", "triton")
METHODS_HELP = "linear-probe | mlp-probe | full | lora | dopamine | another registered adapter method"


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", required=True, help="shipped recipe name (wins over a same-named folder) or path "
                                                   "to a YAML recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable, e.g. --set train.lr=3e-4")
    p.add_argument("--output-dir", default=None, help="run folder (default: a new runs/<recipe name>/<pretrain or "
                                                        "method>-<UTC timestamp>); a non-empty one is refused unless "
                                                        "--resume or --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the previous run in --output-dir (a folder "
                                                            "holding no run is never deleted)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    from foundation import __version__

    parser = argparse.ArgumentParser(prog="foundation", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"foundation-suite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)

    pre = add("pretrain", "pretrain a recipe with the DeepSpeed engine")
    _add_run_args(pre)
    pre.add_argument("--resume", action="store_true", help="continue exactly from <output-dir>/checkpoints/latest")
    pre.add_argument("--stop-after", type=int, default=None, metavar="N",
                     help="checkpoint and stop after N optimizer steps of this invocation (schedule unchanged)")
    pre.add_argument("--no-export", action="store_true", help="skip the save_pretrained export at the end")
    ft = add("finetune", "train a recipe starting from a pretrained model")
    _add_run_args(ft)
    ft.add_argument("--from", dest="base", required=True,
                    help="Hub repo id or local save_pretrained folder; a published EEG release file or braindecode "
                         "folder (LaBraM, CBraMod, EEGPT, BIOT, BENDR); arch:NAME for random init (arch:labram, "
                         "arch:deeperbrain-tiny)")
    ft.add_argument("--arch", default="", help="architecture of a published checkpoint whose file cannot tell it "
                                               "(labram, cbramod, eegpt, biot, bendr)")
    ft.add_argument("--exclude-keys", dest="exclude_keys", nargs="*", default=[],
                    help="keys (or prefixes) of a published checkpoint to leave out of its strict load")
    ft.add_argument("--arch-set", dest="arch_set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a published checkpoint's contract field (channels, missing_channels) or braindecode size "
                         "(num_heads ...), repeatable; value read as YAML")
    ft.add_argument("--missing-channels", dest="missing_channels", default=None, choices=["interpolate", "mask"],
                    help="channels of a published checkpoint's table a recording lacks: interpolate (MNE spherical "
                         "splines, default) or mask (zeros)")
    ft.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --from")
    ft.add_argument("--method", default="full", help=METHODS_HELP)
    ft.add_argument("--test-fraction", type=float, default=0.25, help="share of subjects/groups held out")
    ft.add_argument("--targets", nargs="*", default=[], help="adapter target module suffixes (default: the "
                                                             "method's preset for the encoder)")
    ft.add_argument("--adapter-set", dest="adapter_set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a field of the adapter's config, repeatable, e.g. --adapter-set r=4 (value read as YAML)")
    ft.add_argument("--skip-targets", nargs="*", default=None,
                    help="shorthand for --adapter-set skip_modules=[...] (Dopamine: layers that skip inactive units)")
    ft.add_argument("--lora-r", type=int, default=None, help="shorthand for --adapter-set r=N (LoRA rank)")
    ft.add_argument("--lr-decay", type=float, default=0.75, help="layer-wise LR decay (full)")
    ft.add_argument("--head-init", default="probe", choices=["probe", "random"],
                    help="new head of trained methods: a linear probe of the frozen features (LP-FT) or random")
    ex = add("export", "consolidate a run's checkpoint into a save_pretrained folder")
    ex.add_argument("run_dir", help="run folder written by `foundation pretrain`")
    ex.add_argument("--out", default=None, help="target folder (default: <run_dir>/export)")
    ex.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    push = add("push", "upload a save_pretrained or fine-tune folder to the Hub")
    push.add_argument("folder", help="an export or a fine-tune's model/ or adapter/ folder")
    push.add_argument("repo_id", help="owner/name")
    push.add_argument("--private", action="store_true")
    push.add_argument("--message", default=None, help="commit message")
    push.add_argument("--revision", default=None, help="branch to push to")
    pr = add("predict", "run a fine-tuned model over a data set and write predictions per item (CSV)")
    pr.add_argument("--model", required=True, help="a fine-tune folder or Hub id (foundation.load reads it)")
    pr.add_argument("--revision", default=None, help="Hub revision of --model")
    pr.add_argument("--data", required=True, help="a recipe (shipped name or YAML path) whose data section builds "
                                                  "the data set")
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override of the data recipe, repeatable, e.g. --set data.cache_dir=cache")
    pr.add_argument("--out", required=True, help="CSV to write (index, subject, source, label, prediction, prob_<class>)")
    pr.add_argument("--batch-size", type=int, default=64, help="items per forward pass")
    bm = add("benchmark", "subject-grouped, class-stratified K-fold cross-validation of models x methods")
    bm.add_argument("--models", nargs="+", required=True, metavar="[LABEL=]SPEC",
                    help="models to compare: anything --from of finetune takes, optionally labelled")
    bm.add_argument("--recipe", required=True, help="labelled fine-tuning recipe (shipped name or YAML path)")
    bm.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override of the recipe, repeatable")
    bm.add_argument("--methods", nargs="+", default=["linear-probe"], help=METHODS_HELP)
    bm.add_argument("--folds", type=int, default=5, help="K of the K-fold (every subject held out once)")
    bm.add_argument("--seed", type=int, default=0, help="seed of the folds")
    bm.add_argument("--adapter-set", dest="adapter_set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a field of the adapter's config for every adapter row, e.g. --adapter-set r=4")
    bm.add_argument("--output-dir", default=None, help="benchmark folder (default: a new runs/benchmark/<recipe>-"
                                                       "<timestamp>); an existing benchmark there resumes")
    pr.add_argument("--skip-idle-below", type=float, default=None, metavar="SHARE",
                    help="skip the residual layers that change the residual stream materially (relative change > "
                         "--activity-threshold) on fewer than this share of the first 64 items (foundation.explain)")
    pr.add_argument("--activity-threshold", type=float, default=0.1,
                    help="with --skip-idle-below: relative change of the residual stream that counts as material")
    exp = add("explain", "attributions of a model on a data set, checked against planted signal where known")
    exp.add_argument("--model", required=True, help="a fine-tune or pretrained folder or Hub id (foundation.load)")
    exp.add_argument("--revision", default=None, help="Hub revision of --model")
    exp.add_argument("--data", required=True, help="a recipe (shipped name or YAML path) whose data section builds "
                                                   "the data set")
    exp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="dotted override of the data recipe, repeatable")
    exp.add_argument("--method", dest="methods", nargs="*", default=[],
                     help="ig | occlusion | lrp | gradcam | rollout | random | relp (default: the modality's set)")
    exp.add_argument("--out", required=True, help="folder for the maps, tables and plots")
    exp.add_argument("--n-items", type=int, default=12, help="items explained, spread over the classes")
    exp.add_argument("--items", type=int, nargs="*", default=[], help="explicit item indices of the data set")
    exp.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps")
    exp.add_argument("--threshold", type=float, default=0.1,
                     help="layer activity: relative change of the residual stream that counts as material")
    exp.add_argument("--task", default="", help="ultrasound multi-task model: the segmentation head to explain")
    exp.add_argument("--lrp-attention", default="cp", choices=["cp", "attnlrp"],
                     help="--method lrp on the transformers: CP-LRP (attention weights held) or AttnLRP's softmax "
                          "and uniform q.k / P.v rules")
    add("info", "versions, accelerator, recipes and registered components")
    return parser


def _run(args: argparse.Namespace) -> int:
    import os
    import time

    from foundation.config import load_recipe
    from foundation.pretrain.engine import Engine

    recipe = load_recipe(args.recipe, args.overrides)
    if args.command == "finetune":
        return _finetune(recipe, args, run_output_dir(args, recipe.name, args.method))
    out = run_output_dir(args, recipe.name, "pretrain")
    import torch.distributed as dist

    from foundation.pretrain.export import export_run

    record = provenance(args.argv)
    if os.environ.get("RANK", "0") == "0":
        from foundation.atomic import atomic_write_json

        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = f"provenance-resume-{stamp}.json" if args.resume else "provenance.json"
        atomic_write_json(out / name, record)  # a resume keeps the first invocation's record and adds its own
    result = Engine(recipe, out, resume=args.resume, stop_after=args.stop_after).run()
    export_dir = None
    if not (result.stopped_early or args.no_export):
        dist.barrier()
        if dist.get_rank() == 0:
            export_dir = export_run(recipe, result, card_extra={"provenance": record})
        dist.barrier()
    if dist.get_rank() == 0:
        status = "stopped early" if result.stopped_early else "finished"
        print(f"\n{recipe.name}: {status} at step {result.step}")
        print(f"  checkpoint : {result.checkpoint}")
        print(f"  metrics    : {out / 'metrics.jsonl'}")
        print(f"  curves     : {result.curves}")
        if export_dir is not None:
            print(f"  export     : {export_dir}")
            print(f"  model card : {export_dir / 'README.md'}")
    _teardown(dist)
    return 0


def run_output_dir(args: argparse.Namespace, recipe_name: str, kind: str) -> Path:
    """The run folder of ``foundation pretrain`` (``kind="pretrain"``) or ``finetune`` (``kind`` = the method).

    ``--output-dir`` when given: a non-empty folder is refused unless ``--resume`` (continue the run there) or
    ``--overwrite`` (replace a previous run of the same command; a folder holding no run is left alone). Without
    it, a new ``runs/<recipe>/<kind>-<UTC timestamp>`` (one process; a multi-process launch, and ``--resume``,
    must name the folder).

    Raises:
        ConfigError: a non-empty folder without ``--resume``/``--overwrite``; ``--overwrite`` on a folder that
            holds no run; ``--resume`` on an empty or missing folder; no ``--output-dir`` under a multi-process
            launch or with ``--resume``.
    """
    import os
    import shutil
    import time

    from foundation.errors import ConfigError

    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume continues the run in "
                          "--output-dir, --overwrite replaces it; give one")
    if args.output_dir is None:
        if resume:
            raise ConfigError("--resume: name the run folder to continue with --output-dir (e.g. --output-dir "
                              f"runs/{recipe_name}/{kind}-20260101-120000)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"--output-dir: required under a multi-process launch (every rank must name the same "
                              f"folder), e.g. --output-dir runs/{recipe_name}/{kind}-1")
        base = Path("runs") / recipe_name / f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
        out, n = base, 1
        while out.exists():
            n += 1
            out = base.with_name(f"{base.name}-{n}")
        return out
    out = Path(args.output_dir)
    if out.is_file():
        raise ConfigError(f"--output-dir {str(out)!r} is a file; give a folder")
    if os.environ.get("RANK", "0") != "0":  # rank 0 checks (and may already be writing there); the launcher
        return out                           # stops every rank when it refuses
    busy = out.is_dir() and any(out.iterdir())
    if resume:
        if not busy:
            raise ConfigError(f"--resume: {str(out)!r} holds no run to continue; drop --resume to start one there")
        return out
    if busy:
        if not overwrite:
            raise ConfigError(f"--output-dir {str(out)!r} is not empty; a run never overwrites another: give a new "
                              f"folder, leave --output-dir out (a fresh runs/<recipe>/{kind}-<timestamp>), pass "
                              f"--resume to continue that run, or --overwrite to replace it")
        marks = ("recipe.yaml", "metrics.jsonl", "checkpoints", "provenance.json") if kind == "pretrain" else \
            ("metrics.json", "provenance.json", "run")
        if not any((out / m).exists() for m in marks):
            raise ConfigError(f"--overwrite: {str(out)!r} holds no {'pretraining' if kind == 'pretrain' else 'fine-tune'} "
                              f"run (none of {', '.join(marks)}); it is left alone: remove it yourself or choose "
                              f"another folder")
        shutil.rmtree(out)
    return out


def provenance(argv: Sequence[str] | None) -> dict:
    """The command line, the versions of every runtime dependency and the suite's git commit (when available)."""
    import subprocess

    from foundation import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, text=True,
                                capture_output=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": ["foundation", *(sys.argv[1:] if argv is None else argv)], "foundation_version": __version__,
            "git_commit": commit, "versions": package_versions()}


def package_versions() -> dict[str, str | None]:
    """Installed version of every runtime dependency (None: not installed), without importing them."""
    from importlib import metadata

    dist = {"yaml": "PyYAML"}
    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in RUNTIME_PACKAGES:
        try:
            versions[name] = metadata.version(dist.get(name, name))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _predict(args: argparse.Namespace) -> int:
    import foundation
    from foundation.config import load_recipe
    import dataclasses

    from foundation.data.protocol import check_preprocessing, prepare_dataset, preprocessing_of
    from foundation.finetune.bases import importer_of
    from foundation.finetune.runner import write_predictions
    from foundation.loading import predict_dataset, task_model_of
    from foundation.registry import DATASETS

    recipe = load_recipe(args.data, args.overrides)  # checked before the model loads
    model = foundation.load(args.model, revision=args.revision)
    task_model = task_model_of(model)
    if task_model is None:
        from foundation.errors import CheckpointError

        raise CheckpointError(f"--model {args.model!r} is a pretrained encoder without a task head; fine-tune it "
                              f"first (foundation finetune --from {args.model} ...)")
    importer = importer_of(task_model.encoder)  # a published checkpoint: its input contract shapes the data
    if importer is not None:
        recipe = dataclasses.replace(recipe, data=importer.adapt_data(recipe.data, task_model.encoder))
    data_cls = DATASETS.get(recipe.data.name, where="recipe key data.name")
    prepare_dataset(data_cls, recipe.data.config)
    dataset = data_cls(recipe.data.config)
    if importer is not None:
        dataset = importer.adapt_dataset(dataset, task_model.encoder)
    check_preprocessing(task_model.config.preprocessing, preprocessing_of(dataset), args.model,
                        f"--data {args.data}")
    import contextlib

    from foundation.explain.activity import skip_layers

    if args.skip_idle_below is not None:
        skip = _idle_layers(model, dataset, args.skip_idle_below, args.activity_threshold, args.batch_size)
        print(f"skipping {len(skip)} idle layer(s): {', '.join(skip) or 'none'}")
        ctx = skip_layers(model, skip)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        out, rows, cfg = predict_dataset(model, dataset, args.batch_size)
    names = list(cfg.class_names) or None
    path = write_predictions(args.out, out, cfg.task, names, rows)
    print(f"wrote {len(rows)} predictions of {args.model} to {path}")
    return 0


def _idle_layers(model, dataset, below: float, threshold: float, batch_size: int) -> list[str]:
    """Residual layers active (relative change > ``threshold``) on fewer than ``below`` of the first 64 items."""
    from torch.utils.data import DataLoader, Subset

    from foundation.explain.activity import layer_activity
    from foundation.finetune.features import split_batch

    loader = DataLoader(Subset(dataset, range(min(64, len(dataset)))), batch_size=batch_size,
                        collate_fn=getattr(dataset, "collate", None))
    batches = [split_batch(b)[0] if isinstance(b, dict) and "label" in b else b for b in loader]
    return [r["layer"] for r in layer_activity(model, batches, threshold) if r["active_share"] < below]


def _explain(args: argparse.Namespace) -> int:
    import json

    import foundation
    from foundation.config import load_recipe
    from foundation.explain import ExplainOptions, explain

    opts = ExplainOptions(methods=tuple(args.methods), n_items=args.n_items, items=tuple(args.items),
                          ig_steps=args.ig_steps, threshold=args.threshold, task=args.task,
                          lrp_attention=args.lrp_attention)
    load_recipe(args.data, args.overrides)  # checked before the model loads
    model = foundation.load(args.model, revision=args.revision)
    summary = explain(model, args.data, args.overrides, out=args.out, options=opts)
    keys = ("planted_share", "blob_auroc", "pointing_game", "seconds_per_item")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
    print(f"explanations of {args.model} on {args.data} in {args.out} (summary.json)")
    return 0


def _field_values(items: Sequence[str], flag: str, example: str) -> dict:
    """``FIELD=VALUE`` strings of a repeatable option as a dict, each value read as YAML.

    Raises:
        ConfigError: an item without ``=`` or without a field name (names ``flag`` and shows ``example``).
    """
    import yaml

    from foundation.errors import ConfigError

    fields: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"{flag} {item!r}: expected FIELD=VALUE, e.g. {flag} {example}")
        fields[name.strip()] = yaml.safe_load(value)
    return fields


def _adapter_fields(args: argparse.Namespace) -> dict:
    """``--adapter-set FIELD=VALUE`` plus the ``--skip-targets`` / ``--lora-r`` shorthands."""
    fields = _field_values(args.adapter_set, "--adapter-set", "r=4")
    if args.skip_targets is not None:
        fields["skip_modules"] = tuple(args.skip_targets)
    if args.lora_r is not None:
        fields["r"] = args.lora_r
    return fields


def _arch_fields(args: argparse.Namespace) -> dict:
    """``--arch-set FIELD=VALUE`` plus ``--missing-channels``."""
    fields = _field_values(args.arch_set, "--arch-set", "missing_channels=mask")
    if args.missing_channels is not None:
        fields["missing_channels"] = args.missing_channels
    return fields


def _finetune(recipe, args: argparse.Namespace, out: Path) -> int:
    import json

    from foundation.finetune.runner import FinetuneOptions, run_finetune

    opts = FinetuneOptions(method=args.method, test_fraction=args.test_fraction, targets=tuple(args.targets),
                           adapter=_adapter_fields(args), lr_decay=args.lr_decay, head_init=args.head_init,
                           arch=args.arch, exclude_keys=tuple(args.exclude_keys), arch_set=_arch_fields(args))
    result = run_finetune(recipe, args.base, out, opts, revision=args.revision, provenance=provenance(args.argv))
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"\n{args.method} fine-tune of {args.base}: {result['load_report']}")
        print(json.dumps(result["metrics"], indent=2))
        print(f"  results : {out / 'metrics.json'}")
        for name, path in result["outputs"].items():
            print(f"  {name:8s}: {path}")
    if dist.is_initialized():
        _teardown(dist)
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    import os

    from foundation.benchmark import print_summary, run_benchmark
    from foundation.config import load_recipe
    from foundation.errors import ConfigError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("foundation benchmark runs its cells one after another in one process; launch it "
                          "without deepspeed/torchrun")
    recipe = load_recipe(args.recipe, args.overrides)
    adapter = _field_values(args.adapter_set, "--adapter-set", "r=4")
    result = run_benchmark(recipe, args.models, args.methods, args.folds, args.output_dir, seed=args.seed,
                           options={"adapter": adapter} if adapter else {})
    print_summary(result)
    for name, path in result.files.items():
        print(f"  {name:13s}: {path}")
    return 0  # the one-process group stays up: a caller in this process (a test, a script) may run more cells


def _teardown(dist) -> None:
    """Leave the process groups together: every rank waits for the others, then destroys its groups.

    A rank that tears down while another still talks to it (rank 0 printing, exporting) can abort in gloo's
    destructor ("terminate called without an active exception") and the launcher reports the run as failed.
    The groups are destroyed through DeepSpeed's ``deepspeed.comm``, which also drops the groups DeepSpeed cached
    (its world and data-parallel groups): destroyed with torch alone, a later DeepSpeed run in the same process
    would reach for a dead group ("Group ... is not registered").
    """
    import deepspeed.comm

    if dist.get_world_size() > 1:
        dist.barrier()
    deepspeed.comm.destroy_process_group()


def _info() -> int:
    import torch

    from foundation import __version__
    from foundation.config import list_recipes
    from foundation.registry import ACTIVATIONS, DATASETS, MLPS, MODELS, OBJECTIVES

    print(f"foundation-suite {__version__}")
    for name, version in package_versions().items():
        print(f"  {name:16s}{version or 'not installed'}")
    try:
        import deepspeed

        print(f"accelerator: {deepspeed.get_accelerator().device_name()}")
    except ImportError:
        print("accelerator: unknown (deepspeed not installed: pip install deepspeed)")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(f"recipes: {', '.join(list_recipes()) or '(none)'}")
    for reg in (MODELS, DATASETS, OBJECTIVES, MLPS, ACTIVATIONS):
        print(f"{reg.kind}s: {', '.join(reg.names()) or '(none)'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``foundation`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else list(argv)
    try:
        if args.command in ("pretrain", "finetune"):
            return _run(args)
        if args.command == "export":
            from foundation.pretrain.export import export_from_run_dir

            print(export_from_run_dir(args.run_dir, args.out, args.tag))
            return 0
        if args.command == "push":
            from foundation.hub import push_folder

            oid = push_folder(args.folder, args.repo_id, private=args.private, commit_message=args.message,
                              revision=args.revision)
            print(f"pushed {args.folder} to {args.repo_id} (commit {oid})")
            return 0
        if args.command == "predict":
            return _predict(args)
        if args.command == "benchmark":
            return _benchmark(args)
        if args.command == "explain":
            return _explain(args)
        return _info()
    except FoundationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def script_main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of a process started as a program (``pretrain.py``, ``finetune.py``, the ``foundation`` script).

    Runs :func:`main` and exits with its status. A process that is one rank of several (``WORLD_SIZE`` > 1, set
    by ``deepspeed``/``torchrun``) then leaves with ``os._exit`` once its output is flushed, skipping the
    interpreter's finalization. Why: DeepSpeed's engine keeps references to its process groups in reference
    cycles through autograd and module hooks (held by C++ objects the garbage collector cannot see), so the gloo
    groups outlive ``destroy_process_group`` and are destroyed during finalization, where their destructors can
    abort a process whose run succeeded ("terminate called without an active exception", exit -6: pytorch
    PR 179291 describes the mechanism); the launcher then kills the other ranks and reports the job as failed.
    By this point every rank has passed the teardown barrier and the run's files are written (atomically) and
    closed. ``main`` itself never exits the process: tests and scripts call it in-process.

    A program also keeps the memory it frees for reuse (:func:`foundation.kernels.host_memory.keep_freed_memory`:
    each training step reuses the last one's activations instead of faulting their pages in again). This is a
    setting of the whole process, so it is made here and not in ``main``, which tests call in-process.
    """
    import logging
    import os

    from foundation.kernels.host_memory import keep_freed_memory

    keep_freed_memory()
    status = main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    script_main()
