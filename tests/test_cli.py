"""The `foundation` command line: info, export, push (to the loopback Hub) and finetune --from a Hub id."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from foundation.cli import main
from tests._support.hub_fixtures import dead_endpoint, hub_endpoint  # noqa: F401
from tests.fixtures.toy_mae import ToyMAE
from tests.pretrain._launch import ROOT, TOY_RECIPE, check, env, run_pretrain


def test_info_lists_every_registered_component_and_recipe(capsys):
    import deepspeed

    from foundation.config import list_recipes
    from foundation.registry import ACTIVATIONS, DATASETS, MLPS, MODELS, OBJECTIVES

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    for reg in (MODELS, DATASETS, OBJECTIVES, MLPS, ACTIVATIONS):
        assert lines[f"{reg.kind}s"].split(", ") == reg.names()  # built-ins listed without importing them first
    assert {"deeperbrain", "slim-brain", "ultrasound-mtl"} <= set(lines["models"].split(", "))
    assert lines["recipes"].split(", ") == list_recipes()
    assert "accelerator: cpu" in out.splitlines()
    for name in ("torch", "deepspeed", "peft", "huggingface_hub", "timm", "mne", "nibabel", "safetensors"):
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    assert f"deepspeed       {deepspeed.__version__}".split() in [line.split() for line in out.splitlines()]


def test_version_and_help_with_defaults(capsys):
    from foundation import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"foundation-suite {__version__}"
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: full)" in text and "{probe,random}" in text and "lora | dopamine" in text


def _finetune_args(tmp_path, *extra):
    classify = ROOT / "tests" / "fixtures" / "recipes" / "toy-classify.yaml"
    return ["finetune", "--recipe", str(classify), *extra]


def test_a_non_empty_output_dir_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert main(_finetune_args(tmp_path, "--from", str(tmp_path / "missing"), "--output-dir", str(out))) == 2
    assert "is not empty" in capsys.readouterr().err and (out / "metrics.json").is_file()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main(_finetune_args(tmp_path, "--from", "x", "--output-dir", str(other), "--overwrite")) == 2
    assert "holds no fine-tune run" in capsys.readouterr().err and (other / "mine.txt").is_file()


@pytest.mark.parametrize("kind", ["lora", "pretrain"])
def test_default_output_dirs_are_unique(tmp_path, monkeypatch, kind):
    import argparse

    from foundation.cli import run_output_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = argparse.Namespace(output_dir=None, overwrite=False, resume=False)
    first = run_output_dir(args, "task", kind)
    first.mkdir(parents=True)
    second = run_output_dir(args, "task", kind)
    assert first != second and first.parent == second.parent == Path("runs") / "task"
    assert first.name.startswith(f"{kind}-") and second.name.startswith(f"{kind}-")


def test_pretraining_never_overwrites_a_run(tmp_path, capsys, monkeypatch):
    """A non-empty --output-dir is refused before any work unless --resume or --overwrite; --overwrite deletes
    only a pretraining run; --resume needs a run to continue and a folder to name."""
    import foundation.pretrain.engine as engine

    monkeypatch.setattr(engine, "Engine", None)  # any training would fail loudly
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: x\n")
    pre = ["pretrain", "--recipe", str(TOY_RECIPE)]
    assert main([*pre, "--output-dir", str(run)]) == 2
    assert "is not empty" in capsys.readouterr().err and (run / "recipe.yaml").is_file()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep")
    assert main([*pre, "--output-dir", str(notes), "--overwrite"]) == 2
    assert "holds no pretraining run" in capsys.readouterr().err and (notes / "mine.txt").is_file()
    assert main([*pre, "--output-dir", str(tmp_path / "empty"), "--resume"]) == 2
    assert "holds no run to continue" in capsys.readouterr().err
    assert main([*pre, "--resume"]) == 2
    assert "name the run folder" in capsys.readouterr().err
    assert main([*pre, "--output-dir", str(run), "--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err and (run / "recipe.yaml").is_file()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(pre) == 2
    assert "required under a multi-process launch" in capsys.readouterr().err


def test_a_mistyped_from_folder_is_named_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    import foundation.finetune.runner as runner

    monkeypatch.setattr(runner, "DATASETS", None)  # any data look-up would fail loudly
    assert main(_finetune_args(tmp_path, "--from", "./no-such-export", "--output-dir", str(tmp_path / "o"))) == 2
    err = capsys.readouterr().err
    assert "no-such-export" in err and "no such folder" in err and "Hub" in err


def test_a_checkpoint_of_another_model_names_the_recipes_to_use(tmp_path, capsys):
    folder = tmp_path / "m"
    ToyMAE(ToyMAE.config_class()).save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "model_name": "deeperbrain"}))
    assert main(_finetune_args(tmp_path, "--from", str(folder), "--output-dir", str(tmp_path / "o"))) == 2
    err = capsys.readouterr().err
    assert "'deeperbrain' checkpoint" in err and "use a deeperbrain-* recipe" in err


def test_bad_recipe_is_a_clean_error(capsys):
    assert main(["pretrain", "--recipe", str(TOY_RECIPE), "--set", "train.lrr=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


@pytest.mark.slow
def test_export_push_and_finetune_from_hub(tmp_path, hub_endpoint):  # noqa: F811
    run = tmp_path / "run"
    check(run_pretrain(run, "train.steps=3", "train.warmup_steps=1", "train.checkpoint_every=0",
                       extra=("--no-export",)))
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md"}

    sub_env = {**env(), **hub_endpoint.env}
    push = subprocess.run([sys.executable, "-m", "foundation.cli", "push", str(out), "me/toy"], cwd=ROOT,
                          env=sub_env, capture_output=True, text=True, timeout=120)
    assert push.returncode == 0, push.stderr
    assert "pushed" in push.stdout and hub_endpoint.env.get("HF_TOKEN", "~none~") not in push.stdout + push.stderr

    local = ToyMAE.from_pretrained(out)
    remote = ToyMAE.from_pretrained("me/toy", cache_dir=hub_endpoint.fresh_cache())
    x, keep = torch.randn(2, 16, 8), torch.arange(0, 16, 2).expand(2, -1)
    torch.testing.assert_close(remote(x, keep), local(x, keep), rtol=0, atol=0)

    ft = tmp_path / "ft"
    classify = ROOT / "tests" / "fixtures" / "recipes" / "toy-classify.yaml"
    proc = subprocess.run([sys.executable, str(ROOT / "finetune.py"), "--from", "me/toy", "--recipe", str(classify),
                           "--method", "full", "--output-dir", str(ft), "--set", "train.steps=2",
                           "--set", "train.warmup_steps=1"],
                          cwd=ROOT, env=sub_env, capture_output=True, text=True, timeout=300)
    check(proc)
    assert "base_model: me/toy" in (ft / "model" / "README.md").read_text()
    assert "balanced_accuracy" in proc.stdout and (ft / "metrics.json").is_file()


def test_push_to_a_dead_hub_names_the_endpoint(tmp_path, dead_endpoint):  # noqa: F811
    folder = tmp_path / "m"
    ToyMAE(ToyMAE.config_class()).save_pretrained(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    sub_env = {**os.environ, **dead_endpoint.env}
    proc = subprocess.run([sys.executable, "-m", "foundation.cli", "push", str(folder), "me/toy"], cwd=ROOT,
                          env=sub_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and dead_endpoint.url in proc.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_info_names_every_dependency_of_pyproject():
    import re
    import tomllib

    from foundation.cli import RUNTIME_PACKAGES, package_versions

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}
    listed = {("pyyaml" if n == "yaml" else n).lower().replace("_", "-") for n in RUNTIME_PACKAGES}
    assert names <= listed, f"foundation info misses {sorted(names - listed)}"
    versions = package_versions()
    assert versions["torch"] and versions["python"] and set(RUNTIME_PACKAGES) <= set(versions)


@pytest.mark.slow
def test_a_deepspeed_run_after_the_cli_tore_down_its_groups_in_the_same_process():
    """The CLI's teardown goes through deepspeed.comm: DeepSpeed's cached groups go with the process group, so a
    second engine in the same process (a script, a notebook, the benchmark) gets live ones."""
    import deepspeed
    import torch.distributed as dist

    from foundation.cli import _teardown
    from foundation.pretrain.distributed import init_distributed

    config = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "zero_optimization": {"stage": 2}}

    def one_step() -> None:
        init_distributed(timeout_s=60)
        model = torch.nn.Linear(4, 1)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        loss = engine(torch.randn(2, 4)).pow(2).mean()
        engine.backward(loss)
        engine.step()

    one_step()
    _teardown(dist)
    assert not dist.is_initialized()
    one_step()  # before the fix: ValueError: Group ... is not registered
    _teardown(dist)


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_rank_of_several_leaves_without_interpreter_finalization(tmp_path, world_size):
    """``script_main`` (pretrain.py, finetune.py, the console script) ends one rank of several with ``os._exit``
    once its output is flushed, so process groups DeepSpeed still holds are never destroyed during interpreter
    finalization (where gloo can abort a run that succeeded); a lone process exits normally."""
    marker = tmp_path / "finalized"
    code = ("import atexit, pathlib, sys\n"
            f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'atexit ran')\n"
            "from foundation.cli import script_main\n"
            "script_main(['info'])\n")
    e = env()
    e["WORLD_SIZE"] = world_size
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "foundation-suite" in proc.stdout and "recipes" in proc.stdout.lower()  # everything printed arrived
    assert marker.exists() == (world_size == "1")


def test_a_failing_rank_of_several_still_reports_its_status(tmp_path):
    """The status of ``main`` survives the early exit: a clean error is exit 2 on a rank of several too."""
    e = env()
    e["WORLD_SIZE"] = "2"
    code = ("from foundation.cli import script_main\n"
            f"script_main(['pretrain', '--recipe', {str(tmp_path / 'missing.yaml')!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr
