"""One real micro-batch of each shipped tiny recipe's generated demo data (small corpora, built in a temporary
folder: about 4 s each), and the recipe's model + objective as DeepSpeed wraps them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from foundation.config import load_recipe
from foundation.pretrain.components import TrainModule, build_components, build_model, build_objective

RECIPES = ("deeperbrain-tiny", "slim-brain-tiny", "ultrasound-mtl-tiny")
SMALL_DATA = {
    "deeperbrain-tiny": ("data.demo.n_subjects=3", "data.demo.blocks_per_class=1"),
    "slim-brain-tiny": ("data.demo_subjects=4", "data.demo_frames=48", "data.top_k=2"),
    "ultrasound-mtl-tiny": ("data.demo_images_per_task=2",),
}


def real_batch(recipe_name: str, cache: Path) -> dict[str, Any]:
    """The first micro-batch (seeded shuffle) of the recipe's demo data, cached under ``cache``."""
    recipe = load_recipe(recipe_name, [*SMALL_DATA[recipe_name], f"data.cache_dir={cache}"])
    ds = build_components(recipe, prepare=True).dataset
    loader = DataLoader(ds, batch_size=recipe.train.micro_batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0), collate_fn=getattr(ds, "collate", None))
    return next(iter(loader))


def train_module(recipe_name: str) -> TrainModule:
    """The recipe's model and objective (seed 0), in training mode."""
    recipe = load_recipe(recipe_name)
    torch.manual_seed(0)
    return TrainModule(build_model(recipe), build_objective(recipe)).train()
