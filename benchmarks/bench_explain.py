"""Explanations checked against the demo corpora's planted signal, per modality and method.

    python benchmarks/bench_explain.py --out runs/bench-explain [--steps 120] [--items 16]
        [--only eeg fmri us-cls us-seg]
        [--base-eeg RUN/export] [--base-fmri RUN/export] [--base-us RUN/export] [--head-init random] [--set K=V]
        [--fmri-subjects N] [--fmri-train-selection saliency|all|random] [--reuse-finetune] [--explain-name NAME]
        [--lrp-attention cp|attnlrp]

For each shipped model a tiny encoder (the ``*-tiny`` recipe's sizes; pretrained by ``foundation pretrain`` when
``--base-eeg`` / ``--base-fmri`` / ``--base-us`` name the run's export folder, else random init) is fully
fine-tuned in-process by the suite's runner on the ``*-tiny-probe`` demo task (``--steps`` steps), then
explained on the runner's own held-out subjects/patients with :func:`foundation.explain.explain`:

- EEG: share of |attribution| on the planted channels and bands per class vs uniform (target >= 2x);
- fMRI: AUROC of the voxel maps against the driven network's blobs (target >= 0.8);
- ultrasound: a segmentation model (the tiny recipe's sizes, the ``lung`` task of the multi-task demo corpus,
  trained ``--steps`` steps with the multi-task objective) is explained on held-out images: pointing game
  against the planted masks (target >= 0.8) with a random baseline; the classification fine-tune is explained
  too (deletion curves; its demo corpus keeps no object mask);
- deletion curves of every method vs random (area between the curves);
- AttnLRP (``lrp``) on the transformers and attention rollout on both (DeeperBrain, SLIM-Brain's Hiera4D);
- RelP and attribution patching vs activation patching on the EEG fine-tune (Pearson r per component);
- layer activity and the accuracy/time of skipping idle layers.

Prints markdown tables (for benchmarks/RESULTS.md) and writes every explanation folder under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import torch

from foundation.config import dataclass_to_dict, load_recipe
from foundation.eval.report import markdown_table
from foundation.explain import ExplainOptions, explain
from foundation.finetune.runner import FinetuneOptions, _split, run_finetune
from foundation.registry import DATASETS, MODELS

TRAIN = ["train.warmup_steps=5", "train.progress_bar=false"]


def _finetune(recipe_name: str, data: list[str], base_model: torch.nn.Module | str, out: Path, steps: int,
              head_init: str = "probe", sets: tuple[str, ...] = (), reuse: bool = False):
    """Fine-tune (or, with ``reuse``, load the fine-tune an earlier run left in ``out/ft``) and return
    (model, data set, held-out indices, held-out metrics, seconds)."""
    recipe = load_recipe(recipe_name, data + TRAIN + [f"train.steps={steps}", *sets])
    if reuse and (out / "ft" / "model").is_dir():
        import foundation

        ds_cls = DATASETS.get(recipe.data.name)
        ds_cls.prepare(recipe.data.config)
        dataset = ds_cls(recipe.data.config)
        _, test, _ = _split(dataset, FinetuneOptions(method="full"), "classification")
        metrics = json.loads((out / "ft" / "metrics.json").read_text())["metrics"]
        print(f"{recipe_name}: reusing the fine-tune in {out / 'ft'}", flush=True)
        return foundation.load(out / "ft" / "model"), dataset, list(test.indices), metrics, 0.0
    if isinstance(base_model, str):  # a pretraining run's export folder
        base = Path(base_model)
    else:
        base = out / "base"
        base_model.save_pretrained(base)
    ds_cls = DATASETS.get(recipe.data.name)
    ds_cls.prepare(recipe.data.config)
    dataset = ds_cls(recipe.data.config)
    _, test, _ = _split(dataset, FinetuneOptions(method="full"), "classification")
    t0 = time.perf_counter()
    res = run_finetune(recipe, str(base), out / "ft", FinetuneOptions(method="full", head_init=head_init))
    import foundation

    model = foundation.load(out / "ft" / "model")
    return model, dataset, list(test.indices), res["metrics"], time.perf_counter() - t0


def _spread(test: list[int], labels: list, n: int) -> list[int]:
    """Up to ``n`` held-out indices taken round-robin over the classes (in index order within a class)."""
    by_class: dict = {}
    for i in test:
        by_class.setdefault(labels[i], []).append(i)
    queues, out = [q for _, q in sorted(by_class.items())], []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return sorted(out)


def _accuracy(model: torch.nn.Module, dataset, items: list[int]) -> dict[str, float]:
    """Balanced accuracy of a classification fine-tune on ``items`` of ``dataset`` (windows it did not train on)."""
    from sklearn.metrics import balanced_accuracy_score

    from foundation.explain.target import InputModel

    net, pred, true = InputModel(model, {}), [], []
    with torch.no_grad():
        for a in range(0, len(items), 8):
            batch = [dataset[i] for i in items[a:a + 8]]
            pred += net(torch.stack([b["x"] for b in batch])).argmax(-1).tolist()
            true += [int(b["label"]) for b in batch]
    return {"balanced_accuracy": float(balanced_accuracy_score(true, pred)), "n": len(items)}


def _encoder(recipe: str, **changes):
    rec = load_recipe(recipe)
    cls = MODELS.get(rec.model.name)
    fields = dataclass_to_dict(rec.model.config)
    return cls(cls.config_class(**{**fields, **changes}))


def _train_segmentation(out: Path, steps: int, images: int, base: str = "") -> tuple[torch.nn.Module, list[str], float]:
    """The tiny ultrasound model (random init, or ``base``: a pretraining export holding the ``lung`` head) on the
    ``lung`` segmentation task alone, trained with the multi-task objective."""
    from foundation.registry import OBJECTIVES

    data = [f"data.cache_dir={out / 'us-seg-cache'}", f"data.demo_images_per_task={images}", "data.tasks=[lung]",
            "data.split=train", "data.augment=false"]
    recipe = load_recipe("ultrasound-mtl-tiny", data + ["objective.tasks=[lung]"])
    ds_cls = DATASETS.get(recipe.data.name)
    ds_cls.prepare(recipe.data.config)
    train = ds_cls(recipe.data.config)
    model = _encoder("ultrasound-mtl-tiny", tasks=("lung",))
    if base:  # the pretrained backbone, FPN and lung head (the objective's tasks must be the model's)
        import foundation

        own = model.state_dict()
        pre = {k: v for k, v in foundation.load(base).state_dict().items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(pre, strict=False)
        print(f"us-seg: {len(pre)} of {len(own)} tensors from {base}", flush=True)
    obj_cls = OBJECTIVES.get(recipe.objective.name)
    objective = obj_cls(recipe.objective.config)
    opt = torch.optim.AdamW(list(model.parameters()) + list(objective.parameters()), lr=3e-3)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        batch = train[step]
        loss, _ = objective(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, [*data[:3], "data.split=val", "data.augment=false"], time.perf_counter() - t0


def _save(out: Path, results: dict, name: str = "explain") -> dict:
    """Merge ``results`` into ``out/results.json`` (``out/results-<name>.json`` for another ``--explain-name``)
    after each section (sections run separately add up, and a later section's failure keeps the earlier ones);
    returns the merged results."""
    from foundation.atomic import atomic_write_json

    saved = out / ("results.json" if name == "explain" else f"results-{name}.json")
    merged = {**(json.loads(saved.read_text()) if saved.is_file() else {}),
              **json.loads(json.dumps(results, default=str))}
    atomic_write_json(saved, merged)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-explain")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--only", nargs="*", default=["eeg", "fmri", "us-cls", "us-seg"])
    parser.add_argument("--threshold", type=float, default=0.1, help="layer activity: material relative change")
    parser.add_argument("--fmri-items", type=int, default=8, help="fMRI windows explained (occlusion is the cost)")
    parser.add_argument("--base-eeg", default="",
                        help="export folder of a deeperbrain-tiny pretraining run (else random init)")
    parser.add_argument("--base-fmri", default="", help="export folder of a slim-brain-tiny pretraining run (else "
                                                       "random init)")
    parser.add_argument("--base-us", default="", help="export folder of an ultrasound-mtl-tiny pretraining run (else "
                                                     "random init)")
    parser.add_argument("--fmri-subjects", type=int, default=24, help="demo subjects of the fMRI fine-tune")
    parser.add_argument("--fmri-train-selection", default="saliency", choices=["saliency", "all", "random"],
                        help="windows the fMRI fine-tune trains on ('all': every window of a scan carries its label, "
                             "rest included); explained are always the held-out scans' salient windows")
    parser.add_argument("--reuse-finetune", action="store_true",
                        help="load the fine-tune an earlier run left under --out (same data options) instead of "
                             "training again: explain it with other items or rules")
    parser.add_argument("--explain-name", default="explain", help="folder (under --out/<modality>/) of the explanation")
    parser.add_argument("--lrp-attention", default="cp", choices=["cp", "attnlrp"],
                        help="lrp on the transformers: CP-LRP or AttnLRP's softmax and uniform q.k / P.v rules")
    parser.add_argument("--head-init", default="probe", choices=["probe", "random"],
                        help="the fine-tunes' new head: LP-FT (a linear probe of the frozen features) or random")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override of every fine-tune run here, repeatable (e.g. train.lr=3e-4)")
    parser.add_argument("--report", nargs="*", default=None, metavar="RESULTS_JSON",
                        help="only print the tables of these results.json files (merged), e.g. of parallel runs")
    args = parser.parse_args()
    if args.report is not None:
        merged: dict = {}
        for path in args.report:
            merged.update(json.loads(Path(path).read_text()))
        print(report(merged))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(f"machine load before: {load}; torch threads {torch.get_num_threads()}; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}")
    torch.manual_seed(0)
    results = {}
    if "eeg" in args.only:
        data = [f"data.cache_dir={out / 'eeg-cache'}", "train.micro_batch_size=16"]
        model, ds, test, metrics, secs = _finetune("deeperbrain-tiny-probe", data,
                                                   args.base_eeg or _encoder("deeperbrain-tiny"), out / "eeg",
                                                   args.steps, args.head_init, tuple(args.sets), args.reuse_finetune)
        opts = ExplainOptions(methods=("ig", "lrp", "occlusion", "rollout", "random", "relp"),
                              items=tuple(test[:args.items]),
                              threshold=args.threshold, lrp_attention=args.lrp_attention)
        results["eeg"] = {"finetune": metrics, "train_s": secs, "base": args.base_eeg or "random init",
                          "head_init": args.head_init, "sets": args.sets,
                          "summary": explain(model, ds, out=out / "eeg" / args.explain_name, options=opts)}
        print("eeg done", json.dumps(results["eeg"]["summary"].get("planted_share")), flush=True)
        _save(out, results, args.explain_name)
    if "fmri" in args.only:
        data = [f"data.cache_dir={out / 'fmri-cache'}", f"data.demo_subjects={args.fmri_subjects}"]
        model, ds, test, metrics, secs = _finetune("slim-brain-tiny-probe",
                                                   data + [f"data.selection={args.fmri_train_selection}"],
                                                   args.base_fmri or _encoder("slim-brain-tiny"), out / "fmri",
                                                   args.steps, args.head_init, tuple(args.sets), args.reuse_finetune)
        if args.fmri_train_selection != "saliency":  # explain the held-out scans' salient windows (task blocks)
            held = {int(ds.items[i][0]) for i in test}
            recipe = load_recipe("slim-brain-tiny-probe", data)
            DATASETS.get(recipe.data.name).prepare(recipe.data.config)
            ds = DATASETS.get(recipe.data.name)(recipe.data.config)
            test = [i for i, (scan, _) in enumerate(ds.items) if scan in held]
            metrics = {**metrics, "salient_windows": _accuracy(model, ds, test)}
        opts = ExplainOptions(items=tuple(_spread(test, ds.item_labels(), args.fmri_items)), batch_size=2, ig_steps=16,
                              lrp_attention=args.lrp_attention)
        results["fmri"] = {"finetune": metrics, "train_s": secs, "base": args.base_fmri or "random init",
                           "head_init": args.head_init, "sets": args.sets, "train_selection": args.fmri_train_selection,
                           "summary": explain(model, ds, out=out / "fmri" / args.explain_name, options=opts)}
        print("fmri done", json.dumps(results["fmri"]["summary"].get("blob_auroc")), flush=True)
        _save(out, results, args.explain_name)
    if "us-cls" in args.only:
        data = [f"data.cache_dir={out / 'us-cache'}"]
        model, ds, test, metrics, secs = _finetune("ultrasound-mtl-tiny-probe", data,
                                                   args.base_us
                                                   or _encoder("ultrasound-mtl-tiny", tasks=("breast_3cls",)),
                                                   out / "us-cls", args.steps, args.head_init, tuple(args.sets))
        opts = ExplainOptions(items=tuple(test[:args.items]))
        results["us-cls"] = {"finetune": metrics, "train_s": secs, "base": args.base_us or "random init",
                             "summary": explain(model, ds, out=out / "us-cls" / "explain", options=opts)}
        print("us-cls done", flush=True)
        _save(out, results, args.explain_name)
    if "us-seg" in args.only:
        model, data, secs = _train_segmentation(out, args.steps, images=48, base=args.base_us)
        opts = ExplainOptions(n_items=args.items, task="lung")
        results["us-seg"] = {"train_s": secs, "base": args.base_us or "random init",
                             "summary": explain(model, "ultrasound-mtl-tiny", data, out=out / "us-seg" / "explain",
                                                options=opts)}
        print("us-seg done", json.dumps(results["us-seg"]["summary"].get("pointing_game")), flush=True)
        _save(out, results, args.explain_name)
    results = _save(out, results, args.explain_name)
    print(f"machine load after: {subprocess.run(['uptime'], capture_output=True, text=True, check=False).stdout.strip()}")
    print(report(results))


def report(results: dict) -> str:
    """Markdown tables of the ground-truth scores, deletion areas, RelP, layer activity."""
    lines = []
    rows = []
    for mod, r in results.items():
        s = r["summary"]
        dele = {d["method"]: d["area_vs_random"] for d in s.get("deletion", [])}
        for m in s["methods"]:
            if m == "relp":
                continue
            row = {"modality": mod, "method": m, "seconds/item": s["seconds_per_item"].get(m)}
            if "planted_share" in s and m in s["planted_share"]:
                for cls, v in s["planted_share"][m].items():
                    row[f"{cls} share/uniform"] = v["ratio"]
            if "blob_auroc" in s and m in s["blob_auroc"]:
                row["blob AUROC"] = s["blob_auroc"][m]["mean"]
            if "pointing_game" in s and m in s["pointing_game"]:
                row["pointing game"] = s["pointing_game"][m]["hit_rate"]
                row["n images"] = s["pointing_game"][m]["n"]
            row["deletion area vs random"] = dele.get(m)
            rows.append(row)
        if "finetune" in r:
            trained = f"trained {r['train_s']:.0f} s" if r["train_s"] else "reused"
            lines.append(f"- {mod}: held-out balanced accuracy of the fine-tune {r['finetune']['balanced_accuracy']:.3f} "
                         f"({trained}, from {r.get('base', 'random init')})")
            if "salient_windows" in r["finetune"]:
                lines.append(f"  (trained on {r['train_selection']} windows; on the held-out scans' salient windows "
                             f"{r['finetune']['salient_windows']['balanced_accuracy']:.3f})")
    lines.append("")
    lines.append(markdown_table(rows, ".3f"))
    per_class = []
    for mod, r in results.items():
        for m, v in r["summary"].get("blob_auroc", {}).items():
            if "labels" in v:  # fMRI blob AUROC per driven network (mean over the explained scans of that class)
                from foundation.modalities.fmri.demo_corpus import NETWORKS

                row = {"modality": mod, "method": m, "scans": len(v["per_scan"])}
                for c, name in enumerate(NETWORKS):
                    got = [a for a, lab in zip(v["per_scan"], v["labels"]) if lab == c]
                    row[name] = sum(got) / len(got) if got else None
                per_class.append(row)
    if per_class:
        lines.append(markdown_table(per_class, ".3f"))
    if "eeg" in results and "relp" in results["eeg"]["summary"]:
        lines.append(markdown_table([results["eeg"]["summary"]["relp"]], ".3f"))
    for mod, r in results.items():
        s = r["summary"]
        if s.get("skip_layers"):
            lines.append(f"{mod}: layer activity (share of inputs with relative change > {s['options']['threshold']})")
            lines.append(markdown_table([{"layer": a["layer"], "active share": a["active_share"],
                                          "mean change": a["mean_change"]} for a in s["layer_activity"]], ".3f"))
            lines.append(markdown_table([{k: v for k, v in row.items() if k != "layers"} for row in s["skip_layers"]],
                                        ".3f"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
