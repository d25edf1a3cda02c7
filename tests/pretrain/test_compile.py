"""``train.compile``: a compiled run trains like an eager one, resumes and exports; graph breaks of the shipped
tiny models' training steps (model + objective as DeepSpeed wraps them, after the objective's ``prepare``)."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from foundation.config import load_recipe
from foundation.errors import ConfigError
from tests.fixtures.toy_mae import ToyMAE
from tests.pretrain._launch import TOY_RECIPE, check, losses, run_pretrain
from tests.pretrain._real_batches import RECIPES, real_batch, train_module

STEPS = ("train.steps=4", "train.warmup_steps=1", "train.checkpoint_every=2")


def test_compile_mode_is_checked() -> None:
    with pytest.raises(ConfigError, match="train.compile_mode: unknown value 'fast'; valid: default, reduce-overhead"):
        load_recipe(str(TOY_RECIPE), ["train.compile_mode=fast"])


@pytest.mark.slow
def test_compiled_run_matches_eager_then_resumes_and_exports(tmp_path) -> None:
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    check(run_pretrain(eager, *STEPS, extra=("--no-export",)))
    check(run_pretrain(compiled, *STEPS, "train.compile=true", extra=("--no-export",)))
    got, want = losses(compiled), losses(eager)
    assert sorted(got) == [1, 2, 3, 4]
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-6)
    # resume a compiled run from its step-2 checkpoint to step 6 and export: the same files as without compile
    check(run_pretrain(compiled, "train.steps=6", "train.warmup_steps=1", "train.checkpoint_every=2",
                       "train.compile=true", extra=("--resume",)))
    assert sorted(losses(compiled)) == list(range(1, 7))
    model = ToyMAE.from_pretrained(compiled / "export")
    assert not any("_orig_mod" in k for k in model.state_dict())


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> dict[str, dict]:
    return {name: real_batch(name, tmp_path_factory.mktemp(name)) for name in RECIPES}


@pytest.mark.slow
@pytest.mark.parametrize("recipe_name", RECIPES)
def test_training_step_has_at_most_two_graph_breaks(recipe_name: str, batches) -> None:
    """``torch._dynamo.explain`` over ``TrainModule.step`` after the objective's ``prepare`` (what
    ``train.compile`` compiles), on a real batch: no more than 2 graph breaks (the masks, packing plans and task
    routes are made in ``prepare``; the layers read nothing back from the device)."""
    module = train_module(recipe_name)
    torch.manual_seed(1)
    batch = module.objective.prepare(module.model, dict(batches[recipe_name]))
    dynamo.reset()
    result = dynamo.explain(module.step)(batch)
    reasons = sorted({str(b.reason).splitlines()[0] for b in result.break_reasons})
    assert result.graph_break_count <= 2, f"{recipe_name}: {result.graph_break_count} graph breaks: {reasons}"
    # the traced step computes what the eager step computes
    torch.manual_seed(2)
    want, _ = module.step(batch)
    torch.manual_seed(2)
    got, _ = torch.compile(module.step, backend="eager")(batch)
    torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_one_rank_stage_zero_engine_skips_the_identity_allreduce_and_trains_the_same() -> None:
    """ZeRO stage 0 on one rank: DeepSpeed's gradient all-reduce (an identity there) is off, and three DeepSpeed
    steps of DeeperBrain leave the same weights as with it on (own process: DeepSpeed initialises
    torch.distributed)."""
    import json
    import subprocess
    import sys

    from tests.pretrain._launch import ROOT, env

    proc = subprocess.run([sys.executable, "-m", "tests.pretrain._identity_allreduce"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["dropped"] == [False, True] and got["allreduce_calls"][0] >= 3 and got["allreduce_calls"][1] == 0
    assert got["moved"] > 1e-4  # the steps did train
    assert got["diff"] <= 1e-6 * max(1.0, got["moved"]), got
