"""Reading ultrasound images (grayscale or RGB PNG/JPEG, DICOM) and label masks.

Images come back as float32 arrays ``[H, W, 3]`` in [0, 1] (grayscale repeated on
the three channels, so ImageNet-style backbones see the layout they were built
for); masks as int64 arrays ``[H, W]`` whose pixel value is the class index.
DICOM goes through pydicom (imported lazily): one frame per file, photometric
interpretation converted to RGB where needed (YBR, palette); grayscale through pydicom's
display pipeline (``apply_modality_lut`` -> ``apply_voi_lut`` -> ``apply_presentation_lut``,
MONOCHROME1 shown through the INVERSE presentation shape), scaled by the range the pipeline
gives the full stored-value range (so one image's own extremes never set its scale).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from foundation.errors import DataError

__all__ = ["read_image", "read_mask", "image_size", "DICOM_SUFFIXES"]

DICOM_SUFFIXES = (".dcm", ".dicom")


def _pydicom():
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading DICOM needs pydicom: pip install pydicom") from err
    return pydicom


def _what(err: Exception, path: Path, kind: str = "image") -> str:
    """What is wrong with an image file Pillow could not decode, and the fix."""
    text = str(err) or type(err).__name__
    if "truncated" in text or isinstance(err, EOFError):
        return (f"truncated: the file ends before its pixel data is complete ({path.stat().st_size} bytes; "
                f"{text}); re-copy or re-export the {kind}")
    return f"not a readable {kind} ({type(err).__name__}: {text}); check the file"


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES


def _gray_pipeline(arr: np.ndarray, ds) -> tuple[np.ndarray, float, float]:
    """Modality LUT -> VOI LUT / window -> presentation LUT (pydicom's functions), with the output range.

    The stored-value range (every value for up to 16 bits stored, else its two ends) is pushed
    through the same pipeline together with the image, so that the presentation LUT's
    ``INVERSE`` and quantisation (pydicom scales by the array's own min and max) work on the
    full range, not on the values this image happens to hold. MONOCHROME1 without a
    presentation LUT is shown through the ``INVERSE`` shape, as PS3.3 C.11.6 defines.

    Returns:
        ``(p_values [H, W] float32, lowest, highest)``: the P-values and the range they can take.
    """
    import copy

    from pydicom.pixels import apply_modality_lut, apply_presentation_lut, apply_voi_lut

    bits = int(getattr(ds, "BitsStored", 8) or 8)
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ramp = np.arange(lo, hi + 1) if bits <= 16 else np.array([lo, hi])
    flat = np.concatenate([arr.ravel(), ramp.astype(arr.dtype)])
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1" and "PresentationLUTShape" not in ds \
            and "PresentationLUTSequence" not in ds:
        ds = copy.copy(ds)
        ds.PresentationLUTShape = "INVERSE"
    out = apply_presentation_lut(apply_voi_lut(apply_modality_lut(flat, ds), ds), ds).astype(np.float64)
    tail = out[arr.size:]
    return out[: arr.size].reshape(arr.shape).astype(np.float32), float(tail.min()), float(tail.max())


def _dicom_what(err: Exception) -> str:
    """What is wrong with a DICOM file pydicom could not read, and the fix."""
    text = str(err) or type(err).__name__
    if "less than expected" in text or isinstance(err, EOFError) or "truncat" in text.lower():
        return f"truncated: the pixel data is cut off ({text.splitlines()[0]}); re-copy or re-export the file"
    return f"not a readable DICOM image ({type(err).__name__}: {text.splitlines()[0]}); check the file"


def _read_dicom(path: Path) -> np.ndarray:
    pydicom = _pydicom()
    from pydicom.pixels import apply_color_lut

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as err:
        raise DataError(f"{path}: {_dicom_what(err)}") from err
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: DICOM with {frames} frames; the challenge layout expects one image per file "
                        "(export the frame you want to its own file)")
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds).astype(np.float32)  # (YBR data arrive as RGB: pydicom converts by default)
        return arr / float(65535 if arr.max() > 255 else 255)
    if arr.ndim == 3:
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        return arr.astype(np.float32) / float(2**bits - 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: single-channel DICOM with photometric interpretation {photometric!r}; "
                        "expected MONOCHROME1 or MONOCHROME2")
    try:
        values, lowest, highest = _gray_pipeline(arr, ds)
    except (ValueError, NotImplementedError, KeyError, IndexError) as err:
        raise DataError(f"{path}: its modality / VOI / presentation LUTs cannot be applied ({err}); check the file") from err
    if highest <= lowest:
        raise DataError(f"{path}: the VOI / presentation LUTs map every stored value to {lowest}; check the window")
    return ((values - lowest) / (highest - lowest))[..., None]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as float32 ``[H, W, 3]`` in [0, 1].

    Raises:
        DataError: missing or unreadable file, or an unsupported channel count.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found; check image_path in the CSV (relative to the CSV folder)")
    if _is_dicom(path):
        arr = _read_dicom(path)
    else:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I"):
                    arr = np.asarray(im, dtype=np.float32) / 65535.0
                elif im.mode in ("L", "RGB"):
                    arr = np.asarray(im, dtype=np.float32) / 255.0
                elif im.mode in ("LA", "RGBA", "P"):
                    arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                else:
                    raise DataError(f"{path}: unsupported image mode {im.mode!r}; save it as grayscale or RGB")
        except DataError:
            raise
        except Exception as err:
            raise DataError(f"{path}: {_what(err, path)}") from err
        if arr.ndim == 2:
            arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] != 3:
        raise DataError(f"{path}: expected 1 or 3 channels, got {arr.shape[-1]}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """Read a label mask (pixel value = class index) as int64 ``[H, W]``.

    Raises:
        DataError: missing/unreadable file, colour mask, or a value >= ``num_classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mask file not found; check mask_path in the CSV (relative to the CSV folder)")
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise DataError(f"{path}: mask has mode {im.mode!r}; expected a single-channel PNG whose pixel "
                                "value is the class index")
            arr = np.asarray(im).astype(np.int64)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"{path}: {_what(err, path, 'mask')}") from err
    top = int(arr.max()) if arr.size else 0
    if top >= num_classes or int(arr.min()) < 0:
        raise DataError(f"{path}: mask value {top} outside [0, {num_classes - 1}] for a task with {num_classes} "
                        "classes (pixel value = class index, background 0)")
    return arr


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image without decoding its pixels (DICOM: Rows/Columns)."""
    path = Path(path)
    if _is_dicom(path):
        ds = _pydicom().dcmread(str(path), stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width
