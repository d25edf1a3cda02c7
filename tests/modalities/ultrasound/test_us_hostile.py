"""Issue 15 for ultrasound: bad images and masks are named with the CSV file and row that referenced them."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from foundation.errors import DataError
from foundation.modalities.ultrasound.dataset import UltrasoundDataset
from foundation.modalities.ultrasound.images import read_image
from tests.modalities.ultrasound._helpers import data_config, make_corpus


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "us", images_per_task=4)


def _reasons(report):
    return {e["source"]: e["reason"] for e in report["sources"] if e["status"] == "left_out"}


def test_bad_images_and_masks_name_the_csv_row(corpus, tmp_path):
    root = corpus.parent
    img = root / "images" / "breast_2cls_0001.png"
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])  # cut off mid-file
    mask = root / "masks" / "fetal_head_0002.png"
    m = np.asarray(Image.open(mask)).copy()
    m[0, 0] = 7  # out of range for a 2-class task
    Image.fromarray(m).save(mask)
    fugc = root / "images" / "FUGC_0003.png"
    fugc.write_bytes(b"\x89PNG\r\n\x1a\n not really")  # a header and nothing else
    blank = root / "images" / "cardiac_multi_0000.png"
    Image.new("L", Image.open(blank).size, 0).save(blank)  # one colour
    report = UltrasoundDataset.prepare(data_config(corpus, tmp_path / "cache", split="all"))
    reasons = _reasons(report)
    assert len(reasons) == 4 and report["n_kept"] == report["n_sources"] - 4
    by_file = {next(k for k in ("breast_2cls", "fetal_head.csv", "FUGC", "cardiac") if k in r): r
               for r in reasons.values()}
    assert by_file["breast_2cls"].startswith(f"{corpus / 'breast_2cls.csv'}:3: ")  # header = row 1
    assert "breast_2cls_0001.png: truncated" in by_file["breast_2cls"]
    assert by_file["fetal_head.csv"].startswith(f"{corpus / 'fetal_head.csv'}:4: ")
    assert "mask value 7 outside [0, 1]" in by_file["fetal_head.csv"]
    assert by_file["FUGC"].startswith(f"{corpus / 'FUGC.csv'}:5: ") and "FUGC_0003.png: not a readable image" in by_file["FUGC"]
    assert by_file["cardiac"].startswith(f"{corpus / 'cardiac_multi.csv'}:2: ") and "one colour" in by_file["cardiac"]
    ds = UltrasoundDataset(data_config(corpus, tmp_path / "cache", split="all"))
    assert len(ds.records) == report["n_kept"]


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_cut_image_says_truncated(tmp_path, suffix):
    rng = np.random.default_rng(0)
    path = tmp_path / f"a.{suffix}"
    Image.fromarray((rng.random((64, 80)) * 255).astype(np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.8)])
    with pytest.raises(DataError, match=rf"a\.{suffix}: truncated: the file ends before its pixel data"):
        read_image(path)


def test_a_cut_dicom_says_truncated(tmp_path):
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm", download=False)  # shipped with pydicom
    path = tmp_path / "a.dcm"
    shutil.copy(src, path)
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.8)])
    with pytest.raises(DataError, match=r"a\.dcm: truncated: the pixel data is cut off"):
        read_image(path)
