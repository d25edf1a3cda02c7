"""Shared pieces of the ultrasound tests: a small generated corpus and tiny model/dataset configs."""
from __future__ import annotations

from pathlib import Path

from foundation.modalities.ultrasound.dataset import UltrasoundDatasetConfig, UltrasoundDataset
from foundation.modalities.ultrasound.demo_corpus import make_demo_corpus
from foundation.modalities.ultrasound.model import UltrasoundMTLConfig
from foundation.modalities.ultrasound.tasks import task_table

# one task of each type, plus a left/right task whose flips are unsafe and a 4-class segmentation
TASKS = ("FUGC", "breast_2cls", "fetal_head_pos_cls", "thyroid_nodule_det", "cardiac_multi", "fetal_head")


def make_corpus(root: Path, images_per_task: int = 8) -> Path:
    """Write the demo corpus for :data:`TASKS` (small images) and return its csv_files folder."""
    return make_demo_corpus(root, task_table(TASKS), images_per_task=images_per_task, seed=3, min_size=40,
                            max_size=72)


def data_config(csv_dir: Path, cache: Path, **kw) -> UltrasoundDatasetConfig:
    base = dict(source=str(csv_dir), tasks=TASKS, image_size=64, batch_size=4, cache_dir=str(cache))
    base.update(kw)
    return UltrasoundDatasetConfig(**base)


def prepared(csv_dir: Path, cache: Path, **kw) -> UltrasoundDataset:
    """The dataset of :func:`data_config`, its cache prepared first (as pretrain.py does)."""
    cfg = data_config(csv_dir, cache, **kw)
    UltrasoundDataset.prepare(cfg)
    return UltrasoundDataset(cfg)


def model_config(**kw) -> UltrasoundMTLConfig:
    base = dict(backbone="tinynet_e", tasks=TASKS, fpn_dim=16, head_dim=8)
    base.update(kw)
    return UltrasoundMTLConfig(**base)
