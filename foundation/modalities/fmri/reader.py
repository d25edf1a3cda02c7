"""Read 4D fMRI scans (NIfTI-1/2, plain folders or BIDS ``func/`` trees) with nibabel.

SLIM-Brain (the suite's fMRI model) starts from
4D BOLD volumes. This module turns one file into a :class:`Scan`: float32 data in
the canonical RAS+ orientation (``nibabel.as_closest_canonical``), time last
[X, Y, Z, T], voxel sizes in mm and the repetition time (TR) in seconds.

TR rules (the nibabel pitfall: ``header.get_zooms()[3]`` with units from
``header.get_xyzt_units()``; files exist whose TR reads 2000 with units "sec"):

1. a BIDS ``RepetitionTime`` (seconds by the BIDS spec) wins: in a BIDS dataset (a
   ``dataset_description.json`` above the file) the run's metadata after BIDS inheritance,
   through pybids (:mod:`foundation.modalities.fmri.bids`); elsewhere the sibling sidecar JSON;
2. else the header: units "msec" are divided by 1000, "usec" by 1e6; units "sec"
   or "unknown" with a value above :data:`MS_THRESHOLD` are read as milliseconds
   (the assumption is written to ``Scan.tr_note`` and to the cache report);
3. the result must lie in [:data:`TR_MIN`, :data:`TR_MAX`] seconds, else DataError.

Every problem a user can cause raises :class:`~foundation.errors.DataError`
naming the file, what was found and the fix.
"""
from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foundation.errors import DataError
from foundation.modalities.fmri.bids import bids_bold_runs, bids_metadata, bids_root

__all__ = ["Scan", "read_scan", "find_scans", "bids_sidecar", "TR_MIN", "TR_MAX", "MS_THRESHOLD", "NIFTI_SUFFIXES"]

TR_MIN = 0.1  # seconds; below: not a BOLD repetition time
TR_MAX = 20.0  # seconds; above: not a BOLD repetition time (a units error)
MS_THRESHOLD = 100.0  # a TR above this, labelled seconds, is read as milliseconds
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_ENTITY = re.compile(r"(sub|ses)-([A-Za-z0-9]+)")


def _nib():
    try:
        import nibabel
    except ImportError as err:  # pragma: no cover - nibabel is a dependency of the fmri extra
        raise ImportError("reading fMRI scans needs nibabel: pip install nibabel") from err
    return nibabel


@dataclass
class Scan:
    """One 4D scan in canonical (RAS+) orientation.

    Attributes:
        path: the source file.
        data: float32 volume [X, Y, Z, T].
        affine: voxel -> world (mm) affine [4, 4] of ``data``.
        voxel_size: (x, y, z) in mm.
        tr: repetition time in seconds.
        tr_note: where the TR came from and any assumption made.
        subject: the BIDS ``sub-`` entity (pybids in a BIDS dataset, else the file name's ``sub-`` part; "" if none).
        session: the BIDS ``ses-`` entity ("" if none).
        truncated: empty for a whole file; for a truncated one read under ``allow_truncated``, what was lost.
    """

    path: Path
    data: np.ndarray
    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    tr: float
    tr_note: str
    subject: str = ""
    session: str = ""
    truncated: str = ""

    @property
    def n_times(self) -> int:
        return int(self.data.shape[3])


def bids_sidecar(path: Path) -> Path | None:
    """The BIDS sidecar JSON next to ``path`` (``sub-01_task-x_bold.nii.gz`` -> ``sub-01_task-x_bold.json``)."""
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.endswith(suffix):
            side = path.with_name(name[: -len(suffix)] + ".json")
            return side if side.exists() else None
    return None


def _tr_from_header(path: Path, header) -> tuple[float, str]:
    zooms = header.get_zooms()
    if len(zooms) < 4:
        raise DataError(f"{path}: the header has no 4th zoom (TR); give the TR in a BIDS sidecar JSON (RepetitionTime)")
    raw = float(zooms[3])
    _, t_unit = header.get_xyzt_units()
    if t_unit == "msec":
        return raw / 1000.0, f"header {raw} msec"
    if t_unit == "usec":
        return raw / 1e6, f"header {raw} usec"
    if raw > MS_THRESHOLD:
        return raw / 1000.0, f"header reads {raw} with units {t_unit!r}; assumed milliseconds -> {raw / 1000.0} s"
    return raw, f"header {raw} {t_unit}" + ("" if t_unit == "sec" else " (assumed seconds)")


