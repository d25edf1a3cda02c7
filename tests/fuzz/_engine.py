"""The fuzz engine: mutate valid files of every format the suite reads and classify what each reader does.

Run as ``python -m tests.fuzz._engine COUNT SEED WORKDIR OUT.json [FORMAT ...]`` (the tests do, in one child
process, so a case that blows up memory or hangs cannot take pytest with it). For every format it writes one
valid file (or folder), derives ``COUNT`` mutants with a fixed seed, and feeds each to the suite's reader:

- mutations: truncation at a random offset, random byte flips, header field edits, wrong dtypes (a format's
  dtype/bit-depth field), huge declared sizes (dimensions, record counts, header lengths);
- each case runs under ``SIGALRM`` (:data:`CASE_TIMEOUT` s: a hang) with the address space capped at
  :data:`MEMORY_HEADROOM` above the process's size at the start (a terabyte declaration must not be allocated);
- outcome: ``read`` (the reader returned), ``named`` (a ``foundation.errors`` class whose message names the
  file or its folder), ``unnamed`` (such a class without the name), ``other`` (any other exception), ``memory``,
  ``hang``. Pass: only ``read`` and ``named``.

For the data formats the good file and the mutants that were left out are then cached together
(:class:`~foundation.data.cache.DataCache`): the good file must still be cached.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import resource
import shutil
import signal
import struct
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CASE_TIMEOUT = 20
MEMORY_HEADROOM = 3 << 30
HUGE = (2**31 - 1, 2**32 - 1, 10**12, 2**63 - 1, -1)


class Hang(Exception):
    """Raised by the alarm handler when a case runs past :data:`CASE_TIMEOUT`."""


# ---------------------------------------------------------------- mutations


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, max(len(data), 1)))]


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def _put(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def _text_field(data: bytes, offset: int, width: int, rng: np.random.Generator, huge: bool) -> bytes:
    """An ASCII header field (EDF/BDF) set to a huge number or random junk."""
    if huge:
        value = str(int(rng.choice([99999999, 10**7, -1, 0]))).encode()
    else:
        value = bytes(rng.choice(list(b"0123456789 .-+eX"), size=width).tolist())
    return _put(data, offset, value.ljust(width)[:width])


@dataclass
class Format:
    """One input format: how to write a valid instance, how to read it, and its header fields.

    Attributes:
        name: the format's name in the results table.
        make: writes a valid file (or folder) into the folder it is given; returns the path readers take.
        read: reads a path (the suite's reader for the format).
        fields: ``(offset, width, kind)`` header fields of the main file; kind "text" (ASCII), "<h", "<i",
            ">I", "<H", "<Q" (binary) for field edits and huge sizes.
        dtype_fields: ``(offset, struct code, choices)`` for wrong-dtype edits.
        target: the file inside a folder to mutate (folder formats), else None.
        text: a text format (CSV, YAML, JSON): mutations also edit values in the text.
        gz: the file is gzip-compressed: header edits apply to the decompressed bytes.
        cache: builds a DataCache over good + mutated paths (data formats), or None.
    """

    name: str
    make: Callable[[Path], Path]
    read: Callable[[Path], Any]
    fields: list[tuple[int, int, str]] = field(default_factory=list)
    dtype_fields: list[tuple[int, str, tuple[int, ...]]] = field(default_factory=list)
    target: str | None = None
    text: bool = False
    gz: bool = False
    cache: Callable[[Path, list[Path]], dict] | None = None


def _edit_text(text: str, rng: np.random.Generator) -> str:
    """A value in a text file replaced by a wrong type, a huge or negative number, or deleted."""
    tokens = list(re.finditer(r"[A-Za-z0-9_.\-+\[\]\"']+", text))
    if not tokens:
        return text
    t = tokens[int(rng.integers(0, len(tokens)))]
    new = str(rng.choice(["1e309", "-1", "99999999999999999999", "nan", "[]", "{}", "null", "true", "", "x" * 300,
                          "\u00e9\u0000", "0.5", "[1, 2]", "-0"]))
    return text[: t.start()] + new + text[t.end():]


def mutate(fmt: Format, data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One mutant of ``data``: (mutation kind, bytes)."""
    kinds = ["truncate", "flip"]
    if fmt.fields or fmt.text:
        kinds += ["field", "huge"]
    if fmt.dtype_fields:
        kinds.append("dtype")
    kind = str(rng.choice(kinds))
    if kind == "truncate":
        return kind, _truncate(data, rng)
    if kind == "flip":
        return kind, _flip(data, rng)
    if fmt.text:
        text = data.decode("utf-8", errors="replace")
        for _ in range(1 if kind == "field" else 3):
            text = _edit_text(text, rng)
        return kind, text.encode("utf-8", errors="surrogatepass")
    raw = gzip.decompress(data) if fmt.gz else data
    if kind == "dtype":
        off, code, choices = fmt.dtype_fields[int(rng.integers(0, len(fmt.dtype_fields)))]
        raw = _put(raw, off, struct.pack(code, int(rng.choice(choices))))
    else:
        off, width, code = fmt.fields[int(rng.integers(0, len(fmt.fields)))]
        if code == "text":
            raw = _text_field(raw, off, width, rng, huge=kind == "huge")
        else:
            info = np.iinfo(np.dtype(code))
            options = [int(info.max), int(info.min) if info.min < 0 else 0, int(info.max) // 2 + 1]
            value = options[int(rng.integers(0, 3))] if kind == "huge" \
                else int(rng.integers(max(int(info.min), -2**31), min(int(info.max), 2**31 - 1)))
            raw = _put(raw, off, struct.pack(code, value))
    return kind, gzip.compress(raw, mtime=0) if fmt.gz else raw


# ---------------------------------------------------------------- formats


def _eeg_builder():
    from foundation.modalities.eeg.cache import EEGCacheBuilder
    from foundation.modalities.eeg.neurostats import StatsConfig
    from foundation.modalities.eeg.preprocess import PreprocessConfig

    return EEGCacheBuilder(PreprocessConfig(), StatsConfig(), 4.0)


def _fmri_builder():
    from foundation.modalities.fmri.cache import FMRICacheBuilder
    from foundation.modalities.fmri.preprocess import PreprocessConfig

    return FMRICacheBuilder(PreprocessConfig(grid=(8, 8, 6), voxel_size=0, tr=2.0, mask="compute"), min_frames=4)


def _cache_with(builder_fn: Callable[[], Any]) -> Callable[[Path, list[Path]], dict]:
    def build(folder: Path, sources: list[Path]) -> dict:
        from foundation.data.cache import DataCache

        return DataCache(folder, builder_fn()).prepare(sources)
    return build


def _eeg_signal(c: int = 4, seconds: int = 12, sfreq: int = 200) -> np.ndarray:
    return np.random.default_rng(0).normal(0, 20, (c, seconds * sfreq))


NAMES = ["Fz", "Cz", "Pz", "Oz"]


def _edf_fields(c: int) -> list[tuple[int, int, str]]:
    fields = [(184, 8, "text"), (236, 8, "text"), (244, 8, "text"), (252, 4, "text")]
    base = 256 + c * (16 + 80 + 8)
    for k in range(4):  # physical/digital min/max
        fields += [(base + k * 8 * c + i * 8, 8, "text") for i in range(c)]
    fields += [(256 + c * 216 + i * 8, 8, "text") for i in range(c)]  # samples per record
    return fields


def make_edf(folder: Path) -> Path:
    from tests.modalities.eeg._helpers import write_edf

    write_edf(folder / "good.edf", NAMES, _eeg_signal(), 200)
    return folder / "good.edf"


def make_bdf(folder: Path) -> Path:
    from tests.modalities.eeg.test_eeg_hostile import write_bdf

    write_bdf(folder / "good.bdf", NAMES, _eeg_signal(), 200)
    return folder / "good.bdf"


def make_fif(folder: Path) -> Path:
    import mne

    info = mne.create_info(NAMES, 200.0, "eeg")
    raw = mne.io.RawArray(_eeg_signal() * 1e-6, info, verbose="error")
    raw.save(folder / "good_raw.fif", verbose="error")
    return folder / "good_raw.fif"


def _nifti(folder: Path, name: str) -> Path:
    import nibabel as nib

    data = np.random.default_rng(1).normal(100, 5, (8, 8, 6, 12)).astype(np.float32)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, str(folder / name))
    if name.endswith(".gz"):  # a fixed mtime, so mutants differ from the good file only where mutated
        raw = gzip.decompress((folder / name).read_bytes())
        (folder / name).write_bytes(gzip.compress(raw, mtime=0))
    return folder / name


# NIfTI-1: dim[0..7] int16 at 40, datatype int16 at 70, bitpix int16 at 72, vox_offset float at 108,
# pixdim float32[8] at 76, sizeof_hdr int32 at 0
NIFTI_FIELDS = [(40 + 2 * i, 2, "<h") for i in range(5)] + [(0, 4, "<i"), (72, 2, "<h"), (108, 4, "<i")]
NIFTI_DTYPES = [(70, "<h", (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 999))]


def make_png(folder: Path) -> Path:
    from PIL import Image

    Image.fromarray((np.random.default_rng(2).random((40, 48)) * 255).astype(np.uint8)).save(folder / "good.png")
    return folder / "good.png"


def make_jpeg(folder: Path) -> Path:
    from PIL import Image

    rgb = (np.random.default_rng(3).random((40, 48, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "good.jpg", quality=90)
    return folder / "good.jpg"


def _jpeg_fields(data: bytes) -> list[tuple[int, int, str]]:
    i = data.find(b"\xff\xc0")
    return [(i + 5, 2, ">H"), (i + 7, 2, ">H"), (i + 4, 1, ">B")] if i >= 0 else []


def make_dicom(folder: Path) -> Path:
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("CT_small.dcm", download=False), folder / "good.dcm")
    return folder / "good.dcm"


def _dicom_fields(data: bytes) -> tuple[list, list]:
    """(Rows, Columns, SamplesPerPixel) value offsets and (BitsAllocated, PixelRepresentation) in explicit VR LE."""
    def value_at(tag: bytes) -> int:
        i = data.find(tag)
        return i + 8 if i >= 0 else -1
    fields = [(o, 2, "<H") for o in (value_at(b"\x28\x00\x10\x00US"), value_at(b"\x28\x00\x11\x00US"),
                                     value_at(b"\x28\x00\x02\x00US")) if o > 0]
    pix = data.find(b"\xe0\x7f\x10\x00")
    if pix > 0:  # the pixel data element's length: 4 bytes after OW + 2 reserved
        fields.append((pix + 8, 4, "<I"))
    dtypes = [(o, "<H", (1, 8, 12, 16, 24, 32, 64, 0)) for o in (value_at(b"\x28\x00\x00\x01US"),) if o > 0]
    return fields, dtypes


def make_csv(folder: Path) -> Path:
    from foundation.modalities.ultrasound.demo_corpus import make_demo_corpus
    from foundation.modalities.ultrasound.tasks import task_table

    make_demo_corpus(folder / "us", task_table(("breast_2cls", "fetal_head", "FUGC")), images_per_task=3, seed=0,
                     min_size=24, max_size=32)
    return folder / "us" / "csv_files" / "fetal_head.csv"


def read_csv_file(path: Path) -> Any:
    from foundation.modalities.ultrasound.csv_reader import read_csv
    from foundation.modalities.ultrasound.tasks import task_table

    return read_csv(path, task_table(("breast_2cls", "fetal_head", "FUGC")))


RECIPE = Path(__file__).resolve().parents[2] / "foundation" / "recipes" / "deeperbrain-tiny.yaml"


def make_yaml(folder: Path) -> Path:
    shutil.copy(RECIPE, folder / "recipe.yaml")
    return folder / "recipe.yaml"


def read_yaml(path: Path) -> Any:
    from foundation.config import load_recipe

    return load_recipe(str(path))


def make_export(folder: Path) -> Path:
    import torch

    from tests.hub._helpers import ToyConfig, ToyNet

    torch.manual_seed(0)
    ToyNet(ToyConfig()).save_pretrained(folder / "export")
    return folder / "export"


def read_export(path: Path) -> Any:
    from tests.hub._helpers import ToyNet

    return ToyNet.from_pretrained(path)


def make_adapter(folder: Path) -> Path:
    import torch

    from foundation.adapters import LoraAdapterConfig, LoraAdapterModel
    from tests.adapters._helpers import ToyNet

    torch.manual_seed(0)
    cfg = LoraAdapterConfig(preset="custom", target_modules=("mlp.fc1", "mlp.fc2"), r=2)
    LoraAdapterModel.inject(ToyNet(), cfg).save(folder / "adapter")
    return folder / "adapter"


def read_adapter(path: Path) -> Any:
    import torch

    from foundation.adapters import load_adapter
    from tests.adapters._helpers import ToyNet

    torch.manual_seed(0)
    return load_adapter(ToyNet(), path)


def _safetensors_fields() -> list[tuple[int, int, str]]:
    return [(0, 8, "<Q"), (0, 4, "<I")]


def formats() -> dict[str, Format]:
    """Every fuzzed format (header offsets that depend on the file are filled in by :func:`run`)."""
    from foundation.modalities.ultrasound.images import read_image

    eeg, fmri = _eeg_builder, _fmri_builder
    return {
        "EDF": Format("EDF", make_edf, lambda p: eeg().read_source(p), _edf_fields(4), cache=_cache_with(eeg)),
        "BDF": Format("BDF", make_bdf, lambda p: eeg().read_source(p), _edf_fields(4), cache=_cache_with(eeg)),
        "FIF": Format("FIF", make_fif, lambda p: eeg().read_source(p), cache=_cache_with(eeg)),
        "NIfTI .nii": Format("NIfTI .nii", lambda f: _nifti(f, "good.nii"), lambda p: fmri().read_source(p),
                             NIFTI_FIELDS, NIFTI_DTYPES, cache=_cache_with(fmri)),
        "NIfTI .nii.gz": Format("NIfTI .nii.gz", lambda f: _nifti(f, "good.nii.gz"), lambda p: fmri().read_source(p),
                                NIFTI_FIELDS, NIFTI_DTYPES, gz=True, cache=_cache_with(fmri)),
        "PNG": Format("PNG", make_png, read_image, [(16, 4, ">I"), (20, 4, ">I")],
                      [(24, ">B", (1, 2, 4, 8, 16, 32)), (25, ">B", (0, 2, 3, 4, 6, 7))]),
        "JPEG": Format("JPEG", make_jpeg, read_image),
        "DICOM": Format("DICOM", make_dicom, read_image),
        "challenge CSV": Format("challenge CSV", make_csv, read_csv_file, text=True),
        "recipe YAML": Format("recipe YAML", make_yaml, read_yaml, text=True),
        "config.json": Format("config.json", make_export, read_export, target="config.json", text=True),
        "model.safetensors": Format("model.safetensors", make_export, read_export, _safetensors_fields(),
                                    target="model.safetensors"),
        "adapter weights": Format("adapter weights", make_adapter, read_adapter, _safetensors_fields(),
                                  target="adapter_model.safetensors"),
        "adapter config": Format("adapter config", make_adapter, read_adapter, target="adapter_config.json",
                                 text=True),
    }


# ---------------------------------------------------------------- running


def _alarm(signum: int, frame: Any) -> None:
    raise Hang(f"no result within {CASE_TIMEOUT} s")


def _limit_memory() -> None:
    with open("/proc/self/statm") as fh:
        size = int(fh.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_HEADROOM, resource.RLIM_INFINITY))


def _detail(err: BaseException) -> str:
    """The exception's first line and the last frames that raised it (file:line function)."""
    frames = traceback.extract_tb(err.__traceback__)[-5:]
    where = "\n".join(f"  {f.filename}:{f.lineno} {f.name}" for f in frames)
    first = (str(err).splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}\n{where}"


def classify(read: Callable[[Path], Any], path: Path, names: tuple[str, ...]) -> tuple[str, str]:
    """Run one case: (outcome, detail)."""
    from foundation.errors import FoundationError

    signal.alarm(CASE_TIMEOUT)
    try:
        read(path)
        return "read", ""
    except Hang as err:
        return "hang", str(err)
    except MemoryError as err:
        return "memory", _detail(err)
    except FoundationError as err:
        text = str(err)
        return ("named", "") if any(n in text for n in names) else ("unnamed", f"{type(err).__name__}: {text[:300]}")
    except Exception as err:  # noqa: BLE001 - every other exception is a finding
        return "other", _detail(err)
    finally:
        signal.alarm(0)


def run(count: int, seed: int, workdir: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Fuzz every format (or ``only`` those): per format the counts of each outcome and the failing cases."""
    signal.signal(signal.SIGALRM, _alarm)
    results: dict[str, Any] = {}
    table = formats()
    for name, fmt in table.items():
        if only and name not in only:
            continue
        rng = np.random.default_rng([seed, sum(name.encode())])
        base = workdir / re.sub(r"\W+", "_", name)
        good_dir = base / "good"
        good_dir.mkdir(parents=True)
        good = fmt.make(good_dir)
        main = good / fmt.target if fmt.target else good
        data = main.read_bytes()
        if name == "JPEG":
            fmt.fields = _jpeg_fields(data)
        if name == "DICOM":
            fmt.fields, fmt.dtype_fields = _dicom_fields(data)
        assert classify(fmt.read, good, (good.name,))[0] == "read", f"{name}: the good file does not read"
        _limit_memory()
        counts = {k: 0 for k in ("read", "named", "unnamed", "other", "memory", "hang")}
        kinds: dict[str, int] = {}
        failures, mutants = [], []
        for i in range(count):
            kind, blob = mutate(fmt, data, rng)
            kinds[kind] = kinds.get(kind, 0) + 1
            case_dir = base / f"case{i:04d}"
            if fmt.target:  # a folder: copy it, mutate one file
                shutil.copytree(good, case_dir)
                path = case_dir
                (case_dir / fmt.target).write_bytes(blob)
            else:
                case_dir.mkdir()
                path = case_dir / good.name.replace("good", f"case{i:04d}")
                if name == "challenge CSV":  # the CSV refers to images relative to its folder
                    path = good.parent / f"case{i:04d}.csv"
                path.write_bytes(blob)
            outcome, detail = classify(fmt.read, path, (path.name, str(path)))
            counts[outcome] += 1
            if outcome not in ("read", "named"):
                failures.append({"case": i, "mutation": kind, "outcome": outcome, "detail": detail, "path": str(path)})
            mutants.append(path)
        kept_good = None
        if fmt.cache is not None:  # the good file still cached beside the mutants
            signal.alarm(CASE_TIMEOUT * 10)
            try:
                report = fmt.cache(base / "cache", [good] + mutants[: min(len(mutants), 12)])
                kept_good = any(e["source"] == str(good) and e["status"] == "kept" for e in report["sources"])
            except Exception:  # noqa: BLE001
                kept_good = False
                failures.append({"case": "cache", "outcome": "other", "detail": traceback.format_exc()[-1500:]})
            finally:
                signal.alarm(0)
        results[name] = {"cases": count, **counts, "mutations": kinds, "good_file_cached": kept_good,
                         "failures": failures}
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return results


def main(argv: list[str]) -> None:
    count, seed, workdir, out = int(argv[0]), int(argv[1]), Path(argv[2]), Path(argv[3])
    import logging

    logging.disable(logging.WARNING)  # the caches' left-out listings would flood the output
    os.environ.setdefault("MNE_LOGGING_LEVEL", "ERROR")
    results = run(count, seed, workdir, argv[4:] or None)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
