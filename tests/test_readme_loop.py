"""Every command of the README's loop section, run as written (plus tiny-size ``--set`` overrides) against a
loopback Hub in a fresh folder; the last one's predictions must equal the fine-tune's own held-out predictions."""
from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests._support.hub_fixtures import hub_endpoint  # noqa: F401

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DATA = ["data.demo.n_subjects=4", "data.demo.blocks_per_class=1"]
TINY = {  # appended to each subcommand; sizes only, never what the command does
    "pretrain": [*DATA, "train.steps=2", "train.warmup_steps=1", "train.progress_bar=false"],
    "finetune": [*DATA, "train.steps=3", "train.warmup_steps=1", "train.micro_batch_size=4",
                 "train.progress_bar=false"],
    "predict": DATA,
}


def readme_loop() -> list[list[str]]:
    """The commands between the README's ``readme-loop`` markers, split as a shell would."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-loop: begin -->\s*```bash\n(.*?)```\s*<!-- readme-loop: end -->", text, re.DOTALL)
    assert block, "README.md lost its readme-loop section"
    return [shlex.split(line) for line in block[1].splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_loop_section_lists_the_whole_loop():
    commands = [c[1] for c in readme_loop()]
    assert commands == ["pretrain", "push", "finetune", "push", "predict"]


def test_every_readme_loop_command_runs(tmp_path, hub_endpoint):  # noqa: F811
    env = {**os.environ, **hub_endpoint.env, "PYTHONPATH": str(ROOT)}
    for argv in readme_loop():
        assert argv[0] == "foundation"
        extra = [a for kv in TINY.get(argv[1], []) for a in ("--set", kv)]
        proc = subprocess.run([sys.executable, "-m", "foundation.cli", *argv[1:], *extra], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (argv, proc.stderr[-3000:])
    with open(tmp_path / "runs" / "eeg-lora" / "predictions.csv", newline="") as fh:
        held_out = {r["index"]: r for r in csv.DictReader(fh)}
    with open(tmp_path / "preds.csv", newline="") as fh:
        everything = {r["index"]: r for r in csv.DictReader(fh)}
    assert held_out and all(everything[i]["prediction"] == r["prediction"] for i, r in held_out.items())
    assert all(abs(float(everything[i][k]) - float(v)) < 1e-5
               for i, r in held_out.items() for k, v in r.items() if k.startswith("prob_"))