def _read_tr(path: Path, header) -> tuple[float, str, str, str]:
    """TR and its note, subject and session: from BIDS metadata (pybids, inherited sidecars) or the sibling JSON."""
    root = bids_root(path)
    ent = dict(_ENTITY.findall(path.name))
    meta: dict = {}
    source = ""
    if root is not None:
        meta, entities = bids_metadata(path, root)
        ent = {"sub": str(entities.get("subject", "")), "ses": str(entities.get("session", ""))}
        source = "BIDS metadata (inherited sidecars, pybids)"
    else:
        side = bids_sidecar(path)
        if side is not None:
            try:
                meta = json.loads(side.read_text())
            except json.JSONDecodeError as err:
                raise DataError(f"{side}: not valid JSON ({err}); fix or delete the sidecar") from err
            source = f"BIDS sidecar {side.name}"
    if "RepetitionTime" in meta:
        try:
            tr, note = float(meta["RepetitionTime"]), f"{source} RepetitionTime"
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}: RepetitionTime {meta['RepetitionTime']!r} ({source}) is not a number of seconds") from err
    else:
        tr, note = _tr_from_header(path, header)
    if not TR_MIN <= tr <= TR_MAX:
        raise DataError(
            f"{path}: repetition time {tr} s ({note}) is outside [{TR_MIN}, {TR_MAX}] s; fix pixdim[4] and "
            "xyzt_units in the header or set RepetitionTime (seconds) in a BIDS sidecar JSON"
        )
    return tr, note, ent.get("sub", ""), ent.get("ses", "")


_CHUNK = 1 << 20


def _read_up_to(path: Path, n: int) -> bytes:
    """Up to ``n`` bytes of the file's (decompressed) content: a truncated stream gives what it holds."""
    out = bytearray()
    with open(path, "rb") as fh:
        if not path.name.endswith(".gz"):
            while len(out) < n:
                chunk = fh.read(min(_CHUNK, n - len(out)))
                if not chunk:
                    break
                out += chunk
            return bytes(out)
        dec = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip; a cut stream still yields what precedes the cut
        while len(out) < n:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            try:
                out += dec.decompress(chunk, n - len(out))
                while dec.unconsumed_tail and len(out) < n:
                    out += dec.decompress(dec.unconsumed_tail, n - len(out))
                if dec.eof and dec.unused_data and len(out) < n:  # a multi-member gzip file: go on with the next member
                    rest = dec.unused_data
                    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    out += dec.decompress(rest, n - len(out))
            except zlib.error:
                break  # corrupt from here on: keep what was decoded
    return bytes(out[:n])


def _image_of(img, blob: bytes, offset: int, n_vols: int):
    """An in-memory float32 image of the first ``n_vols`` volumes in ``blob`` (the file's bytes), scaled."""
    header, shape, proxy = img.header, tuple(int(d) for d in img.shape), img.dataobj
    arr = np.frombuffer(blob, dtype=proxy.dtype, count=math.prod(shape[:3]) * n_vols, offset=offset)
    arr = arr.reshape(shape[:3] + (n_vols,), order=getattr(proxy, "order", "F"))
    slope, inter = float(np.asarray(proxy.slope).ravel()[0]), float(np.asarray(proxy.inter).ravel()[0])
    data = np.empty(arr.shape, np.float32)
    for t in range(n_vols):  # scaled in float64 volume by volume, as nibabel does, then stored as float32
        data[..., t] = arr[..., t].astype(np.float64) * slope + inter if (slope, inter) != (1.0, 0.0) else arr[..., t]
    new = header.copy()
    new.set_data_shape(data.shape)
    new.set_data_dtype(np.float32)
    new.set_slope_inter(1.0, 0.0)
    return img.__class__(data, img.affine, new)


