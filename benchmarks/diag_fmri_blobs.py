"""Where the fMRI demo corpus's planted drive sits in the model's input, per network (issue 18, the fMRI blobs).

    python benchmarks/diag_fmri_blobs.py --cache runs/bx5-fmri/fmri-cache --subjects 48 [--explain DIR] [--run DIR]

On the ``slim-brain-tiny-probe`` data (the cached, preprocessed windows the fine-tune reads), per scan:

- the task regressor (the corpus's block design convolved with its HRF) is correlated with every voxel's
  preprocessed series; the voxel of maximum correlation (the planted drive's peak) is compared, in voxel and
  world space, with the centroid of the ground-truth blob mask that ``blob_auroc`` scores against;
- ``blob_auroc`` of that correlation map itself (an oracle map: what a perfect explanation of the drive scores);
- the same within the saliency-selected windows only (what the model sees), and the share of task frames in them;
- the mean |gradient| of the temporal-mean image over each network's blobs (how much the motion-like
  drift d . grad I weighs there) and the drive's mean r^2 over the blobs after z-scoring;
- the mask units (unit_size voxels) each driven blob's voxels fall in.

With ``--explain DIR`` (a ``foundation explain`` folder on this data), the share of |attribution| per network's
blobs for each explained scan, by its class, and the share of the brain mask's voxels each network's blobs hold.
With ``--run DIR`` (a ``bench_explain.py --out`` folder on this data: ``fmri/ft/model`` and ``results.json``), each
network's blobs are zeroed in turn in the explained windows and the mean logits printed per class: a class whose
logit does not drop when its own blobs go, and rises when another network's go, is read by elimination.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def blob_masks(shape: tuple[int, int, int], affine: np.ndarray, mask: np.ndarray, radius: float) -> list[np.ndarray]:
    """Per network, [X, Y, Z] bool: brain voxels within ``radius`` mm of one of its centres (blob_auroc's positives)."""
    from foundation.modalities.fmri.demo_corpus import NETWORKS

    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    out = []
    for centres in NETWORKS.values():
        d = np.linalg.norm(world[:, None, :] - np.asarray(centres, float)[None], axis=-1).min(1)
        out.append((d <= radius).reshape(shape) & mask)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="runs/bx5-fmri/fmri-cache")
    parser.add_argument("--subjects", type=int, default=48)
    parser.add_argument("--explain", default="", help="a foundation explain folder on this data (voxels_*.nii.gz)")
    parser.add_argument("--run", default="", help="a bench_explain.py --out folder on this data (blob ablation)")
    args = parser.parse_args()

    from foundation.config import load_recipe
    from foundation.explain.fmri import blob_auroc, grid_affine
    from foundation.modalities.fmri.cache import open_scan
    from foundation.modalities.fmri.demo_corpus import (
        BLOB_SIGMA_MM,
        NETWORKS,
        task_frames,
        task_regressor,
    )
    from foundation.registry import DATASETS

    names = list(NETWORKS)
    recipe = load_recipe("slim-brain-tiny-probe", [f"data.cache_dir={args.cache}",
                                                   f"data.demo_subjects={args.subjects}"])
    cls = DATASETS.get(recipe.data.name)
    cls.prepare(recipe.data.config)
    ds = cls(recipe.data.config)
    cfg = ds.config
    rows: dict[int, list[dict]] = {k: [] for k in range(len(names))}
    for scan, entry in enumerate(ds.scans):
        label = int(ds.label(scan))
        vol, mask = open_scan(ds.cache, entry)
        v = (np.asarray(vol, np.float32) * entry["meta"]["scale"]).transpose(3, 2, 1, 0)  # [T, Z, Y, X] -> [X, Y, Z, T]
        m = np.asarray(mask).transpose(2, 1, 0)  # [Z, Y, X] -> [X, Y, Z]
        aff = grid_affine(ds, scan)
        reg = task_regressor(v.shape[-1], cfg.tr)
        rz = (reg - reg.mean()) / reg.std()
        vz = (v - v.mean(-1, keepdims=True)) / np.maximum(v.std(-1, keepdims=True), 1e-6)
        corr = (vz * rz).mean(-1) * m  # [X, Y, Z] Pearson r with the drive
        blobs = blob_masks(m.shape, aff, m, BLOB_SIGMA_MM)
        peak = np.unravel_index(np.argmax(corr), corr.shape)
        peak_w = aff[:3, :3] @ np.array(peak) + aff[:3, 3]
        gt = np.argwhere(blobs[label])
        centres = np.asarray(NETWORKS[names[label]], float)
        # centroid of each blob of the driven network (split by the sign of world x, the two hemispheres' blobs
        # for motor/auditory/visual; default mode's two blobs split by y)
        gw = gt @ aff[:3, :3].T + aff[:3, 3]
        axis = 0 if abs(centres[0, 0] - centres[1, 0]) > 1 else 1
        side = gw[:, axis] > centres[:, axis].mean()
        near = int(np.argmin(np.linalg.norm(centres - peak_w, axis=1)))
        part = gt[side == (centres[near, axis] > centres[:, axis].mean())]
        centroid = part.mean(0)
        # within the saliency-selected windows only
        starts = [s for i, s in ds.items if i == scan]
        frames = np.zeros(v.shape[-1], bool)
        for s in starts:
            frames[s:s + cfg.window] = True
        wv = v[..., frames]
        wr = (reg[frames] - reg[frames].mean()) / max(reg[frames].std(), 1e-6)
        wz = (wv - wv.mean(-1, keepdims=True)) / np.maximum(wv.std(-1, keepdims=True), 1e-6)
        wcorr = (wz * wr).mean(-1) * m
        mean_img = v.mean(-1)
        rows[label].append({
            "scan": scan, "drive": float(entry["meta"]["label"]["drive"]),
            "peak_vox": [int(i) for i in peak], "gt_centroid_vox": [round(float(c), 2) for c in centroid],
            "peak_to_centroid_vox": float(np.linalg.norm(np.array(peak) - centroid)),
            "peak_world": [round(float(c), 1) for c in peak_w],
            "peak_to_centre_mm": float(np.linalg.norm(centres - peak_w, axis=1).min()),
            "peak_r": float(corr.max()),
            "oracle_auroc": blob_auroc(np.abs(corr), aff, m, label),
            "oracle_auroc_windows": blob_auroc(np.abs(wcorr), aff, m, label),
            "task_frame_share": float(task_frames(v.shape[-1], cfg.tr)[frames].mean()),
            "blob_r2": [float((corr[b] ** 2).mean()) for b in blobs],
            "blob_voxels": [int(b.sum()) for b in blobs],
            "mean_abs": float(np.abs(mean_img[m]).mean()),
        })
    print(f"{len(ds.scans)} scans, grid (Z, Y, X) {cfg.grid}, brain voxels {int(m.sum())}; blob voxels per network "
          f"(within {BLOB_SIGMA_MM} mm, in the mask): " + ", ".join(f"{n} {c}" for n, c in
                                                                 zip(names, rows[0][0]["blob_voxels"])))
    print("| class | scans | max-r voxel to GT centroid (voxels) | max-r voxel to nearest centre (mm) | peak r | "
          "r^2 on own blobs | r^2 on other blobs | oracle AUROC (whole scan) | oracle AUROC (kept windows) | "
          "task frames in kept windows |")
    print("|" + "---|" * 10)
    summary = {}
    for k, name in enumerate(names):
        rs = rows[k]
        own = np.mean([r["blob_r2"][k] for r in rs])
        other = np.mean([np.mean([r["blob_r2"][j] for j in range(len(names)) if j != k]) for r in rs])
        line = {
            "class": name, "scans": len(rs),
            "peak_to_centroid": np.mean([r["peak_to_centroid_vox"] for r in rs]),
            "peak_to_centre_mm": np.mean([r["peak_to_centre_mm"] for r in rs]),
            "peak_r": np.mean([r["peak_r"] for r in rs]), "own_r2": own, "other_r2": other,
            "oracle": np.mean([r["oracle_auroc"] for r in rs]),
            "oracle_windows": np.mean([r["oracle_auroc_windows"] for r in rs]),
            "task_share": np.mean([r["task_frame_share"] for r in rs]),
        }
        summary[name] = line
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in line.values()) + " |")
    print("example rows (first scan of each class):")
    for k in rows:
        print(json.dumps(rows[k][0]))
    if args.explain:
        import nibabel as nib

        print("\nshare of |attribution| on each network's blobs (brain-mask voxels within one sigma), per "
              "explained scan; 'uniform' = the network's share of the brain mask's voxels")
        for path in sorted(Path(args.explain).glob("voxels_*_scan*.nii.gz")):
            method, scan = path.name[len("voxels_"):-len(".nii.gz")].rsplit("_scan", 1)
            scan = int(scan)
            vmap = np.asarray(nib.load(str(path)).dataobj)
            _, mask = open_scan(ds.cache, ds.scans[scan])
            m = np.asarray(mask).transpose(2, 1, 0)
            blobs = blob_masks(m.shape, grid_affine(ds, scan), m, BLOB_SIGMA_MM)
            total = vmap[m].sum()
            shares = [vmap[b].sum() / total for b in blobs]
            label = int(ds.label(scan))
            print(f"{method:10s} scan {scan:2d} class {names[label]:13s} " + " ".join(
                f"{n} {s:.3f}" for n, s in zip(names, shares)) + "  | uniform " + " ".join(
                f"{b.sum() / m.sum():.3f}" for b in blobs) + f"  | auroc {blob_auroc(vmap, grid_affine(ds, scan), m, label):.3f}")

    if args.run:
        ablation(ds, Path(args.run), names)


