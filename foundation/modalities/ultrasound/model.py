"""Multi-head multi-task ultrasound model: a timm backbone (``features_only``) + FPN + one head per task.

The baseline of the ultrasound multi-task challenge (EfficientNet-B4 with an FPN, global
tasks on the deepest features, dense tasks on the FPN; Tan & Le, "EfficientNet",
https://arxiv.org/abs/1905.11946). Unlike the published baseline, the FPN is a submodule
whose parameters the optimiser sees (``param_groups``), so it trains.

Routing: classification heads read the deepest backbone map (stride 32); segmentation,
detection and keypoint heads read the FPN levels fused at stride 4 (each level upsampled and summed, as in Kirillov et al.,
"Panoptic Feature Pyramid Networks", https://arxiv.org/abs/1901.02446). ImageNet weights come
only from a file or a Hub id the user names in ``pretrained`` (nothing is downloaded
unless asked); the head multipliers default to the baseline's 10x (verified against the
reference notes: encoder LR 1e-4, heads 10x).

Any timm backbone: ``backbone`` is a timm model name (``efficientnet_b4``, ``convnext_atto.d2_in1k``, ...) or a
folder in timm's own layout (``config.json`` naming the ``architecture`` with its ``model_args``, plus
``model.safetensors``, as ``timm.models.push_to_hf_hub`` writes it): ``hf-hub:org/name[@revision]`` (fetched
through the suite's Hub client) or ``local-dir:/path/to/folder``. Such a folder brings its architecture and its
weights. An export records the architecture it resolved to (``backbone``, ``backbone_args``) and where it came
from (``backbone_source``), not the weight source, so ``from_pretrained`` rebuilds it offline.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import CheckpointError, ConfigError, DataError, did_you_mean
from foundation.hub.mixin import HubMixin
from foundation.modalities.ultrasound.fpn import FPN
from foundation.modalities.ultrasound.heads import ClassificationHead, DetectionHead, KeypointHead, SegmentationHead
from foundation.modalities.ultrasound.tasks import TaskSpec, task_table

__all__ = ["UltrasoundMTLConfig", "UltrasoundMTL"]

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class UltrasoundMTLConfig:
    """Backbone, FPN, heads and per-part learning-rate multipliers."""

    backbone: str = field(default="efficientnet_b4", metadata=_h("timm model name, or 'hf-hub:org/name' / "
                                                                 "'local-dir:/folder' in timm's layout (config.json + "
                                                                 "weights); built with features_only=True"))
    backbone_args: dict[str, Any] = field(default_factory=dict, metadata=_h("timm constructor arguments of the "
                                                                           "backbone (an export records the source's)"))
    backbone_source: str = field(default="", metadata=_h("where the backbone's architecture and weights came from "
                                                         "(recorded by exports; not read when building)"))
    pretrained: str = field(default="", metadata=_h("ImageNet weights: a local .safetensors/.pth file or 'hf-hub:org/name' ('' = random init)"))
    act_layer: str = field(default="", metadata=_h("backbone/head activation from the layer library ('' = the backbone's own)"))
    fpn_dim: int = field(default=128, metadata=_h("FPN width"))
    head_dim: int = field(default=64, metadata=_h("hidden width of the dense heads"))
    drop: float = field(default=0.2, metadata=_h("dropout before classification layers"))
    tasks: tuple[str, ...] = field(default=(), metadata=_h("task table (empty: all 27 built-in + extra tasks)"))
    extra_tasks: dict[str, Any] = field(default_factory=dict, metadata=_h("user tasks: id -> {type, num_classes, num_points, flip_safe}"))
    encoder_lr_scale: float = field(default=1.0, metadata=_h("learning-rate multiplier of the backbone"))
    fpn_lr_scale: float = field(default=10.0, metadata=_h("learning-rate multiplier of the FPN"))
    head_lr_scale: float = field(default=10.0, metadata=_h("learning-rate multiplier of every head"))
    task_lr_scales: dict[str, float] = field(default_factory=dict, metadata=_h("extra per-task head multipliers, task id -> factor"))

    def __post_init__(self) -> None:
        table = task_table(self.tasks, self.extra_tasks, "model")
        bad = [t for t in self.task_lr_scales if t not in table]
        if bad:
            raise ConfigError(f"model.task_lr_scales.{bad[0]}: unknown task; {did_you_mean(bad[0], table)}")
        for name in ("encoder_lr_scale", "fpn_lr_scale", "head_lr_scale"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        for task_id, value in self.task_lr_scales.items():
            if value < 0:
                raise ConfigError(f"model.task_lr_scales.{task_id} must be >= 0, got {value}")
        if self.fpn_dim < 1 or self.head_dim < 1 or not 0 <= self.drop < 1:
            raise ConfigError("model.fpn_dim and model.head_dim must be >= 1 and model.drop in [0, 1)")


SOURCES = ("hf-hub:", "local-dir:")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm reads from a folder, safetensors first


def _timm_folder(spec: str) -> Path:
    """The local folder of a ``hf-hub:`` / ``local-dir:`` backbone (a Hub repo is downloaded into the cache).

    Raises:
        CheckpointError: the folder has no readable ``config.json`` naming an ``architecture``, or no weights.
        HubError: the Hub cannot serve the repo or revision.
    """
    source, _, ident = spec.partition(":")
    if source == "hf-hub":
        from foundation.hub.client import download_folder

        repo_id, _, revision = ident.partition("@")
        folder = download_folder(repo_id, revision or None, allow_patterns=["config.json", *WEIGHT_FILES])
    else:
        folder = Path(ident).expanduser()
    where = f"model.backbone {spec!r}"
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{where}: no readable config.json in {folder} ({type(err).__name__}); give a folder in "
                              "timm's layout (timm.models.save_for_hf / push_to_hf_hub write one)") from err
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise CheckpointError(f"{where}: {folder / 'config.json'} names no 'architecture'; not a timm model folder")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{where}: {folder} holds no weights ({' or '.join(WEIGHT_FILES)}); a timm folder "
                              "backbone brings its weights")
    return folder


def _sourced_backbone(config: UltrasoundMTLConfig, kwargs: dict[str, Any]) -> nn.Module:
    """A backbone read from a timm folder (``hf-hub:`` / ``local-dir:``): its architecture and weights."""
    import timm

    if config.pretrained:
        raise ConfigError(f"model.pretrained {config.pretrained!r}: model.backbone {config.backbone!r} brings its own "
                          "weights; leave model.pretrained empty (or name a timm model in model.backbone)")
    folder = _timm_folder(config.backbone)
    try:
        return timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)
    except (RuntimeError, OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"model.backbone {config.backbone!r}: timm could not build or load it from {folder} "
                              f"({type(err).__name__}: {err})") from err


def _resolved(config: UltrasoundMTLConfig, backbone: nn.Module) -> dict[str, Any]:
    """What an export records of the backbone (see :meth:`UltrasoundMTL.hub_config`)."""
    if not config.backbone.startswith(SOURCES):
        source = config.backbone_source or (f"{config.backbone} with weights from {config.pretrained}"
                                            if config.pretrained else "")
        return {"pretrained": "", "backbone_source": source}
    folder_cfg = json.loads((_timm_folder_cached(backbone) / "config.json").read_text())
    args = {**folder_cfg.get("model_args", {}), **config.backbone_args}
    return {"backbone": folder_cfg["architecture"], "backbone_args": args, "pretrained": "",
            "backbone_source": config.backbone}


def _timm_folder_cached(backbone: nn.Module) -> Path:
    """The folder a sourced backbone was read from (timm records it in ``pretrained_cfg['file']``)."""
    return Path(backbone.pretrained_cfg["file"])


def _backbone(config: UltrasoundMTLConfig) -> nn.Module:
    import timm

    # the last four feature levels (strides 4-32): levels 1-4 of EfficientNet / ResNet, all four of ConvNeXt
    kwargs: dict[str, Any] = {"features_only": True, "out_indices": (-4, -3, -2, -1), **config.backbone_args}
    if config.act_layer:
        from foundation.layers.create_act import get_act_layer

        kwargs["act_layer"] = get_act_layer(config.act_layer, where="model.act_layer")
    if config.backbone.startswith(SOURCES):
        return _sourced_backbone(config, kwargs)
    if not timm.is_model(config.backbone):  # accepts pretrained tags too: efficientnet_b4.ra2_in1k
        raise ConfigError(f"model.backbone: unknown timm model {config.backbone!r}; "
                          f"{did_you_mean(config.backbone, timm.list_models('*' + config.backbone[:4] + '*'))}; "
                          f"a timm folder is named 'hf-hub:org/name' or 'local-dir:/path'")
    if config.pretrained:
        if config.pretrained.startswith("hf-hub:"):
            overlay = {"hf_hub_id": config.pretrained[len("hf-hub:"):]}
        else:
            path = Path(config.pretrained)
            if not path.is_file():
                raise CheckpointError(f"model.pretrained: weights file {str(path)!r} not found; give an existing "
                                      ".safetensors/.pth file of the backbone, 'hf-hub:org/name', or '' for random init")
            overlay = {"file": str(path.resolve())}
        try:
            return timm.create_model(config.backbone, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except (RuntimeError, OSError) as err:
            raise CheckpointError(f"model.pretrained {config.pretrained!r}: could not load weights into "
                                  f"{config.backbone} ({err})") from err
    try:
        return timm.create_model(config.backbone, pretrained=False, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model.act_layer: backbone {config.backbone} does not take an act_layer ({err}); "
                          "leave model.act_layer empty") from err


class UltrasoundMTL(nn.Module, HubMixin):
    """One backbone, one FPN, one head per task.

    ``forward(image [B, 3, S, S] in [0, 1], task [B])`` returns ``{task_id: (rows [n], output)}`` for
    the tasks present: segmentation logits ``[n, C, S, S]``, classification logits ``[n, C]``,
    detection ``{"box": [n, 4], "objectness": [n]}``, keypoints ``{"points": [n, P, 2], "heatmaps"}``.
    """

    model_name = "ultrasound-mtl"
    config_class = UltrasoundMTLConfig

    def __init__(self, config: UltrasoundMTLConfig) -> None:
        super().__init__()
        self.config = config
        self.table: dict[str, TaskSpec] = task_table(config.tasks, config.extra_tasks, "model")
        self.task_ids = list(self.table)
        self.backbone = _backbone(config)
        strides = self.backbone.feature_info.reduction()
        if list(strides) != [4, 8, 16, 32]:
            raise ConfigError(f"model.backbone {config.backbone!r}: its last four feature levels have strides {strides}; "
                              "the FPN and the dense heads need strides [4, 8, 16, 32] (a CNN or a hierarchical "
                              "transformer such as ConvNeXt, Swin or Hiera)")
        self._resolved = _resolved(config, self.backbone)
        channels = self.backbone.feature_info.channels()
        self.fpn = FPN(channels, config.fpn_dim)
        self.embed_dim = channels[-1]
        act: type[nn.Module] = nn.ReLU
        if config.act_layer:
            from foundation.layers.create_act import get_act_layer

            act = get_act_layer(config.act_layer, where="model.act_layer")
        heads = {}
        for tid, spec in self.table.items():
            if spec.type == "segmentation":
                heads[tid] = SegmentationHead(config.fpn_dim, spec.num_classes, config.head_dim, 4, act)
            elif spec.type == "classification":
                heads[tid] = ClassificationHead(self.embed_dim, spec.num_classes, config.drop)
            elif spec.type == "detection":
                heads[tid] = DetectionHead(config.fpn_dim, config.head_dim, act)
            else:
                heads[tid] = KeypointHead(config.fpn_dim, spec.num_points, config.head_dim, act)
        self.heads = nn.ModuleDict(heads)
        # a tuple, so that the norm is not registered a second time as a child module
        self._first_norm = tuple(m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))[:1]
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def hub_config(self) -> UltrasoundMTLConfig:
        """The config an export records: the timm architecture and arguments the backbone resolved to, its
        source in ``backbone_source``, and no ``pretrained`` weight source (the export holds the weights), so
        the export rebuilds without the Hub or the original file."""
        return dataclasses.replace(super().hub_config(), **self._resolved)

    def features(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``image [B, 3, S, S]`` -> ``(deepest [B, C5, S/32, S/32], fused FPN [B, D, S/4, S/4])``."""
        feats = self.backbone(self._normalised(image))
        levels = self.fpn(feats)
        # Panoptic-FPN-style fusion: every level, upsampled to the finest, summed (all FPN levels train)
        fused = levels[0]
        for level in levels[1:]:
            fused = fused + F.interpolate(level, size=fused.shape[-2:], mode="bilinear", align_corners=False)
        return feats[-1], fused

    def _normalised(self, image: torch.Tensor) -> torch.Tensor:
        """Checked, normalised images in channels-last layout: ``[B, 3, S, S]`` -> ``[B, 3, S, S]`` (NHWC strides).

        The layout carries through the backbone and the FPN: oneDNN's convolutions run NHWC without reordering,
        which took the ultrasound step (forward + backward) to about 0.8x of the NCHW one on CPU (measured in
        ``benchmarks/RESULTS.md``, "Issue 16, the step and the engine"); values agree to float rounding.
        """
        _check_images(image)
        self._check_norm_dtypes()
        x = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def _check_norm_dtypes(self) -> None:
        bn = self._first_norm[0] if self._first_norm else None
        if bn is not None and bn.running_mean is not None and bn.running_mean.dtype != bn.weight.dtype:
            raise ConfigError(
                f"BatchNorm parameters are {bn.weight.dtype} but its running statistics are {bn.running_mean.dtype}: "
                "DeepSpeed's bf16/fp16 mode casts parameters only; add deepspeed.extra: {data_types: {buffer_dtype: "
                "bf16}} to the recipe (the shipped ultrasound recipes do), or turn deepspeed.bf16 off")

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens of the deepest map: ``[B, 3, S, S]`` -> ``[B, N, C5]`` with ``N = (S/32)^2``.

        Raises:
            ConfigError: ``keep`` given (a CNN sees whole images; token deletion does not apply).
        """
        if keep is not None:
            raise ConfigError("UltrasoundMTL.forward_features: keep is not supported by a CNN backbone; pass None")
        deep = self.backbone(self._normalised(x))[-1]
        return deep.flatten(2).transpose(1, 2)  # [B, C5, h, w] -> [B, h*w, C5]

    def routes(self, task: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows of each task present in the batch: ``task [B]`` -> ``{task_id: rows [n]}`` in task order.

        Data-dependent (one host read of ``task``); the objective's ``prepare`` calls it before the compiled
        region of a training step, so that :meth:`run_heads` is shape-static.
        """
        return {self.task_ids[t]: (task == t).nonzero(as_tuple=True)[0] for t in torch.unique(task).tolist()}

    def run_heads(self, deep: torch.Tensor, fpn: torch.Tensor, task: torch.Tensor,
                  routes: dict[str, torch.Tensor] | None = None) -> dict[str, tuple[torch.Tensor, Any]]:
        """Route each task's rows to its head: classification from ``deep``, the rest from ``fpn``.

        ``routes``: :meth:`routes` of ``task`` when made in advance (None: made here).
        """
        out: dict[str, tuple[torch.Tensor, Any]] = {}
        for tid, rows in (self.routes(task) if routes is None else routes).items():
            source = deep if self.table[tid].type == "classification" else fpn
            out[tid] = (rows, self.heads[tid](source[rows]))
        return out

    def forward(self, image: torch.Tensor, task: torch.Tensor) -> dict[str, tuple[torch.Tensor, Any]]:
        deep, fpn = self.features(image)
        return self.run_heads(deep, fpn, task)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups with ``lr_scale``: backbone, FPN, each head (head scale x its task's factor).

        Matrices and convolutions get ``weight_decay``; biases and norms none.
        """
        c = self.config
        parts: list[tuple[str, nn.Module, float]] = [("backbone", self.backbone, c.encoder_lr_scale),
                                                     ("fpn", self.fpn, c.fpn_lr_scale)]
        parts += [(f"head.{t}", self.heads[t], c.head_lr_scale * c.task_lr_scales.get(t, 1.0)) for t in self.task_ids]
        groups = []
        for name, module, scale in parts:
            params = [p for p in module.parameters() if p.requires_grad]
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]
            for suffix, ps, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
                if ps:
                    groups.append({"params": ps, "lr_scale": scale, "weight_decay": wd, "name": f"{name}.{suffix}"})
        return groups


def _check_images(x: torch.Tensor) -> None:
    """Images must be ``[B, 3, H, W]``, float (the normalisation is inside the model).

    Raises:
        DataError: another rank, channel count or dtype.
    """
    if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise DataError(f"UltrasoundMTL: images must be float [B, 3, H, W], received {x.dtype} {list(x.shape)}; "
                        "repeat a grayscale channel 3 times and scale to [0, 1]")
