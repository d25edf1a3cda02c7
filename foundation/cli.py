"""The ``foundation`` command: pretrain, finetune, export, push, info.

Examples::

    foundation pretrain --recipe deeperbrain-tiny --output-dir runs/eeg
    deepspeed --num_gpus 8 pretrain.py --recipe slim-brain --set train.lr=3e-4
    foundation pretrain --recipe runs/eeg/recipe.yaml --output-dir runs/eeg --resume
    foundation export runs/eeg --out exported/
    foundation push exported/ my-org/deeperbrain-tiny --private
    foundation info
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from foundation.errors import FoundationError

__all__ = ["main", "build_parser"]


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", required=True, help="shipped recipe name or path to a YAML recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable, e.g. --set train.lr=3e-4")
    p.add_argument("--output-dir", default=None, help="run folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from <output-dir>/checkpoints/latest")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="checkpoint and stop after N optimizer steps of this invocation (schedule unchanged)")
    p.add_argument("--no-export", action="store_true", help="skip the save_pretrained export at the end")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foundation", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run_args(sub.add_parser("pretrain", help="pretrain a recipe with the DeepSpeed engine"))
    ft = sub.add_parser("finetune", help="train a recipe starting from a pretrained model")
    _add_run_args(ft)
    ft.add_argument("--from", dest="base", required=True, help="Hub repo id or local save_pretrained folder")
    ft.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --from")
    ft.add_argument("--method", default="full",
                    help="linear-probe | mlp-probe | full | a registered adapter method (lora, dopamine, ...)")
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
    ex = sub.add_parser("export", help="consolidate a run's checkpoint into a save_pretrained folder")
    ex.add_argument("run_dir", help="run folder written by `foundation pretrain`")
    ex.add_argument("--out", default=None, help="target folder (default: <run_dir>/export)")
    ex.add_argument("--tag", default=None, help="checkpoint tag (default: latest)")
    push = sub.add_parser("push", help="upload a save_pretrained or adapter folder to the Hub")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--message", default=None, help="commit message")
    push.add_argument("--revision", default=None, help="branch to push to")
    sub.add_parser("info", help="versions, accelerator, recipes and registered components")
    return parser


def _run(args: argparse.Namespace) -> int:
    from foundation.config import load_recipe
    from foundation.pretrain.engine import Engine

    recipe = load_recipe(args.recipe, args.overrides)
    out = Path(args.output_dir or Path("runs") / recipe.name)
    if args.command == "finetune":
        return _finetune(recipe, args, out)
    import torch.distributed as dist

    from foundation.pretrain.export import export_run

    result = Engine(recipe, out, resume=args.resume, stop_after=args.stop_after).run()
    export_dir = None
    if not (result.stopped_early or args.no_export):
        dist.barrier()
        if dist.get_rank() == 0:
            export_dir = export_run(recipe, result)
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
    dist.destroy_process_group()
    return 0


def _adapter_fields(args: argparse.Namespace) -> dict:
    """``--adapter-set FIELD=VALUE`` (values parsed as YAML) plus the ``--skip-targets`` / ``--lora-r`` shorthands."""
    import yaml

    from foundation.errors import ConfigError

    fields: dict = {}
    for item in args.adapter_set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--adapter-set {item!r}: expected FIELD=VALUE, e.g. --adapter-set r=4")
        fields[name.strip()] = yaml.safe_load(value)
    if args.skip_targets is not None:
        fields["skip_modules"] = tuple(args.skip_targets)
    if args.lora_r is not None:
        fields["r"] = args.lora_r
    return fields


def _finetune(recipe, args: argparse.Namespace, out: Path) -> int:
    import json

    from foundation.finetune.runner import FinetuneOptions, run_finetune

    opts = FinetuneOptions(method=args.method, test_fraction=args.test_fraction, targets=tuple(args.targets),
                           adapter=_adapter_fields(args), lr_decay=args.lr_decay, head_init=args.head_init)
    result = run_finetune(recipe, args.base, out, opts, revision=args.revision)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"\n{args.method} fine-tune of {args.base}: {result['load_report']}")
        print(json.dumps(result["metrics"], indent=2))
        print(f"  results : {out / 'metrics.json'}")
        for name, path in result["outputs"].items():
            print(f"  {name:8s}: {path}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _info() -> int:
    import torch

    from foundation import __version__
    from foundation.config import list_recipes
    from foundation.registry import ACTIVATIONS, DATASETS, MLPS, MODELS, OBJECTIVES

    print(f"foundation-suite {__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    try:
        import deepspeed

        print(f"deepspeed {deepspeed.__version__}, accelerator {deepspeed.get_accelerator().device_name()}")
    except ImportError:
        print("deepspeed: not installed (pip install deepspeed)")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(f"recipes: {', '.join(list_recipes()) or '(none)'}")
    for reg in (MODELS, DATASETS, OBJECTIVES, MLPS, ACTIVATIONS):
        print(f"{reg.kind}s: {', '.join(reg.names()) or '(none)'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``foundation`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
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
        return _info()
    except FoundationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
