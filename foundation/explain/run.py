"""``foundation explain``: explain any model the suite loads on a data set the suite reads, into a folder.

    from foundation.explain import ExplainOptions, explain

    summary = explain("runs/eeg-lora/adapter", "deeperbrain-tiny-probe", out="runs/explain-eeg",
                      options=ExplainOptions(methods=("ig", "rollout")))

The modality follows from the encoder (DeeperBrain: EEG, SLIM-Brain/Hiera4D: fMRI, UltrasoundMTL: ultrasound).
What is written (every file through a temporary name, then renamed):

- EEG: ``eeg_<method>.csv`` (index, subject, label, target, channel, band, second, value), ``topomap_<method>.png``
  (per class and band, from each recording's electrode positions); ``relp.json`` for ``--method relp``.
- fMRI: ``voxels_<method>_scan<k>.nii.gz`` (the scan's grid and affine), ``glass_<method>.png``,
  ``statmap_<method>.png``, ``saliency_scan<k>.png``.
- ultrasound: ``overlays.png`` (one row per image, one overlay per method), per classification or
  segmentation head.
- every model: ``layer_activity.csv`` / ``.png``; fine-tunes with labels also ``skip_layers.csv`` (accuracy and
  time with idle layers skipped) and ``deletion.csv`` (deletion curves per method vs random).
- ``summary.json``: options, items, the target of each, ground-truth scores where the data set is a demo corpus
  with planted signal, seconds per explained item per method.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from foundation.atomic import atomic_path, atomic_write_json
from foundation.errors import ConfigError, DataError
from foundation.explain.attnlrp import ATTENTION_RULES
from foundation.explain.methods import (
    METHODS,
    attribute,
    check_method,
    integrated_gradients,
)
from foundation.explain.target import InputModel, encoder_of, has_head

__all__ = ["DEFAULT_METHODS", "ExplainOptions", "explain", "modality_of"]

DEFAULT_METHODS = {"eeg": ("ig", "lrp", "occlusion", "rollout", "random"),
                   "fmri": ("ig", "lrp", "occlusion", "rollout", "random"),
                   "ultrasound": ("gradcam", "ig", "lrp", "occlusion", "random"),
                   "eeg-published": ("ig", "occlusion", "random")}
ALLOWED = {"eeg": ("ig", "lrp", "occlusion", "rollout", "random", "relp"),
           "fmri": ("ig", "lrp", "occlusion", "rollout", "random"),
           "ultrasound": ("gradcam", "ig", "lrp", "occlusion", "random"),
           "eeg-published": ("ig", "occlusion", "random")}
"""Published EEG architectures: no rollout or RelP (their blocks are braindecode's), no AttnLRP (no rule for their
attention modules)."""


@dataclass
class ExplainOptions:
    """What to explain and how."""

    methods: tuple[str, ...] = field(default=(), metadata={"help": "methods (empty: the modality's defaults)"})
    n_items: int = field(default=12, metadata={"help": "items explained (spread over the classes)"})
    items: tuple[int, ...] = field(default=(), metadata={"help": "explicit item indices (override n_items)"})
    ig_steps: int = field(default=32, metadata={"help": "integrated-gradients steps"})
    batch_size: int = field(default=4, metadata={"help": "items per attribution call"})
    threshold: float = field(default=0.1, metadata={"help": "layer activity: relative change that counts as material"})
    task: str = field(default="", metadata={"help": "ultrasound multi-task model: the head to explain ('' = first "
                                                    "segmentation task of the data)"})
    deletion: bool = field(default=True, metadata={"help": "deletion curves (fine-tunes with labels)"})
    lrp_attention: str = field(default="cp", metadata={"help": "lrp on the transformers: the attention rule, 'cp' "
                                                                "(CP-LRP, weights held) or 'attnlrp' (softmax and "
                                                                "uniform q.k / P.v rules)"})

    def __post_init__(self) -> None:
        self.methods, self.items = tuple(self.methods), tuple(int(i) for i in self.items)
        for m in self.methods:
            check_method(m, METHODS)
        if self.lrp_attention not in ATTENTION_RULES:
            raise ConfigError(f"explain: lrp_attention {self.lrp_attention!r} is not a rule; valid: "
                              f"{', '.join(ATTENTION_RULES)}")
        if self.n_items < 1 or self.ig_steps < 1 or self.batch_size < 1 or self.threshold <= 0:
            raise ConfigError(f"explain: n_items, ig_steps and batch_size must be >= 1 and threshold > 0; got {self}")


def modality_of(model: nn.Module) -> str:
    """``eeg``, ``fmri`` or ``ultrasound`` from the encoder's registered name; ``eeg-published`` for an imported
    EEG architecture (LaBraM, CBraMod, ...: EEG through the importer's input contract).

    Raises:
        ConfigError: an encoder the explanations do not know.
    """
    if _importer(model) is not None:
        return "eeg-published"
    name = getattr(encoder_of(model), "model_name", type(encoder_of(model)).__name__)
    table = {"deeperbrain": "eeg", "slim-brain": "fmri", "hiera4d": "fmri", "ultrasound-mtl": "ultrasound"}
    if name not in table:
        raise ConfigError(f"explain: no explanations for encoder {name!r}; known: {', '.join(table)}")
    return table[name]


def _pick_items(labels: list[int], n: int) -> list[int]:
    """Up to ``n`` indices, round-robin over the classes (in index order within a class)."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    out: list[int] = []
    queues = [list(v) for _, v in sorted(by_class.items())]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return sorted(out)


def _target(model: nn.Module, net: InputModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The label where known (>= 0) for a fine-tune, else its prediction; 0 (feature energy) for an encoder."""
    if not net.head:
        return torch.zeros(len(x), dtype=torch.long)
    with torch.no_grad():
        pred = net(x).argmax(-1)
    return torch.where(y >= 0, y.long(), pred)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def _batched(fn, n: int, bs: int) -> torch.Tensor:
    return torch.cat([fn(slice(a, min(a + bs, n))) for a in range(0, n, bs)])


def _load_data(data: str, overrides: tuple[str, ...] | list[str], model: nn.Module | None = None) -> Any:
    """The data set of a recipe's ``data`` section; for a published checkpoint's fine-tune, seen through the
    importer's input contract (rate, units, window, channel table), as ``foundation predict`` does."""
    import dataclasses

    from foundation.config import load_recipe
    from foundation.registry import DATASETS

    recipe = load_recipe(data, list(overrides))
    importer = _importer(model) if model is not None else None
    if importer is not None:
        recipe = dataclasses.replace(recipe, data=importer.adapt_data(recipe.data, encoder_of(model)))
    cls = DATASETS.get(recipe.data.name, where="recipe key data.name")
    if hasattr(cls, "prepare"):
        cls.prepare(recipe.data.config)
    dataset = cls(recipe.data.config)
    return importer.adapt_dataset(dataset, encoder_of(model)) if importer is not None else dataset


def _importer(model: nn.Module) -> Any:
    """The importer of a published checkpoint's encoder (its data goes through the importer's contract), or None."""
    from foundation.finetune.bases import importer_of

    return importer_of(encoder_of(model))


def explain(model: str | nn.Module, data: str | Any, overrides: tuple[str, ...] | list[str] = (), *,
            out: str | Path, options: ExplainOptions | None = None) -> dict[str, Any]:
    """Explain ``model`` on items of ``data`` into ``out``; return the summary (also ``out/summary.json``).

    Args:
        model: a folder or Hub id (:func:`foundation.load` reads it) or a loaded model.
        data: a recipe (shipped name or YAML path) whose ``data`` section builds the data set, or a built data set
            (for a published EEG checkpoint's fine-tune: already through the importer's contract,
            ``importer.adapt_dataset``).
        overrides: ``--set`` overrides of the data recipe.
        out: output folder (created).
        options: methods, items, steps.

    Raises:
        ConfigError: a method that does not apply to the model, an unknown encoder.
        DataError: item indices outside the data set.
    """
    import foundation

    opts = options or ExplainOptions()
    if isinstance(model, (str, Path)):
        model = foundation.load(str(model))
    model.eval()
    modality = modality_of(model)
    methods = opts.methods or DEFAULT_METHODS[modality]
    for m in methods:
        check_method(m, ALLOWED[modality])
    dataset = _load_data(data, overrides, model) if isinstance(data, (str, Path)) else data
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runner = {"eeg": _explain_eeg, "eeg-published": _explain_eeg, "fmri": _explain_fmri,
              "ultrasound": _explain_ultrasound}[modality]
    summary: dict[str, Any] = {"modality": modality, "methods": list(methods), "fine_tune": has_head(model),
                               "options": asdict(opts)}
    summary.update(runner(model, dataset, list(methods), opts, out))
    atomic_write_json(out / "summary.json", summary)
    return summary


def _items(dataset: Any, opts: ExplainOptions, labels: list[int]) -> list[int]:
    if opts.items:
        bad = [i for i in opts.items if not 0 <= i < len(dataset)]
        if bad:
            raise DataError(f"explain --items: {bad} outside the data set's {len(dataset)} items")
        return list(opts.items)
    return _pick_items(labels, opts.n_items)


def _stack(dataset: Any, idx: list[int]) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in idx]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _activity(model: nn.Module, batches: list[dict], labels: torch.Tensor | None, opts: ExplainOptions,
              out: Path) -> dict[str, Any]:
    from foundation.explain.activity import layer_activity, plot_activity, skip_report

    rows = layer_activity(model, batches, opts.threshold, forward=InputModel(model, {}).batch_forward)
    _write_csv(out / "layer_activity.csv", rows)
    plot_activity(out / "layer_activity.png", rows, opts.threshold)
    res: dict[str, Any] = {"layer_activity": rows}
    if has_head(model) and labels is not None and bool((labels >= 0).all()):
        pairs, start = [], 0
        for b in batches:
            n = len(next(iter(b.values()))) if isinstance(b, dict) else len(b)
            pairs.append((b, labels[start:start + n]))
            start += n
        skips = skip_report(model, pairs, rows)
        _write_csv(out / "skip_layers.csv", skips)
        res["skip_layers"] = skips
    return res


def _deletion(net_for, x: torch.Tensor, y: torch.Tensor, scores: dict[str, torch.Tensor], valid: torch.Tensor,
              remove, out: Path) -> dict[str, Any]:
    from foundation.explain.deletion import FRACTIONS, area_between, deletion_curve

    curves = {name: deletion_curve(net_for, x, y, s, valid, remove) for name, s in scores.items()}
    rows = [{"method": m, **{f"acc@{f:g}": a for f, a in zip(FRACTIONS, c)},
             "area_vs_random": area_between(c, curves["random"]) if "random" in curves else float("nan")}
            for m, c in curves.items()]
    _write_csv(out / "deletion.csv", rows)
    return {"deletion": rows}


# ----------------------------------------------------------------------------------------------------------- EEG
def _explain_eeg(model: nn.Module, dataset: Any, methods: list[str], opts: ExplainOptions, out: Path) -> dict:
    from foundation.explain.attnlrp import transformer_lrp
    from foundation.explain.eeg import (
        PLANTED,
        BandSum,
        band_split,
        channel_names,
        ig_baseline,
        planted_share,
        plot_topomaps,
        write_csv,
    )
    from foundation.explain.rollout import attention_rollout

    contract = not hasattr(dataset, "index")  # a published checkpoint's data: ContractWindows over the cache
    inner = dataset.dataset if contract else dataset
    labels = [int(v) for v in inner.labels[inner.rows]]
    idx = _items(dataset, opts, labels)
    batch = _stack(dataset, idx)
    x, y = batch["x"], batch["label"]
    if contract:  # the checkpoint's channel table at the template positions (BENDR's SCALE channel has none)
        from foundation.modalities.eeg.channels import template_positions

        table = template_positions()
        chans = list(dataset.cfg.channels)
        real = torch.tensor([c.upper() in table for c in chans])
        where = np.stack([np.asarray(table[c.upper()][1], float) if c.upper() in table else np.zeros(3) for c in chans])
        pos = torch.from_numpy(where).float().expand(len(idx), -1, -1)
        cm = real.expand(len(idx), -1)
        sfreq = float(dataset.cfg.sfreq)
        names = [chans] * len(idx)
    else:
        pos, cm = batch["pos"], batch["chan_mask"]
        sfreq = float(dataset.index["sfreq"])
        names = [channel_names(dataset, i) for i in idx]
    bands = band_split(x, sfreq)  # [S, nb, C, T]
    classes = list(getattr(dataset, "class_names", [])) or [str(c) for c in sorted(set(labels))]
    groups = dataset.groups()
    bs = opts.batch_size

    def fixed(sl: slice) -> dict[str, torch.Tensor]:
        return {} if contract else {"pos": pos[sl], "chan_mask": cm[sl]}

    def net(sl: slice) -> InputModel:
        return InputModel(model, fixed(sl), transform=BandSum())

    target = _batched(lambda sl: _target(model, net(sl), bands[sl], y[sl]), len(idx), bs)
    rows = [{"index": i, "subject": groups[i], "label": classes[int(v)] if v >= 0 else "", "target": int(t)}
            for i, v, t in zip(idx, y, target)]
    res: dict[str, Any] = {"items": idx, "targets": target.tolist(), "seconds_per_item": {}, "planted_share": {}}
    scores: dict[str, torch.Tensor] = {}
    for method in methods:
        if method == "relp":
            continue
        t0 = time.perf_counter()
        if method == "rollout":
            attr = attention_rollout(encoder_of(model), x, pos, cm)[:, None]  # [S, 1, C, T]
        elif method == "ig":  # reference: the window without its five bands (see eeg.ig_baseline)
            parts = [integrated_gradients(net(slice(a, a + bs)), bands[a:a + bs], target[a:a + bs], opts.ig_steps,
                                          baseline=ig_baseline(bands[a:a + bs])) for a in range(0, len(idx), bs)]
            attr = torch.cat([p[0] for p in parts])
            delta = torch.cat([p[1] for p in parts]).abs()
            with torch.no_grad():
                gap = _batched(lambda sl: (net(sl)(bands[sl]) - net(sl)(ig_baseline(bands[sl])))
                               .gather(1, target[sl, None])[:, 0], len(idx), bs).abs()
            res["ig_completeness_error"] = float((delta / gap.clamp(min=1e-8)).median())
        elif method == "occlusion":
            attr = _batched(lambda sl: attribute("occlusion", net(sl), bands[sl], target[sl],
                                                 window=(1, 1, x.shape[-1])), len(idx), bs)
        elif method == "lrp":  # AttnLRP (transformer rules) over the band components
            attr = _batched(lambda sl: transformer_lrp(net(sl), bands[sl], target[sl], opts.lrp_attention), len(idx), bs)
        else:
            attr = attribute(method, None, bands, target)
        res["seconds_per_item"][method] = (time.perf_counter() - t0) / len(idx)
        a = attr.float().numpy()
        write_csv(out / f"eeg_{method}.csv", rows, a, names, cm.numpy(), sfreq)
        scores[method] = torch.from_numpy(np.abs(a.sum(-1)).sum(1))  # [S, C]: sum over bands of |sum over time|
        maps = {}
        shown = torch.where(y >= 0, y, target)  # topomap rows: the label where known (an encoder has no class)
        for k, cls in enumerate(classes):
            sel = [s for s in range(len(idx)) if int(shown[s]) == k]
            if not sel:
                continue
            first = groups[idx[sel[0]]]
            same = [s for s in sel if groups[idx[s]] == first]  # one recording: one montage
            real = cm[same[0]].numpy()
            m = np.abs(a[same].sum(-1)).mean(0)[:, real]  # [nb, C_real]: |sum over time|, mean over windows
            maps[cls] = (m, pos[same[0]].numpy()[real], [n for n, r in zip(names[same[0]] + [""] * len(real), real) if r])
        plot_topomaps(out / f"topomap_{method}.png", maps, title=f"{method}: mean |attribution| per class and band")
        if has_head(model) and set(classes) <= set(PLANTED):  # the class explained is the planted one
            per_class = {}
            for k, cls in enumerate(classes):
                ratios = [planted_share(a[s], pos[s].numpy(), cm[s].numpy(), cls, bands=a.shape[1] > 1)
                          for s in range(len(idx)) if int(target[s]) == k and int(y[s]) == k]
                if ratios:
                    per_class[cls] = {"share": float(np.mean([r[0] for r in ratios])),
                                      "uniform": float(np.mean([r[1] for r in ratios])),
                                      "ratio": float(np.mean([r[0] / r[1] for r in ratios])), "n": len(ratios)}
            res["planted_share"][method] = per_class
    if "relp" in methods:
        res["relp"] = _relp_pairs(model, dataset, idx, batch, groups)
        atomic_write_json(out / "relp.json", res["relp"])
    batches = [{"x": x[a:a + bs], **fixed(slice(a, a + bs))} for a in range(0, len(idx), bs)]
    try:
        res.update(_activity(model, batches, y, opts, out))
    except ConfigError as err:  # an imported architecture without residual units the suite knows
        if not contract:
            raise
        res["layer_activity"] = f"not measured: {err}"
    if opts.deletion and has_head(model) and bool((y >= 0).all()) and scores:
        valid = cm.clone()

        def remove(xb: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
            return xb * (~drop)[:, :, None]

        res.update(_deletion(lambda xb, sl: InputModel(model, fixed(sl))(xb), x, y, scores, valid, remove, out))
    return res


def _relp_pairs(model: nn.Module, dataset: Any, idx: list[int], batch: dict, groups: list[str]) -> dict:
    """RelP / AtP vs activation patching over (clean, corrupted) pairs of different classes from one recording."""
    from foundation.explain.relp import patching_study

    if not has_head(model):
        raise ConfigError("--method relp needs a fine-tune (a head whose class contrast is patched)")
    pairs = []
    for s, i in enumerate(idx):
        for t, j in enumerate(idx):
            if groups[i] == groups[j] and int(batch["label"][s]) != int(batch["label"][t]) and len(pairs) < 6:
                w = lambda r: {k: batch[k][r] for k in ("x", "pos", "chan_mask")}
                pairs.append((w(s), w(t), int(batch["label"][s]), int(batch["label"][t])))
    if not pairs:
        raise DataError("--method relp: the explained items hold no two windows of different classes from one "
                        "recording; raise --n-items or give --items")
    return patching_study(model, pairs)


# ---------------------------------------------------------------------------------------------------------- fMRI
def _explain_fmri(model: nn.Module, dataset: Any, methods: list[str], opts: ExplainOptions, out: Path) -> dict:
    from foundation.explain.attnlrp import transformer_lrp
    from foundation.explain.fmri import (
        blob_auroc,
        grid_affine,
        plot_brain,
        plot_saliency,
        voxel_map,
        write_nifti,
    )
    from foundation.explain.rollout import hiera_rollout
    from foundation.modalities.fmri.cache import open_scan

    labels = [int(dataset.label(s)) if isinstance(dataset.label(s), int) else -1 for s, _ in dataset.items]
    idx = _items(dataset, opts, labels)
    batch = _stack(dataset, idx)
    x, y, scans = batch["x"], batch["label"].long(), batch["scan"]
    bs = opts.batch_size
    net = InputModel(model, {})
    target = _batched(lambda sl: _target(model, net, x[sl], y[sl]), len(idx), bs)
    res: dict[str, Any] = {"items": idx, "targets": target.tolist(), "seconds_per_item": {}, "blob_auroc": {}}
    scores = {}
    demo = (Path(dataset.scans[0]["source"]).parents[2] / "labels.tsv").is_file()
    for method in methods:
        t0 = time.perf_counter()
        if method == "ig":
            parts = [integrated_gradients(net, x[a:a + bs], target[a:a + bs], opts.ig_steps)
                     for a in range(0, len(idx), bs)]
            attr = torch.cat([p[0] for p in parts])
        elif method == "lrp":
            attr = _batched(lambda sl: transformer_lrp(net, x[sl], target[sl], opts.lrp_attention), len(idx), bs)
        elif method == "rollout":
            attr = _batched(lambda sl: hiera_rollout(encoder_of(model), x[sl]), len(idx), bs)
        elif method == "occlusion":
            g = dataset.config.unit_size
            win = (1, x.shape[2], g[1], g[2], g[3])  # one mask unit's voxels over the whole window
            attr = _batched(lambda sl, w=win: attribute("occlusion", net, x[sl], target[sl], window=w), len(idx), bs)
        else:
            attr = attribute(method, net, x, target)
        res["seconds_per_item"][method] = (time.perf_counter() - t0) / len(idx)
        a = attr.float().numpy()
        scores[method] = torch.from_numpy(np.abs(a).sum(axis=(1, 2)).reshape(len(idx), -1))  # [S, Z*Y*X]
        aucs, auc_labels = [], []
        for k, scan in enumerate(sorted(set(scans.tolist()))):
            sel = [s for s in range(len(idx)) if int(scans[s]) == scan]
            vmap = voxel_map(a[sel])
            affine = grid_affine(dataset, scan)
            nii = write_nifti(out / f"voxels_{method}_scan{scan}.nii.gz", vmap, affine)
            if k == 0:
                plot_brain(nii, out / f"glass_{method}.png", out / f"statmap_{method}.png",
                           title=f"{method}, scan {scan}")
            if demo and labels[idx[sel[0]]] >= 0:
                _, mask = open_scan(dataset.cache, dataset.scans[scan])
                aucs.append(blob_auroc(vmap, affine, np.asarray(mask).transpose(2, 1, 0), labels[idx[sel[0]]]))
                auc_labels.append(labels[idx[sel[0]]])
        if aucs:
            res["blob_auroc"][method] = {"mean": float(np.mean(aucs)), "per_scan": aucs, "labels": auc_labels}
    for scan in sorted(set(scans.tolist())):
        plot_saliency(out / f"saliency_scan{scan}.png", dataset, scan)
    batches = [{"x": x[a:a + bs]} for a in range(0, len(idx), bs)]
    res.update(_activity(model, batches, y, opts, out))
    if opts.deletion and has_head(model) and bool((y >= 0).all()) and scores:
        valid = (x.abs().sum(dim=(1, 2)) > 0).reshape(len(idx), -1)

        def remove(xb: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
            return xb * (~drop).view(xb.shape[0], 1, 1, *xb.shape[3:])

        res.update(_deletion(lambda xb, sl: net(xb), x, y, scores, valid, remove, out))
    return res


# ---------------------------------------------------------------------------------------------------- ultrasound
def _explain_ultrasound(model: nn.Module, dataset: Any, methods: list[str], opts: ExplainOptions, out: Path) -> dict:
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputTarget,
        SemanticSegmentationTarget,
    )

    from foundation.explain.ultrasound import (
        RegionScore,
        SegmentationOutput,
        classification_layer,
        plot_overlays,
        pointing_game,
        to_map,
    )

    enc = encoder_of(model)
    bs = opts.batch_size
    res: dict[str, Any] = {"seconds_per_item": {}}
    if hasattr(dataset, "spec"):  # single labelled images of one classification task
        labels = [int(r.label) for r in dataset.inner.records]
        idx = _items(dataset, opts, labels)
        batch = _stack(dataset, idx)
        x, y = batch["x"], batch["label"].long()
        net: nn.Module = InputModel(model, {})
        target = _batched(lambda sl: _target(model, net, x[sl], y[sl]), len(idx), bs)
        masks, kind = None, f"classification ({dataset.config.task})"
        layer = classification_layer(enc)
        cam_targets = [ClassifierOutputTarget(int(t)) for t in target]
        first = enc.backbone.conv_stem
        scalar = net
    else:  # the multi-task corpus: a segmentation head of a multi-task model
        if has_head(model):
            raise ConfigError("explain: a fine-tune explains its own classification task; give a data recipe of "
                              "single labelled images (ultrasound-images), e.g. ultrasound-mtl-tiny-probe")
        seg_tasks = [t for t in enc.task_ids if enc.table[t].type == "segmentation"]
        task = opts.task or next((t for t in seg_tasks if any(r.task_id == t for r in dataset.records)), "")
        if not task:
            raise ConfigError(f"explain: the data holds no segmentation task of the model; --task one of "
                              f"{', '.join(seg_tasks) or 'none'}")
        rows = [j for j, r in enumerate(dataset.records) if r.task_id == task]
        rows = rows[:opts.n_items] if not opts.items else [rows[i] for i in opts.items]
        samples = [dataset.sample(j, train=False) for j in rows]
        x = torch.cat([s["image"] for s in samples])
        masks = torch.cat([s["mask"] for s in samples]).long()
        idx, kind = rows, f"segmentation ({task})"
        net = SegmentationOutput(enc, task).eval()
        with torch.no_grad():
            pred = _batched(lambda sl: net(x[sl]).argmax(1), len(x), bs)  # [B, S, S]
        # the explained score: the structure logits over the *predicted* structure (never the true mask, which
        # is what the attributions are checked against); the whole image where nothing is predicted
        fg = torch.where((pred > 0).any(-1).any(-1)[:, None, None], pred > 0, torch.ones_like(pred, dtype=torch.bool))
        target = torch.ones(len(x), dtype=torch.long)
        y = None
        layer = enc.heads[task].tower
        cam_targets = [SemanticSegmentationTarget(1, fg[i].float().numpy()) for i in range(len(x))]
        first = enc.backbone.conv_stem
        scalar = None
    maps: dict[str, torch.Tensor] = {}
    for method in methods:
        t0 = time.perf_counter()
        if method == "gradcam":
            m = torch.cat([attribute("gradcam", net, x[a:a + bs], None, layer=layer, targets=cam_targets[a:a + bs])
                           for a in range(0, len(x), bs)])
        else:
            if scalar is None:  # segmentation: one scalar (class logits over the structure) per image
                parts = []
                for a in range(0, len(x), bs):
                    f = RegionScore(net, 1, fg[a:a + bs]).eval()
                    kw = ({"n_steps": opts.ig_steps} if method == "ig" else {"window": (3, 8, 8), "stride": (3, 4, 4)}
                          if method == "occlusion" else {"first_layer": first} if method == "lrp" else {})
                    parts.append(attribute(method, f, x[a:a + bs], torch.zeros(len(x[a:a + bs]), dtype=torch.long),
                                           **kw))
                m = to_map(torch.cat(parts))
            else:
                kw = ({"n_steps": opts.ig_steps} if method == "ig" else {"window": (3, 8, 8), "stride": (3, 4, 4)}
                      if method == "occlusion" else {"first_layer": first} if method == "lrp" else {})
                m = to_map(_batched(lambda sl, m=method, k=kw: attribute(m, scalar, x[sl], target[sl], **k), len(x), bs))
        res["seconds_per_item"][method] = (time.perf_counter() - t0) / len(x)
        maps[method] = m.detach().float()
    captions = [f"#{i}" + (f" y={int(v)}" if y is not None else "") for i, v in zip(idx, y if y is not None else idx)]
    plot_overlays(out / "overlays.png", x, maps, captions, masks)
    res.update({"items": list(idx), "head": kind, "targets": target.tolist()})
    if masks is not None:
        res["pointing_game"] = {m: dict(zip(("hit_rate", "n"), pointing_game(v, masks))) for m, v in maps.items()}
    batches = [x[a:a + bs] for a in range(0, len(x), bs)]
    res.update(_activity(model, batches, y, opts, out) if scalar is not None else _activity_seg(net, batches, opts, out))
    if opts.deletion and scalar is not None and has_head(model) and bool((y >= 0).all()):
        scores = {k: v.reshape(len(x), -1) for k, v in maps.items()}
        valid = torch.ones_like(next(iter(scores.values())), dtype=torch.bool)

        def remove(xb: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
            return xb * (~drop).view(xb.shape[0], 1, *xb.shape[2:])

        res.update(_deletion(lambda xb, sl: scalar(xb), x, y, scores, valid, remove, out))
    return res


def _activity_seg(net: nn.Module, batches: list[torch.Tensor], opts: ExplainOptions, out: Path) -> dict:
    from foundation.explain.activity import layer_activity, plot_activity

    rows = layer_activity(net, batches, opts.threshold)
    _write_csv(out / "layer_activity.csv", rows)
    plot_activity(out / "layer_activity.png", rows, opts.threshold)
    return {"layer_activity": rows}
