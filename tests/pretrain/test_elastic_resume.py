"""Resume on another number of ranks (1 -> 2 and 2 -> 1) at ZeRO 0, 1 and 2, with the global batch kept equal.

One chain per stage: steps 1-2 on one rank (accumulation 2), steps 3-4 on two ranks (accumulation 1), steps 5-6
on one rank again, each leg resuming the previous one's checkpoint. The toy objective's fixed mask makes the loss
a function of the weights and the samples alone, so the chain must reproduce the per-step losses of an
uninterrupted one-rank run (within 1e-5 relative; the largest difference is printed for RESULTS.md). The one-rank
legs run in this process, so the states right after the 2 -> 1 load are read from the live engine and compared
with the checkpoint's, whose fp32 weights are compared with DeepSpeed's own ``zero_to_fp32``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from foundation.config import load_recipe
from foundation.errors import CheckpointError
from foundation.pretrain import reshard
from foundation.pretrain.checkpoint import CheckpointDir
from foundation.pretrain.engine import Engine
from tests.pretrain._launch import TOY_RECIPE, check, losses, run_pretrain

pytestmark = pytest.mark.slow

STEPS = 6
COMMON = ("objective.fixed_mask=true", f"train.steps={STEPS}", "train.checkpoint_every=2", "train.warmup_steps=1",
          "train.progress_bar=false", "train.keep_last=5")


def _recipe(stage: int, accum: int):
    return load_recipe(str(TOY_RECIPE), [*COMMON, f"deepspeed.zero_stage={stage}",
                                         f"deepspeed.gradient_accumulation_steps={accum}"])


def _one_rank(out: Path, stage: int, *, resume: bool, stop_after: int | None = None,
              capture: dict | None = None, layout: reshard.SavedLayout | None = None) -> None:
    """A one-rank leg in this process; with ``capture``, the live states right after the load are kept in it
    (``capture["live"]``), and for a ZeRO-0 ``layout`` the saved ones, named by this engine's optimizer order."""
    engine = Engine(_recipe(stage, accum=2), out, resume=resume, stop_after=stop_after)
    if capture is not None:
        loop = engine._loop

        def read_then_loop(ds_engine, *args):
            capture["live"] = dict(reshard.live_states(ds_engine))
            if layout is not None and layout.zero_stage == 0:
                capture["saved"] = dict(reshard.saved_whole_states(layout, ds_engine))
            return loop(ds_engine, *args)

        engine._loop = read_then_loop
    engine.run()


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_resume_on_other_world_sizes_matches_the_uninterrupted_run(tmp_path, stage):
    straight = tmp_path / "straight"
    _one_rank(straight, stage, resume=False)
    want = losses(straight)

    chain = tmp_path / "chain"
    _one_rank(chain, stage, resume=False, stop_after=2)  # steps 1-2 on one rank
    check(run_pretrain(chain, *COMMON, f"deepspeed.zero_stage={stage}", "deepspeed.gradient_accumulation_steps=1",
                       ranks=2, extra=("--no-export", "--resume", "--stop-after", "2")))  # 1 -> 2: steps 3-4
    grown = json.loads((chain / "elastic_resume.json").read_text())
    assert (grown["saved_world_size"], grown["world_size"], grown["global_batch"]) == (1, 2, 16)
    assert grown["largest_difference"] == 0.0 and grown["tensors_compared"] > 0

    tag = CheckpointDir(chain / "checkpoints").latest()
    layout = reshard.read_layout(chain / "checkpoints" / tag)
    assert (layout.world_size, layout.zero_stage) == (2, stage)
    captured: dict = {}
    _one_rank(chain, stage, resume=True, capture=captured, layout=layout)  # 2 -> 1: steps 5-6
    after_load = captured["live"]
    shrunk = json.loads((chain / "elastic_resume.json").read_text())
    assert (shrunk["saved_world_size"], shrunk["world_size"]) == (2, 1)

    # the states right after the 2 -> 1 load equal the saved ones: weights always, Adam's moments where the
    # checkpoint holds them per parameter
    if stage > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        saved = dict(reshard.saved_states(layout))
        reference = get_fp32_state_dict_from_zero_checkpoint(str(chain / "checkpoints"), tag=tag)
        for name, states in saved.items():
            assert torch.equal(states["fp32"], reference[name].float()), name
    else:
        saved = captured["saved"]
    assert set(saved) == set(after_load)
    for name, states in saved.items():
        assert set(states) == {"fp32", "exp_avg", "exp_avg_sq"}, name
        for key, tensor in states.items():
            assert torch.equal(after_load[name][key], tensor), f"{name}.{key}"

    got = losses(chain)
    assert sorted(got) == list(range(1, STEPS + 1))
    worst = max(abs(got[s] - want[s]) / abs(want[s]) for s in want)
    print(f"\nZeRO-{stage}: largest relative loss difference over steps 1-{STEPS} (1 -> 2 at step 2, "
          f"2 -> 1 at step 4): {worst:.2e}")
    assert worst <= 1e-5, (got, want)


def test_zero3_on_another_world_size_is_refused(tmp_path):
    layout = reshard.SavedLayout(tmp_path / "checkpoints" / "step_00000004", world_size=2, zero_stage=3)
    with pytest.raises(CheckpointError, match="ZeRO-3 checkpoint written by 2 ranks cannot be resumed on 1"):
        reshard.needs_resharding(layout, 1)
    assert not reshard.needs_resharding(layout, 2)
