"""braindecode imports next to the pinned torch (the Makefile installs it without dependency resolution)."""
from __future__ import annotations

import importlib.metadata

import torch


def test_braindecode_models_import_and_run_beside_the_pinned_torch():
    import braindecode.models as bd

    assert importlib.metadata.version("braindecode") == "1.8.1"
    assert torch.__version__.split("+")[0] == "2.14.1"  # the install kept the pinned torch
    model = bd.CBraMod(n_chans=3, n_times=400, n_outputs=2, sfreq=200, n_layer=1, nhead=8, dim_feedforward=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 400))
    assert out.shape == (2, 2) and torch.isfinite(out).all()
