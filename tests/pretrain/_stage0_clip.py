"""Run as a script on one or more ranks (its own processes: DeepSpeed initialises torch.distributed): two ZeRO
stage-0 DeepSpeed engines of DeeperBrain-tiny from the same weights, one clipping with DeepSpeed's own
``clip_grad_norm_`` (the recipe's config) and one as :class:`foundation.pretrain.engine.Engine` does at stage 0
(``split_clipping``: DeepSpeed gets ``gradient_clipping: 0``, :class:`StageZeroClip` clips after ``backward`` at the
accumulation boundary). Gradient accumulation 2 and a max norm small enough that every step clips. Rank 0 prints
the largest parameter difference after the steps, how far the weights moved, DeepSpeed's norms (the value its
``clip_grad_norm_`` returns, captured) and ours, per optimizer step."""
from __future__ import annotations

import copy
import json
import os

import torch


def main() -> None:
    import deepspeed
    from deepspeed.runtime.utils import clip_grad_norm_ as ds_clip_grad_norm_

    from foundation.config import load_recipe
    from foundation.pretrain.components import TrainModule, build_model, build_objective
    from foundation.pretrain.engine import deepspeed_config, drop_identity_allreduce
    from foundation.pretrain.grad_clip import StageZeroClip, split_clipping
    from foundation.pretrain.optim import WarmupCosineScheduler, build_optimizer

    if "RANK" not in os.environ:  # one rank, plain python
        os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    rank = int(os.environ["RANK"])
    recipe = load_recipe("deeperbrain-tiny", ["deepspeed.zero_stage=0", "deepspeed.gradient_accumulation_steps=2",
                                              "deepspeed.gradient_clipping=0.05"])
    torch.manual_seed(0)
    base = TrainModule(build_model(recipe), build_objective(recipe)).train()
    cfg = deepspeed_config(recipe)
    ours_cfg, max_norm = split_clipping(cfg)
    assert max_norm == 0.05 and ours_cfg["gradient_clipping"] == 0.0 and cfg["gradient_clipping"] == 0.05
    runs = []
    for config in (cfg, ours_cfg):
        module = copy.deepcopy(base)
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=build_optimizer(module, recipe.train),
                                               config=config, lr_scheduler=lambda o: WarmupCosineScheduler(o, recipe.train))
        drop_identity_allreduce(engine)
        norms: list[float] = []
        if config is cfg:  # record the norm DeepSpeed's own clipping computes (its engine keeps none at stage 0)
            def clip(engine=engine, norms=norms):
                norms.append(float(ds_clip_grad_norm_(parameters=engine.module.parameters(),
                                                      max_norm=engine.gradient_clipping(), mpu=engine.mpu)))
            engine.clip_fp32_gradients = clip
            clipper = None
        else:
            clipper = StageZeroClip(engine.module, max_norm)
        runs.append((engine, clipper, norms))
    g = torch.Generator().manual_seed(1 + rank)  # every rank its own data
    chan_mask = torch.ones(4, 32, dtype=torch.bool)
    chan_mask[1, 20:] = False
    batches = [{"x": torch.randn(4, 32, 800, generator=g), "pos": torch.randn(4, 32, 3, generator=g) * 0.05,
                "chan_mask": chan_mask, "stats": torch.randn(4, 32, 8, generator=g)} for _ in range(6)]
    for i, batch in enumerate(batches):  # 6 micro-steps = 3 optimizer steps
        for engine, clipper, norms in runs:
            torch.manual_seed(100 * i + rank)
            loss, _ = engine(batch)
            engine.backward(loss)
            if clipper is not None and engine.is_gradient_accumulation_boundary():
                norms.append(float(clipper()))
            engine.step()
    (a, _, ds_norms), (b, _, our_norms) = runs
    diff = max(float((p - q).detach().abs().max()) for p, q in zip(a.module.parameters(), b.module.parameters()))
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(a.module.parameters(), base.parameters()))
    if rank == 0:
        print(json.dumps({"diff": diff, "moved": moved, "ds_norms": ds_norms, "our_norms": our_norms,
                          "ds_engine_norm": a.get_global_grad_norm(), "world": int(os.environ["WORLD_SIZE"])}))


if __name__ == "__main__":
    main()
