"""EEG channel names and 3D electrode positions.

DeeperBrain (Anonymous et al., "DeeperBrain: a neuro-grounded EEG foundation model",
paper link unverified) encodes channels by their 3D position, so every channel a
recording carries must be mapped to a point on the head. Names in the wild come
in many spellings; :func:`canonical_name` maps them onto the 10-05 system:

- TUH style ``EEG FP1-REF`` / ``EEG Fp1-LE`` -> ``Fp1`` (prefix and reference suffix dropped);
- case: ``FP1`` / ``fp1`` -> ``Fp1`` (the montage's own spelling);
- old 10-20 names ``T3 T4 T5 T6`` -> ``T7 T8 P7 P8``;
- bipolar pairs ``FP1-F7`` stay a pair and sit at the midpoint of both electrodes.

Positions come from the recording's digitisation when it has one (``info["chs"][i]["loc"]``),
else from a template montage, or from a montage file a recipe names (``data.montage: caps/my.elc``,
read by ``mne.channels.read_custom_montage``: ``.elc .sfp .bvef .loc .locs .eloc .csd .elp .txt .hpts``).
MNE 1.13 renamed the templates (``standard_1005`` became an
alias of ``colin27_1005``); :func:`template_montage_name` picks the name the installed MNE knows.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

from foundation.errors import DataError

__all__ = ["OLD_NAMES", "MONTAGE_SUFFIXES", "is_montage_file", "canonical_name", "template_montage_name", "template_positions", "channel_positions"]

OLD_NAMES = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
_PREFIX = re.compile(r"^EEG:?\s*(?=[A-Za-z])", re.IGNORECASE)
_REF_SUFFIX = re.compile(r"[-_ ]?(REF|LE|AR|AVG|A1A2|M1M2|CAR)$", re.IGNORECASE)


def template_montage_name(system: str = "1005") -> str:
    """The name of MNE's template montage of the 10-05 (or 10-20) system in the installed MNE.

    Args:
        system: "1005" or "1020".

    Returns:
        ``colin27_<system>`` where MNE lists it (1.13 and later), else ``standard_<system>``.
    """
    import mne

    builtin = mne.channels.get_builtin_montages()
    new = f"colin27_{system}"
    return new if new in builtin else f"standard_{system}"


@lru_cache(maxsize=4)
def template_positions(montage: str | None = None) -> dict[str, np.ndarray]:
    """``{upper-case name: (montage spelling, position [3] in metres)}`` of a template montage.

    Args:
        montage: an MNE built-in montage name or a montage file; None picks :func:`template_montage_name`.

    Raises:
        DataError: neither a built-in name nor a readable montage file.
    """
    import mne

    name = montage or template_montage_name()
    if is_montage_file(name):
        mont = _read_montage_file(name)
    else:
        try:
            mont = mne.channels.make_standard_montage(name)
        except ValueError as err:
            raise DataError(f"data.montage {name!r} is neither an MNE built-in montage nor a montage file "
                            f"({', '.join(MONTAGE_SUFFIXES)}); built-in: "
                            f"{', '.join(mne.channels.get_builtin_montages())}") from err
    return {k.upper(): (k, np.asarray(v, dtype=np.float64)) for k, v in mont.get_positions()["ch_pos"].items()}


MONTAGE_SUFFIXES = (".elc", ".sfp", ".bvef", ".loc", ".locs", ".eloc", ".csd", ".elp", ".txt", ".hpts")


def is_montage_file(montage: str) -> bool:
    """Whether ``data.montage`` names a file (a path with a montage suffix, or an existing file)."""
    from pathlib import Path

    return montage.lower().endswith(MONTAGE_SUFFIXES) or Path(montage).is_file()


def _read_montage_file(path: str) -> Any:
    import mne
    from pathlib import Path

    if not Path(path).is_file():
        raise DataError(f"data.montage: montage file {path} does not exist; give a file mne.channels."
                        "read_custom_montage reads or an MNE built-in montage name")
    try:
        mont = mne.channels.read_custom_montage(path)
    except Exception as err:  # mne raises ValueError, KeyError, IndexError... on a malformed file
        raise DataError(f"data.montage: {path}: mne could not read it as a montage ({type(err).__name__}: {err}); "
                        f"use one of {', '.join(MONTAGE_SUFFIXES)} in the format its suffix names") from err
    if not mont.get_positions()["ch_pos"]:
        raise DataError(f"data.montage: {path} holds no electrode position")
    return mont


def _single(name: str, table: dict[str, Any]) -> str | None:
    """Canonical spelling of one electrode name, or None when the template does not know it."""
    key = name.strip().upper().replace(" ", "")
    key = OLD_NAMES.get(key, key)
    if key in table:
        return table[key][0]
    if key.endswith("Z") and key[:-1] + "Z" in table:
        return table[key[:-1] + "Z"][0]
    return None


def canonical_name(name: str, montage: str | None = None) -> str | None:
    """Map a channel name to the template's spelling; a bipolar pair becomes ``"A-B"``.

    Args:
        name: the name as recorded (``"EEG FP1-REF"``, ``"T3"``, ``"FP1-F7"``, ``"fz"``).
        montage: the template montage; None picks :func:`template_montage_name`.

    Returns:
        The canonical name (``"Fp1"``, ``"T7"``, ``"Fp1-F7"``), or None when it is not an electrode
        the template knows (``"ECG"``, ``"Status"``, ``"EEG 23"``).
    """
    table = template_positions(montage)
    text = _PREFIX.sub("", name.strip())
    text = _REF_SUFFIX.sub("", text)
    single = _single(text, table)
    if single is not None:
        return single
    parts = re.split(r"\s*-\s*", text)
    if len(parts) == 2:
        a, b = _single(parts[0], table), _single(parts[1], table)
        if a is not None and b is not None:
            return f"{a}-{b}"
    return None


def _template_position(canonical: str, table: dict[str, Any]) -> np.ndarray:
    if "-" in canonical:  # bipolar: midpoint of the pair
        a, b = canonical.split("-")
        return 0.5 * (table[a.upper()][1] + table[b.upper()][1])
    return table[canonical.upper()][1]


def channel_positions(info: Any, montage: str | None = None,
                      where: str = "recording") -> tuple[list[int], list[str], np.ndarray, str]:
    """Canonical names and 3D positions of the channels of an ``mne.Info`` that can be placed.

    Positions come from the recording's digitisation when every channel has a finite, non-zero,
    distinct location; otherwise from the template montage by canonical name, and channels the
    template does not know are left out (the caller reports them).

    Args:
        info: ``mne.Info`` of EEG channels only.
        montage: template montage name (None: the 10-05 template of the installed MNE).
        where: the file, for messages.

    Returns:
        ``(kept indices, names, positions [C, 3] float32 in metres, source)``; source is
        "digitisation" or the montage name.

    Raises:
        DataError: no channel at all, or no channel name the template knows (and no digitisation).
    """
    ch_names = list(info["ch_names"])
    if not ch_names:
        raise DataError(f"{where}: no EEG channels; the file holds no channel of type 'eeg'")
    locs = np.array([ch["loc"][:3] for ch in info["chs"]], dtype=np.float64)
    digitised = bool(np.isfinite(locs).all() and (np.abs(locs).sum(axis=1) > 0).all()
                     and len({tuple(p) for p in locs.round(6)}) == len(ch_names))
    table = template_positions(montage)
    names = [canonical_name(n, montage) for n in ch_names]
    if digitised:
        return list(range(len(ch_names))), [c or n for c, n in zip(names, ch_names)], locs.astype(np.float32), "digitisation"
    kept = [i for i, c in enumerate(names) if c is not None]
    if not kept:
        raise DataError(
            f"{where}: none of the channel names {ch_names[:8]}{' ...' if len(ch_names) > 8 else ''} is an electrode "
            f"of the {montage or template_montage_name()} montage and the file has no digitised positions; rename "
            "them to 10-05 names (data.channel_map: {old: new}) or give a montage file with their positions "
            "(data.montage: path/to/file.elc)"
        )
    pos = np.stack([_template_position(names[i], table) for i in kept]).astype(np.float32)  # type: ignore[arg-type]
    return kept, [names[i] for i in kept], pos, montage or template_montage_name()  # type: ignore[misc]
