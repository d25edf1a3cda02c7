"""``train.sparsity_every``: activation sparsity of the model over training, written to ``sparsity.jsonl``.

Every N optimizer steps the engine runs :func:`foundation.layers.sparsity.measure_sparsity` over one fixed batch
(the data set's first ``micro_batch_size`` items, the same batch every time, so that the curves follow the weights
and not the data) through the model and its objective in eval mode, and appends one JSON line::

    {"step": s, "layers": {name: {"zero_share": z, "max_abs": m, "near_zero_share": {"0.01": v, ...}}}}

for every registered activation layer that the batch reaches (names as in ``TrainModule.named_modules()``, e.g.
``model.blocks.0.mlp.act``); ``near_zero_share[r]`` is the share of ``|a| <= r * max|a|`` of that layer.
The measurement draws its random numbers (mask sampling of the objective) from a forked generator seeded by
``train.seed``: the training run itself sees the same random stream with and without the log (tested).
The batch is not held out of training: the demo corpora are too small to spare one, and sparsity is a property
of the weights on typical inputs rather than a generalisation score.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foundation.atomic import atomic_write_text
from foundation.data.batch import to_device
from foundation.layers.create_act import get_act_layer
from foundation.layers.sparsity import measure_sparsity
from foundation.registry import ACTIVATIONS

__all__ = ["SparsityLog", "read_sparsity"]

FILE_NAME = "sparsity.jsonl"


class SparsityLog:
    """Measures activation sparsity on a fixed batch; the writing rank appends it.

    Every rank measures (the same batch through the same weights), so that a model whose forward runs
    collectives (ZeRO-3 gathers parameters per module) stays in step on all ranks; only ``writer`` touches the file.

    Args:
        out_dir: the run folder (``sparsity.jsonl`` is appended there).
        dataset: the training data set (``collate`` used when it has one).
        batch_size: items in the fixed batch.
        seed: seed of the forked generator used while measuring.
        device: where the batch goes. float_dtype: dtype of floating inputs (bf16 runs), or None.
        resume_step: drop lines with ``step > resume_step`` (a resumed run); None starts a new file.
        writer: whether this process writes the file (rank 0 of a job).
    """

    def __init__(self, out_dir: str | Path, dataset: Any, batch_size: int, seed: int, device: torch.device,
                 float_dtype: torch.dtype | None = None, resume_step: int | None = None, writer: bool = True) -> None:
        self.path = Path(out_dir) / FILE_NAME
        self.seed, self.device, self.writer = seed, device, writer
        self.modules: list[str] | None = None  # the activation layers the batch reaches, found on first use
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # items may draw numbers
            items = [dataset[i] for i in range(min(batch_size, len(dataset)))]
        collate = getattr(dataset, "collate", None) or torch.utils.data.default_collate
        self.batch = to_device(collate(items), device, float_dtype)
        if writer:
            kept = [r for r in read_sparsity(self.path) if r["step"] <= resume_step] if (
                resume_step is not None and self.path.is_file()) else []
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def _forward(self, module: nn.Module, batch: Any) -> Any:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            loss, _ = module(batch)
        return loss

    def _reached(self, module: nn.Module) -> list[str]:
        """Names of the registered activation layers that the fixed batch reaches (a multi-task model's heads
        of tasks absent from the batch are not called)."""
        acts = tuple({get_act_layer(n) for n in ACTIVATIONS.names()} - {nn.Identity})
        called: list[str] = []
        handles = [m.register_forward_hook(lambda *_a, n=name: called.append(n))
                   for name, m in module.named_modules() if name and isinstance(m, acts)]
        was = module.training
        try:
            module.eval()
            with torch.no_grad():
                self._forward(module, self.batch)
        finally:
            module.train(was)
            for h in handles:
                h.remove()
        return list(dict.fromkeys(called))

    def measure(self, module: nn.Module, step: int) -> dict[str, Any]:
        """Measure ``module`` (the model with its objective, called as ``module(batch)``); the writer appends a line."""
        if self.modules is None:
            self.modules = self._reached(module)
        layers = measure_sparsity(module, [self.batch], modules=self.modules, forward_fn=self._forward)
        record = {"step": step, "layers": {
            name: {"zero_share": s.zero_share, "max_abs": s.max_abs,
                   "near_zero_share": {str(r): v for r, v in s.near_zero_share.items()}}
            for name, s in layers.items()}}
        if self.writer:
            with open(self.path, "a") as f:  # one line per append, as metrics.jsonl
                f.write(json.dumps(record) + "\n")
        return record


def read_sparsity(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``sparsity.jsonl``, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