def ablation(ds, run: Path, names: list[str]) -> None:
    """Mean logits of the fine-tune on its explained windows, clean and with each network's blobs zeroed."""
    import torch

    import foundation
    from foundation.explain.fmri import grid_affine
    from foundation.explain.target import InputModel
    from foundation.modalities.fmri.cache import open_scan
    from foundation.modalities.fmri.demo_corpus import BLOB_SIGMA_MM

    model = foundation.load(run / "fmri" / "ft" / "model").eval()
    net = InputModel(model, {})
    items = json.loads((run / "results.json").read_text())["fmri"]["summary"]["items"]
    out: dict[int, list[dict[str, np.ndarray]]] = {}
    with torch.no_grad():
        for i in items:
            it = ds[i]
            scan, label = int(it["scan"]), int(it["label"])
            m = np.asarray(open_scan(ds.cache, ds.scans[scan])[1]).transpose(2, 1, 0)  # [Z, Y, X] -> [X, Y, Z]
            blobs = blob_masks(m.shape, grid_affine(ds, scan), m, BLOB_SIGMA_MM)
            x = it["x"][None]  # [1, 1, W, Z, Y, X]
            row = {"clean": net(x)[0].numpy()}
            for k, name in enumerate(names):
                keep = torch.from_numpy(~blobs[k].transpose(2, 1, 0))  # [X, Y, Z] -> [Z, Y, X]
                row[f"without {name}"] = net(x * keep)[0].numpy()
            out.setdefault(label, []).append(row)
    print("\n| windows of class | input | " + " | ".join(f"logit {n}" for n in names) + " |")
    print("|" + "---|" * (2 + len(names)))
    for label, rows in sorted(out.items()):
        for key in rows[0]:
            mean = np.mean([r[key] for r in rows], 0)
            print(f"| {names[label]} ({len(rows)}) | {key} | " + " | ".join(f"{v:.2f}" for v in mean) + " |")


if __name__ == "__main__":
    main()
