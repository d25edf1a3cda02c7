"""``train.compile``: a compiled run trains like an eager one, resumes and exports; graph breaks of the shipped
tiny models' training steps (model + objective as DeepSpeed wraps them, after the objective's ``prepare``)."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from foundation.config import load_recipe
from foundation.errors import ConfigError
from foundation.pretrain.components import TrainModule, build_model, build_objective
from tests.fixtures.toy_mae import ToyMAE
from tests.pretrain._launch import TOY_RECIPE, check, losses, run_pretrain

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


def _batch(recipe: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if recipe == "deeperbrain-tiny":
        chan_mask = torch.ones(4, 32, dtype=torch.bool)
        chan_mask[1, 20:] = False  # montages of different sizes in one batch
        return {"x": torch.randn(4, 32, 800, generator=g), "pos": torch.randn(4, 32, 3, generator=g) * 0.05,
                "chan_mask": chan_mask, "stats": torch.randn(4, 32, 8, generator=g)}
    fg = torch.ones(4, 108, dtype=torch.bool)
    fg[0, :30] = False  # background-only units
    return {"x": torch.randn(4, 1, 8, 24, 24, 24, generator=g), "unit_fg": fg}


# graph breaks of today's training step (explain over TrainModule.step after prepare); the target is 2
CEILING = {"deeperbrain-tiny": 9, "slim-brain-tiny": 26}


def _breaks(recipe_name: str) -> tuple[int, list[str]]:
    recipe = load_recipe(recipe_name)
    torch.manual_seed(0)
    module = TrainModule(build_model(recipe), build_objective(recipe)).train()
    batch = module.objective.prepare(module.model, _batch(recipe_name))
    dynamo.reset()
    result = dynamo.explain(module.step)(batch)
    return result.graph_break_count, [str(b.reason).splitlines()[0] for b in result.break_reasons]


@pytest.mark.slow
@pytest.mark.parametrize("recipe_name", sorted(CEILING))
def test_training_step_traces_within_todays_graph_breaks(recipe_name: str) -> None:
    """No compile error, and no more breaks than today (the ultrasound step is left out: its explain takes about
    10 minutes on a CPU, through timm's backbone)."""
    count, reasons = _breaks(recipe_name)
    assert count <= CEILING[recipe_name], f"{recipe_name}: {count} graph breaks: {reasons}"
    if count > 2:  # shown as xfailed until the target is met: packing and unit routing read data-dependent sizes
        pytest.xfail(f"issue 16's target is <= 2 graph breaks; {recipe_name} has {count}: {sorted(set(reasons))}")
