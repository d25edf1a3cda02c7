"""Shared fine-tuning fixtures: a tiny saved ToyMAE as the pretrained base."""
from __future__ import annotations

import pytest
import torch

from tests.fixtures.toy_mae import ToyMAE, ToyMAEConfig


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A fresh ToyMAE (seed 0) exported with save_pretrained: the ``--from`` folder of the toy tests."""
    folder = tmp_path_factory.mktemp("base") / "export"
    torch.manual_seed(0)
    ToyMAE(ToyMAEConfig()).save_pretrained(folder)
    return folder
