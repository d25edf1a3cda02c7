"""Fuzz every format the suite reads (issue 15): a correct read or a named ``foundation.errors`` class, never else.

One child process (:mod:`tests.fuzz._engine`) runs every case with a per-case timeout and a cap on its address
space, so a hang or a terabyte allocation is counted instead of taking the test run down. Fixed seed; the
count per format is ``--fuzz-count`` (default :data:`DEFAULT_COUNT`, small enough for CI).

Failures in files owned elsewhere that are already reported are listed in :data:`KNOWN` (matched on the
exception, never on a whole format), so any new finding still fails the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEFAULT_COUNT = 8
SEED = 15
ROOT = Path(__file__).resolve().parents[2]
FORMATS = ["EDF", "BDF", "FIF", "NIfTI .nii", "NIfTI .nii.gz", "PNG", "JPEG", "DICOM", "challenge CSV", "recipe YAML",
           "config.json", "model.safetensors", "adapter weights", "adapter config"]
DATA_FORMATS = {"EDF", "BDF", "FIF", "NIfTI .nii", "NIfTI .nii.gz"}

# (format, text in the traceback) of findings in files this suite's data layer does not own; reported upstream
KNOWN = [
]


def _known(fmt: str, failure: dict) -> bool:
    return any(fmt == f and text in failure["detail"] for f, text in KNOWN)


@pytest.fixture(scope="module")
def results(request, tmp_path_factory):
    count = request.config.getoption("--fuzz-count") or DEFAULT_COUNT
    work = tmp_path_factory.mktemp("fuzz")
    out = work / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.fuzz._engine", str(count), str(SEED), str(work / "cases"),
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600 + 30 * count)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_case_reads_or_raises_a_named_error(results, fmt):
    r = results[fmt]
    assert r["cases"] == r["read"] + r["named"] + r["unnamed"] + r["other"] + r["memory"] + r["hang"] > 0
    new = [f for f in r["failures"] if not _known(fmt, f)]
    assert not new, json.dumps(new[:3], indent=1)
    assert r["hang"] == 0 and r["memory"] == 0
    if fmt in DATA_FORMATS:
        assert r["good_file_cached"] is True  # the good file beside the mutants is still cached
