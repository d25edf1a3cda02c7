"""Published EEG checkpoints in their own containers, read safely and renamed to braindecode's keys with a report.

=========  =====================================================  ==========================================
arch       release container (official code)                      what is read
=========  =====================================================  ==========================================
labram     ``.pth``: ``{"model": {"student.*", "lm_head.*", ...}}``  ``student.*`` (``run_class_finetuning.py``)
cbramod    ``.pth``: the plain state dict of ``models/cbramod.py``  everything (a ``module.`` prefix is removed)
eegpt      Lightning ``.ckpt``: ``{"state_dict": {...}}``            ``target_encoder.*`` (the finetune scripts)
biot       ``.ckpt``: the state dict of ``BIOTEncoder``              everything (``biot.`` prefix removed)
bendr      ``encoder.pt`` (+ ``contextualizer.pt`` beside it)        both; ``weight_g``/``weight_v`` or
                                                                  ``parametrizations.weight.original0/1``
=========  =====================================================  ==========================================

``.pth``/``.ckpt``/``.pt``/``.bin`` files are read with ``torch.load(weights_only=True)`` only: a file whose
unpickling would build other objects (run code) is refused before anything in it runs. Every load is strict:
:class:`KeyReport` lists what was renamed, what was dropped (pretraining heads, derived buffers), and what is
missing or unexpected; a partial load is an error unless the user names the keys to leave out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from foundation.errors import CheckpointError

__all__ = ["KeyReport", "read_tensors", "detect_arch", "to_braindecode", "infer_kwargs", "RELEASE_SUFFIXES"]

RELEASE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


@dataclass
class KeyReport:
    """What a load did to every key of the checkpoint.

    Attributes:
        renamed: original key -> braindecode key (identical names are not listed).
        dropped: original key -> why it is not loaded (a pretraining head, a derived buffer).
        derived: model keys computed by the model itself (EEGPT's channel ids), not read.
        missing: model keys the checkpoint lacks.
        unexpected: checkpoint keys the model has no place for.
        excluded: keys the user named to leave out.
    """

    source: str = ""
    renamed: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    derived: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    loaded: int = 0

    def check(self) -> None:
        """Raise unless every model key was loaded and every checkpoint key placed or dropped for a reason.

        Raises:
            CheckpointError: names the missing and unexpected keys and how to leave them out.
        """
        if self.missing or self.unexpected:
            raise CheckpointError(
                f"{self.source}: partial load refused: {len(self.missing)} model key(s) missing from the checkpoint "
                f"{self.missing[:8]}, {len(self.unexpected)} checkpoint key(s) with no place in the model "
                f"{self.unexpected[:8]} ({self.loaded} matched); check --arch and the model size, or name the keys "
                "to leave out (--exclude-keys KEY_OR_PREFIX ...) if the partial load is intended")

    def summary(self) -> str:
        """One line for the load report."""
        heads = sorted({k.split(".")[0] for k in self.dropped})
        parts = [f"{self.loaded} tensors loaded strictly from {self.source}", f"{len(self.renamed)} renamed"]
        if self.dropped:
            parts.append(f"{len(self.dropped)} dropped ({', '.join(heads)})")
        if self.derived:
            parts.append(f"derived by the model: {', '.join(self.derived)}")
        if self.excluded:
            parts.append(f"left out as asked: {', '.join(self.excluded)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": self.loaded, "renamed": self.renamed, "dropped": self.dropped,
                "derived": self.derived, "missing": self.missing, "unexpected": self.unexpected,
                "excluded": self.excluded}


def read_tensors(path: Path) -> Any:
    """The object stored in ``path``, read without running code.

    Raises:
        CheckpointError: not readable, or an object that needs code to unpickle (refused, nothing executed).
    """
    import pickle

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError on a damaged header
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: unpickling it would build objects other than tensors and plain containers "
            f"({str(err).splitlines()[0][:200]}); nothing in it was run. Only torch.load(weights_only=True) is used: "
            "re-save the weights as a plain state dict (torch.save(model.state_dict(), ...)) or safetensors") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable torch file ({err}); re-download it") from err


def _state_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The flat ``{key: tensor}`` dict inside a container (``model``, ``state_dict``, ``module`` or the object)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict) and obj[key] and all(isinstance(v, torch.Tensor) for v in obj[key].values()):
                return dict(obj[key])
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path}: holds no state dict (a dict of tensors, or one under 'model', 'state_dict' or "
                          f"'module'); found {type(obj).__name__}")


def detect_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The architecture a release state dict belongs to, from its key names (None: cannot tell)."""
    keys = set(state)

    def has(pattern: str) -> bool:
        rx = re.compile(pattern)
        return any(rx.search(k) for k in keys)

    if has(r"^student\.") or (has(r"(^|\.)time_embed$") and has(r"patch_embed\.conv1\.")):
        return "labram"
    if has(r"(^|\.)target_encoder\.summary_token$"):
        return "eegpt"
    if has(r"patch_embedding\.proj_in\.") and has(r"self_attn_s\."):
        return "cbramod"
    if has(r"channel_tokens\.weight$") and has(r"patch_embedding\.projection\."):
        return "biot"
    if has(r"(^|\.)Encoder_0\.0\.weight$") or has(r"transformer_layers\.0\.self_attn\.in_proj_weight$"):
        return "bendr"
    return None


def _strip(state: dict[str, torch.Tensor], prefix: str, report: KeyReport) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _labram(state: dict[str, torch.Tensor], report: KeyReport) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    student = any(k.startswith("student.") for k in state)
    for key, value in state.items():
        k = key
        if student:
            if not key.startswith("student."):
                report.dropped[key] = "pretraining head outside the student (lm_head, projection_head)"
                continue
            k = key[len("student."):]
        if k in ("mask_token",) or k.startswith("lm_head.") or k.startswith("head.") or "relative_position_index" in k:
            report.dropped[key] = "pretraining/task head or derived index"
            continue
        new = {"pos_embed": "position_embedding", "time_embed": "temporal_embedding"}.get(k, k)
        new = re.sub(r"^patch_embed\.(conv|norm)", r"patch_embed.temporal_conv.\1", new)
        new = re.sub(r"\.mlp\.fc1\.", ".mlp.0.", new)
        new = re.sub(r"\.mlp\.fc2\.", ".mlp.2.", new)
        out[new] = value
        if new != key:
            report.renamed[key] = new
    return out


def _cbramod(state: dict[str, torch.Tensor], report: KeyReport) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        out[k] = value
        if k != key:
            report.renamed[key] = k
    return out


def _eegpt(state: dict[str, torch.Tensor], report: KeyReport) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.startswith("target_encoder."):
            out[key] = value
        else:
            report.dropped[key] = "pretraining part (online encoder, predictor, reconstructor, heads)"
    return out


def _biot(state: dict[str, torch.Tensor], report: KeyReport) -> dict[str, torch.Tensor]:
    out = {}
    biot = any(k.startswith("biot.") for k in state)
    for key, value in state.items():
        k = key
        if biot:
            if not key.startswith("biot."):
                report.dropped[key] = "task head of BIOTClassifier"
                continue
            k = key[len("biot."):]
        if k == "index":
            if not torch.equal(value.long(), torch.arange(len(value))):
                raise CheckpointError(f"{report.source}: key {key!r} is not the channel index arange({len(value)}); "
                                      "not a BIOT encoder the suite can read")
            report.dropped[key] = "derived buffer (channel index 0..C-1)"
            continue
        out["encoder." + k] = value
        report.renamed[key] = "encoder." + k
    return out


def _bendr_weight_norm(k: str) -> str:
    return k.replace(".weight_g", ".parametrizations.weight.original0").replace(
        ".weight_v", ".parametrizations.weight.original1")


def _bendr(state: dict[str, torch.Tensor], report: KeyReport, part: str) -> dict[str, torch.Tensor]:
    """``part``: 'encoder' (encoder.pt) or 'contextualizer' (contextualizer.pt)."""
    out = {}
    for key, value in state.items():
        if part == "contextualizer" and key == "mask_replacement":
            report.dropped[key] = "pretraining mask vector"
            continue
        new = f"{part}.{_bendr_weight_norm(key)}"
        if part == "contextualizer" and re.fullmatch(r"input_conditioning\.4\.(weight|bias)", key):
            new = f"contextualizer.input_conditioning.3.{key.rsplit('.', 1)[1]}"  # Conv1d(k=1) -> Linear
            value = value.squeeze(-1) if value.dim() == 3 else value
        out[new] = value
        report.renamed[f"{part}:{key}"] = new
    return out


def to_braindecode(path: Path, arch: str | None) -> tuple[str, dict[str, torch.Tensor], KeyReport]:
    """Read a release file and rename its keys to braindecode's.

    Args:
        path: the release file (BENDR: ``encoder.pt``; a ``contextualizer.pt`` beside it is read too).
        arch: the architecture, or None to tell it from the keys.

    Returns:
        ``(arch, state dict with braindecode keys, report)`` (the report's missing/unexpected are filled by
        the model load).

    Raises:
        CheckpointError: unreadable or refused file, or an architecture that cannot be told (use ``--arch``).
    """
    report = KeyReport(source=str(path))
    state = _state_of(read_tensors(path), path)
    found = detect_arch(state)
    arch = arch or found
    if arch is None:
        raise CheckpointError(f"{path}: cannot tell the architecture from its keys ({sorted(state)[:5]} ...); name it "
                              "with --arch (labram, cbramod, eegpt, biot, bendr)")
    if arch == "labram":
        return arch, _labram(state, report), report
    if arch == "cbramod":
        return arch, _cbramod(state, report), report
    if arch == "eegpt":
        return arch, _eegpt(state, report), report
    if arch == "biot":
        return arch, _biot(state, report), report
    if arch == "bendr":
        if any(k.startswith("transformer_layers.") for k in state):
            return arch, _bendr(state, report, "contextualizer"), report
        out = _bendr(state, report, "encoder")
        ctx = path.with_name("contextualizer.pt")
        if ctx.is_file():
            report.source = f"{path} + {ctx.name}"
            out.update(_bendr(_state_of(read_tensors(ctx), ctx), report, "contextualizer"))
        return arch, out, report
    raise CheckpointError(f"--arch {arch!r}: unknown; valid: labram, cbramod, eegpt, biot, bendr")


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def infer_kwargs(arch: str, state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], int | None]:
    """Constructor sizes the weights tell (layers, widths), and the channel count they fix (None: any).

    Attention heads cannot be read from weights: the released defaults apply (override with ``--arch-set``).
    """
    s = state
    if arch == "labram":
        d = s["cls_token"].shape[-1]
        kw: dict[str, Any] = {"num_layers": _count(s, r"blocks\.(\d+)\."),
                              "conv_out_channels": int(s["patch_embed.temporal_conv.conv1.weight"].shape[0]),
                              "mlp_ratio": s["blocks.0.mlp.0.weight"].shape[0] / d,
                              "qkv_bias": "blocks.0.attn.q_bias" in s}
        if "blocks.0.attn.q_norm.weight" in s:
            kw["num_heads"] = int(d // s["blocks.0.attn.q_norm.weight"].shape[0])
        else:
            kw["qk_norm"] = None
        if "blocks.0.gamma_1" not in s:
            kw["init_values"] = None
        return kw, None
    if arch == "cbramod":
        return {"n_layer": _count(s, r"encoder\.layers\.(\d+)\."),
                "dim_feedforward": int(s["encoder.layers.0.linear1.weight"].shape[0])}, None
    if arch == "eegpt":
        tok = s["target_encoder.summary_token"]
        d = tok.shape[-1]
        return {"embed_dim": int(d), "embed_num": int(tok.shape[1]),
                "depth": _count(s, r"target_encoder\.blocks\.(\d+)\."),
                "mlp_ratio": s["target_encoder.blocks.0.mlp.fc1.weight"].shape[0] / d,
                "patch_size": int(s["target_encoder.patch_embed.proj.weight"].shape[-1]),
                "qkv_bias": "target_encoder.blocks.0.attn.qkv.bias" in s}, None
    if arch == "biot":
        return {"embed_dim": int(s["encoder.patch_embedding.projection.weight"].shape[0]),
                "num_layers": _count(s, r"encoder\.transformer\.layers\.layers\.(\d+)\.")}, \
            int(s["encoder.channel_tokens.weight"].shape[0])
    if arch == "bendr":
        w = s["encoder.encoder.Encoder_0.0.weight"]
        kw = {"encoder_h": int(w.shape[0])}
        if any(k.startswith("contextualizer.") for k in s):
            kw.update(transformer_layers=_count(s, r"contextualizer\.transformer_layers\.(\d+)\."),
                      contextualizer_hidden=int(s["contextualizer.transformer_layers.0.linear1.weight"].shape[0]))
        else:
            kw["encoder_only"] = True
        return kw, int(w.shape[1])
    raise CheckpointError(f"--arch {arch!r}: unknown; valid: labram, cbramod, eegpt, biot, bendr")