def _load_whole(path: Path, img, allow_truncated: bool):
    """``img`` with its data read once and checked against the header: (image in memory, truncation note).

    The data bytes the header declares are read in chunks up to the end of the (decompressed) file, so a
    header declaring terabytes allocates no more than the file holds.

    Raises:
        DataError: the data section is shorter than the header's dimensions say (unless ``allow_truncated``
            and at least one whole volume is there).
    """
    header, proxy = img.header, img.dataobj
    shape = tuple(int(d) for d in img.shape)
    dtype = np.dtype(proxy.dtype)
    if dtype.kind not in "biuf":
        raise DataError(f"{path}: voxel type {dtype} (NIfTI datatype {int(header['datatype'])}) is not a real number; "
                        "BOLD scans are stored as integers or floats: re-export the scan")
    offset = int(proxy.offset)
    vol_bytes = math.prod(shape[:3]) * dtype.itemsize
    need = offset + vol_bytes * shape[3]
    blob = _read_up_to(path, need)
    if len(blob) >= need:
        return _image_of(img, blob, offset, shape[3]), ""
    have = max(len(blob) - offset, 0) // vol_bytes if vol_bytes else 0
    tr = float(header.get_zooms()[3]) if len(header.get_zooms()) > 3 else 0.0
    missing = f"{shape[3] - have} of {shape[3]} volumes ({need - len(blob)} bytes)"
    if not allow_truncated or have == 0:
        hint = ("; set data.allow_truncated: true to read the intact volumes" if have and not allow_truncated
                else "; no whole volume is there")
        raise DataError(f"{path}: truncated: the header declares {shape[3]} volumes of {shape[:3]} {dtype} but the "
                        f"data section ends early, missing {missing}; re-copy or re-export it{hint}")
    return _image_of(img, blob, offset, have), f"truncated: {shape[3] - have} of {shape[3]} volumes missing (~{(shape[3] - have) * tr:g} s lost)"


def read_scan(path: str | Path, allow_truncated: bool = False) -> Scan:
    """Read one 4D NIfTI file.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2).
        allow_truncated: read the whole volumes of a file whose data section is shorter than its header says
            (``Scan.truncated`` says what was lost) instead of raising.

    Returns:
        The scan in RAS+ orientation, data [X, Y, Z, T] float32.

    Raises:
        DataError: missing, unreadable or truncated file; not 4D; NaN/inf voxels;
            a TR outside [TR_MIN, TR_MAX] seconds.
    """
    nib = _nib()
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, ...
        raise DataError(f"{path}: nibabel cannot read it ({type(err).__name__}: {err}); is it a NIfTI file?") from err
    if img.ndim != 4:
        raise DataError(
            f"{path}: expected a 4D (x, y, z, time) scan, received {img.ndim}D shape {tuple(img.shape)}; "
            "pass BOLD time series, not anatomical or single volumes"
        )
    try:
        img, truncated = _load_whole(path, img, allow_truncated)
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except DataError:
        raise
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise DataError(f"{path}: the file is truncated or corrupt ({type(err).__name__}: {err}); re-copy or re-export it") from err
    bad = ~np.isfinite(data)
    if bad.any():
        t_bad = sorted(set(np.nonzero(bad)[3].tolist()))
        raise DataError(
            f"{path}: {int(bad.sum())} NaN/inf voxel values (in volumes {t_bad[:10]}{'...' if len(t_bad) > 10 else ''}); "
            "fix the preprocessing that produced them or drop those volumes"
        )
    tr, note, subject, session = _read_tr(path, img.header)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Scan(path=path, data=data, affine=np.asarray(img.affine, dtype=np.float64), voxel_size=zooms, tr=tr,
                tr_note=note, subject=subject, session=session, truncated=truncated)


def find_scans(root: str | Path) -> list[Path]:
    """NIfTI files under ``root``: the BIDS BOLD runs (pybids; ``derivatives/`` excluded) when it is a BIDS
    dataset, else every NIfTI file.

    Raises:
        DataError: ``root`` does not exist or holds no NIfTI file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; point data.source at a folder of 4D NIfTI files or a BIDS tree")
    if (root / "dataset_description.json").exists():
        files = bids_bold_runs(root)
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not files:
        raise DataError(f"{root}: no .nii / .nii.gz files found (BIDS: sub-*/func/*_bold.nii.gz)")
    return files
