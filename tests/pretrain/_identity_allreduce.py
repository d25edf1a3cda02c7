"""Run as a script (its own process: DeepSpeed initialises torch.distributed): two ZeRO stage-0 engines on one
rank from the same weights, one with DeepSpeed's gradient all-reduce and one without
(:func:`foundation.pretrain.engine.drop_identity_allreduce`); prints the largest parameter difference after
three steps, and whether the all-reduce ran (counted on the engine)."""
from __future__ import annotations

import copy
import json
import os

import torch


def main() -> None:
    import deepspeed

    from foundation.config import load_recipe
    from foundation.pretrain.components import TrainModule, build_model, build_objective
    from foundation.pretrain.engine import deepspeed_config, drop_identity_allreduce
    from foundation.pretrain.optim import WarmupCosineScheduler, build_optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    recipe = load_recipe("deeperbrain-tiny", ["deepspeed.zero_stage=0"])
    torch.manual_seed(0)
    base = TrainModule(build_model(recipe), build_objective(recipe)).train()
    engines, calls = [], []
    for drop in (False, True):
        module = copy.deepcopy(base)
        cfg = deepspeed_config(recipe)
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=build_optimizer(module, recipe.train),
                                               config=cfg, lr_scheduler=lambda o: WarmupCosineScheduler(o, recipe.train))
        dropped = drop_identity_allreduce(engine) if drop else False
        count = [0]
        inner = engine.allreduce_gradients

        def counted(*args, _inner=inner, _count=count, **kw):
            _count[0] += 1
            return _inner(*args, **kw)

        engine.allreduce_gradients = counted
        engines.append((engine, dropped, count))
    g = torch.Generator().manual_seed(1)
    chan_mask = torch.ones(4, 32, dtype=torch.bool)
    chan_mask[1, 20:] = False
    batches = [{"x": torch.randn(4, 32, 800, generator=g), "pos": torch.randn(4, 32, 3, generator=g) * 0.05,
                "chan_mask": chan_mask, "stats": torch.randn(4, 32, 8, generator=g)} for _ in range(3)]
    for batch in batches:
        for engine, _, _ in engines:
            torch.manual_seed(2)
            loss, _ = engine(batch)
            engine.backward(loss)
            engine.step()
    (a, da, ca), (b, db, cb) = engines
    diff = max(float((p - q).abs().max()) for p, q in zip(a.module.parameters(), b.module.parameters()))
    moved = max(float((p - q).abs().max()) for p, q in zip(a.module.parameters(), base.parameters()))
    print(json.dumps({"diff": diff, "moved": moved, "dropped": [da, db], "allreduce_calls": [ca[0], cb[0]]}))


if __name__ == "__main__":
    main()
