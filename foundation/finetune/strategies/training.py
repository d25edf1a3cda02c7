"""What the trained strategies (``full`` and ``adapter``) share: the LP-FT head start, the engine run,
held-out prediction and the model card."""
from __future__ import annotations

import json

import torch
from torch import nn

from foundation.finetune.features import extract_features
from foundation.finetune.strategies.base import FinetuneJob
from foundation.finetune.task_model import head_linear, predict

__all__ = ["card_info", "init_head_from_probe", "predict_held_out", "train_with_engine"]


def init_head_from_probe(job: FinetuneJob) -> None:
    """LP-FT (Kumar et al., 2022, https://arxiv.org/abs/2202.10054): set the new head to a linear probe of the
    frozen features of ``job.train``.

    Fine-tuning then starts from the probe's solution instead of first pulling the pretrained features
    towards a random head. The probe's standardisation is folded into the head (``ProbeResult.as_linear``),
    so the head reads the encoder's pooled features ``[B, D]`` as they are. A class missing from the
    training split keeps a zero weight row and a bias 10 below the smallest (it is never predicted,
    as with a probe that never saw it).
    """
    model = job.model
    X, y = extract_features(model.encoder, job.loader(job.train), pool=model.config.pool,
                            progress="LP-FT head start: frozen features", **job.keys)
    lin = job.fit_probe(X, y, X, y, kind="linear").as_linear()
    with torch.no_grad():
        head = head_linear(model)
        n = lin.weight.shape[0]
        head.weight.zero_()
        head.bias.fill_(float(lin.bias.min()) - 10.0)
        head.weight[:n].copy_(lin.weight)
        head.bias[:n].copy_(lin.bias)


def train_with_engine(job: FinetuneJob, module: nn.Module) -> None:
    """Train ``module`` on ``job.train`` with the DeepSpeed engine under the recipe's train/deepspeed sections.

    The engine's warmup-cosine schedule scales every optimizer group (a module's ``param_groups`` keep their
    ``lr_scale``); ``module.on_step_end(step)``, when defined, runs after every optimizer step.
    """
    from foundation.pretrain.engine import Engine

    monitor = HeldOutMonitor(job, module)
    if hasattr(module, "on_step_end"):
        module.on_step_end = monitor.wrap(module.on_step_end)  # the instance's hook: the method's, then ours
    else:
        module.on_step_end = monitor.wrap(None)
    monitor.evaluate(0)
    module.train()  # frozen batch norms stay in eval mode (TaskModel.train)
    try:
        Engine(job.recipe, job.out / "run", model=module, dataset=job.train).run()
    finally:
        del module.on_step_end
    monitor.write(job.out / "finetune_curves.png")


class HeldOutMonitor:
    """Held-out loss and score every ``steps // 10`` optimizer steps (monitoring only: nothing is selected on
    them), drawn with the training loss of ``run/metrics.jsonl`` into ``finetune_curves.png``.

    Every rank runs the forward passes (collective under ZeRO-3); rank 0 writes.
    """

    def __init__(self, job: FinetuneJob, module: nn.Module) -> None:
        self.job, self.module = job, module
        self.every = max(1, job.recipe.train.steps // 10)
        self.points: list[tuple[int, float, float]] = []  # (step, held-out loss, balanced accuracy or -MAE)

    def wrap(self, hook):
        def on_step_end(step: int) -> None:
            if hook is not None:
                hook(step)
            if step % self.every == 0 or step == self.job.recipe.train.steps:
                self.evaluate(step)
        return on_step_end

    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        from foundation.eval.metrics import classification_metrics, regression_metrics

        was_training = self.module.training
        out, y = predict(self.module, self.job.loader(self.job.test), self.job.task, **self.job.keys)
        self.module.train(was_training)
        y = y.to(out.device)
        if self.job.task == "classification":
            loss = float(nn.functional.nll_loss(out.clamp_min(1e-12).log(), y.long()))
            score = classification_metrics(y.cpu(), out.cpu())["balanced_accuracy"]
        else:
            loss = float(nn.functional.mse_loss(out, y.float()))
            score = -regression_metrics(y.cpu(), out.cpu())["mae"]
        self.points.append((step, loss, float(score)))

    def write(self, path) -> None:
        from foundation.adapters.state import is_writer_rank
        from foundation.eval.report import save_finetune_curves
        from foundation.pretrain.run_log import read_jsonl

        if not is_writer_rank() or not self.points:
            return
        log = self.job.out / "run" / "metrics.jsonl"
        train = [(r["step"], r["loss"]) for r in read_jsonl(log)] if log.is_file() else []
        score = "balanced accuracy" if self.job.task == "classification" else "-MAE"
        save_finetune_curves(train, self.points, path, score_name=score,
                             title=f"{self.job.opts.method} on {self.job.recipe.name}")


def predict_held_out(job: FinetuneJob, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``module``'s held-out outputs and labels (see :func:`~foundation.finetune.task_model.predict`)."""
    return predict(module, job.loader(job.test), job.task, **job.keys)


def card_info(job: FinetuneJob, metrics: dict[str, float]):
    """The model card of a fine-tuned model or adapter."""
    from foundation.hub import ModelCardInfo

    cfg = job.model.config
    data = job.recipe.data.name
    classes = f"Classes, in output order: {', '.join(cfg.class_names)}.\n\n" if cfg.class_names else ""
    summary = (f"{classes}Data set `{data}` read with this configuration (the preprocessing the model expects):"
               f"\n\n```json\n{json.dumps(job.recipe.data.to_dict(), indent=2, default=str)}\n```")
    return ModelCardInfo(description=f"{job.opts.method} fine-tune of {job.base or 'an in-memory encoder'} "
                                     f"({cfg.task}, {cfg.num_outputs} outputs); metrics on the held-out subjects.",
                         tags=("fine-tuned", job.opts.method), metrics=metrics, base_model=job.base or None,
                         dataset_name=f"{data} (held-out subjects)", task_type=cfg.task, datasets=(data,),
                         pipeline_tag="other", data_summary=summary, preprocessing=dict(cfg.preprocessing))
