import random

import numpy as np
import pytest
import torch

from foundation.errors import CheckpointError
from foundation.pretrain.checkpoint import CheckpointDir, capture_rng, restore_rng


def _fake_states(root, tag):
    (root / tag).mkdir()
    (root / tag / "states.bin").write_bytes(b"ok")


def test_rng_round_trip():
    state = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_rotation_keeps_last_k_and_latest(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep_last=2)
    for step in (1, 2, 3, 4):
        ckpts.save(_fake_states, step, rank=0, barrier=lambda: None)
    assert ckpts.complete_tags() == ["step_00000003", "step_00000004"]
    assert ckpts.latest() == "step_00000004"
    ckpts.load_rng("step_00000004", rank=0)
    with pytest.raises(CheckpointError, match="rng_rank1.json is missing"):
        ckpts.load_rng("step_00000004", rank=1)


def test_latest_pointing_at_a_torso_is_refused(tmp_path):
    ckpts = CheckpointDir(tmp_path)
    ckpts.save(_fake_states, 1, rank=0, barrier=lambda: None)
    (tmp_path / "step_00000002").mkdir()
    (tmp_path / "latest").write_text("step_00000002")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpts.latest()
