"""Loss balancing across tasks: static weights, uncertainty weighting, dynamic weight averaging, GradNorm.

``forward(losses [T], present [T], grad_norms [T] | None)`` returns the total loss of the step and
the weights used. Only tasks present in the batch contribute. Modes:

- ``static``: fixed weights (1 unless set per task) - with all ones this is the uniform baseline.
- ``uncertainty``: Kendall et al., "Multi-Task Learning Using Uncertainty to Weigh Losses",
  https://arxiv.org/abs/1705.07115; one trainable log-variance ``s_t`` per task,
  ``sum exp(-s_t) L_t + s_t`` (the common form with the 1/2 factors folded into ``s_t``).
- ``dwa``: Liu et al., "End-to-End Multi-Task Learning with Attention" (DWA),
  https://arxiv.org/abs/1803.10704; ``w_t = T softmax(r_t / tau)`` with ``r_t`` the ratio of the
  task's mean loss over the last two periods of ``dwa_period`` steps (periods replace the paper's
  epochs, since a step sees few tasks). Period sums are all-reduced across ranks.
- ``gradnorm``: Chen et al., "GradNorm", https://arxiv.org/abs/1711.02257; trainable weights
  ``w = T softmax(a)`` (the softmax keeps the paper's renormalisation to sum T inside the graph).
  With ``G_t = w_t ||dL_t/dF||`` on the shared features F, the paper's
  ``L_grad = sum |G_t - mean(G) (r_t)^alpha|`` (target detached, ``r_t`` the relative inverse
  training rate ``(L_t / L_t(0)) / mean``) is differentiated only with respect to ``w``. Since
  ``w_t`` is a scalar factor, ``d(w_t L_t)/dF = w_t dL_t/dF`` and ``dG_t/dw_t = ||dL_t/dF||``
  exactly, so the per-task norms are computed once without ``create_graph``. The network sees
  ``sum w_t L_t`` with ``w`` detached. Needs several tasks per step (mixed-task batches).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from foundation.errors import ConfigError, TrainingError, did_you_mean

__all__ = ["BALANCING_MODES", "LossBalancer"]

BALANCING_MODES = ("static", "uncertainty", "dwa", "gradnorm")


class LossBalancer(nn.Module):
    """Weights per-task losses into one training loss.

    Args:
        task_ids: the task table order.
        mode: a :data:`BALANCING_MODES` entry.
        static_weights: task id -> weight (static mode; others default to 1).
        dwa_temperature: tau of DWA.
        dwa_period: optimizer steps per DWA period.
        gradnorm_alpha: asymmetry alpha of GradNorm.
    """

    def __init__(self, task_ids: list[str], mode: str = "static", static_weights: Mapping[str, float] | None = None,
                 dwa_temperature: float = 2.0, dwa_period: int = 20, gradnorm_alpha: float = 1.5) -> None:
        super().__init__()
        if mode not in BALANCING_MODES:
            raise ConfigError(f"objective.balancing: unknown mode {mode!r}; {did_you_mean(mode, BALANCING_MODES)}")
        static_weights = dict(static_weights or {})
        bad = [t for t in static_weights if t not in task_ids]
        if bad:
            raise ConfigError(f"objective.static_weights.{bad[0]}: unknown task; {did_you_mean(bad[0], task_ids)}")
        if static_weights and mode != "static":
            raise ConfigError(f"objective.static_weights is set but objective.balancing is {mode!r}; "
                              "use balancing: static or drop the weights")
        T = len(task_ids)
        self.task_ids, self.mode, self.T = list(task_ids), mode, T
        self.dwa_temperature, self.dwa_period, self.alpha = dwa_temperature, dwa_period, gradnorm_alpha
        self.register_buffer("static", torch.tensor([float(static_weights.get(t, 1.0)) for t in task_ids]))
        if mode == "uncertainty":
            self.log_var = nn.Parameter(torch.zeros(T))
        if mode == "gradnorm":
            self.logits = nn.Parameter(torch.zeros(T))
            self.register_buffer("initial_loss", torch.zeros(T))
        if mode == "dwa":
            self.register_buffer("period_sum", torch.zeros(T, dtype=torch.float64))
            self.register_buffer("period_count", torch.zeros(T, dtype=torch.float64))
            self.register_buffer("history", torch.zeros(2, T, dtype=torch.float64))  # [previous, before that]
            self.register_buffer("periods", torch.zeros((), dtype=torch.long))

    def weights(self) -> torch.Tensor:
        """The current weight of every task ``[T]`` (uncertainty: ``exp(-s)``)."""
        if self.mode == "uncertainty":
            return torch.exp(-self.log_var.detach())
        if self.mode == "gradnorm":
            return self.T * self.logits.detach().softmax(0)
        if self.mode == "dwa":
            if int(self.periods) < 2:
                return torch.ones(self.T, device=self.history.device)
            seen = (self.history > 0).all(0)
            ratio = torch.where(seen, self.history[0] / self.history[1].clamp_min(1e-12), torch.ones_like(self.history[0]))
            return (self.T * (ratio / self.dwa_temperature).softmax(0)).float()
        return self.static

    def forward(self, losses: torch.Tensor, present: torch.Tensor,
                grad_norms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Combine ``losses [T]`` (zeros where absent) for tasks with ``present [T]`` True.

        Args:
            losses: per-task losses of this step.
            present: which tasks are in the batch.
            grad_norms: ``||dL_t/dF||`` per task (GradNorm only).

        Returns:
            ``(total loss, weights [T])``.
        """
        p = present.to(losses.dtype)
        if self.mode == "uncertainty":
            s = self.log_var.to(losses.dtype)
            return (p * (torch.exp(-s) * losses + s)).sum(), self.weights()
        if self.mode == "dwa" and self.training:
            with torch.no_grad():
                self.period_sum += (p * losses.detach()).double()
                self.period_count += p.double()
        if self.mode != "gradnorm":
            w = self.weights().to(losses.dtype)
            return (p * w * losses).sum(), w
        if grad_norms is None:
            raise TrainingError("GradNorm needs the per-task gradient norms; the objective did not pass them")
        if int(present.sum()) < 2:
            raise TrainingError("objective.balancing gradnorm: this batch holds one task, GradNorm needs several per "
                                "step; set data.mixed_tasks: true (and a batch size of several images)")
        with torch.no_grad():
            first = present & (self.initial_loss == 0)
            self.initial_loss[first] = losses.detach()[first].to(self.initial_loss.dtype).clamp_min(1e-8)
        w = self.T * self.logits.softmax(0).to(losses.dtype)
        G = w * grad_norms.detach()
        rate = (losses.detach() / self.initial_loss.to(losses.dtype).clamp_min(1e-8))[present]
        r = rate / rate.mean()
        target = (G[present].mean() * r**self.alpha).detach()
        l_grad = (G[present] - target).abs().sum()
        return (p * w.detach() * losses).sum() + l_grad, w.detach()

    def on_step_end(self, step: int) -> None:
        """DWA: close a period every ``dwa_period`` steps (sums all-reduced across ranks)."""
        if self.mode != "dwa" or step % self.dwa_period:
            return
        sums, counts = self.period_sum.clone(), self.period_count.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(counts)
        mean = torch.where(counts > 0, sums / counts.clamp_min(1), self.history[0])
        self.history[1] = self.history[0]
        self.history[0] = mean
        self.periods += 1
        self.period_sum.zero_()
        self.period_count.zero_()
