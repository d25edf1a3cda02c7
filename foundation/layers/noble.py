"""NOBLE: a linear layer plus a low-rank nonlinear CosNet branch.

NOBLE (a nonlinear low-rank branch added to every linear layer of a transformer;
paper citation unverified) computes

    y = W x + b + W_up CosNet(W_down x)
    CosNet(h) = cos(w2 * (W_mid cos(w1 * h + p1) + b_mid) + p2)

with rank r (default 32). Initialisation (the NOBLE recipe; unverified): W_up ~ N(0, (0.01/sqrt r)^2)
so the branch starts near zero; W_mid ~ N(0, (0.5/sqrt r)^2); w1, w2 ~ U[0.8, 1.2];
p1, p2 ~ N(0, 0.1^2). W_down takes nn.Linear's default init and b_mid starts at 0
(both unverified). The branch may train with its own learning-rate multiplier:
:func:`noble_param_groups` builds the optimizer groups.

:func:`apply_noble` turns chosen ``nn.Linear`` modules of a model into
:class:`NobleLinear` in place, keeping their weight and bias tensors; it checks
every target before changing anything.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from foundation.errors import ConfigError

__all__ = ["NobleLinear", "apply_noble", "branch_parameters", "noble_param_groups"]

BRANCH_PREFIX = "noble_"


class NobleLinear(nn.Linear):
    """``nn.Linear`` plus the NOBLE CosNet low-rank branch.

    Args:
        in_features: D_in.
        out_features: D_out.
        bias: bias of the main linear map.
        rank: r, the branch width; 1 <= r <= min(D_in, D_out).
        device: parameter device.
        dtype: parameter dtype.

    Raises:
        ConfigError: rank outside [1, min(D_in, D_out)].
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int = 32,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        _check_rank(rank, in_features, out_features, "NobleLinear")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.rank = rank
        kw = {"device": device, "dtype": dtype}
        self.noble_down = nn.Linear(in_features, rank, bias=False, **kw)
        self.noble_mid = nn.Linear(rank, rank, bias=True, **kw)  # bias = b_mid
        self.noble_up = nn.Linear(rank, out_features, bias=False, **kw)
        self.noble_w1 = nn.Parameter(torch.empty(rank, **kw))
        self.noble_p1 = nn.Parameter(torch.empty(rank, **kw))
        self.noble_w2 = nn.Parameter(torch.empty(rank, **kw))
        self.noble_p2 = nn.Parameter(torch.empty(rank, **kw))
        self.reset_branch()

    def reset_branch(self) -> None:
        """Initialise the branch as the module docstring gives (the branch output starts near zero)."""
        r = self.rank
        self.noble_down.reset_parameters()
        nn.init.normal_(self.noble_mid.weight, std=0.5 / math.sqrt(r))
        nn.init.zeros_(self.noble_mid.bias)
        nn.init.normal_(self.noble_up.weight, std=0.01 / math.sqrt(r))
        for w in (self.noble_w1, self.noble_w2):
            nn.init.uniform_(w, 0.8, 1.2)
        for p in (self.noble_p1, self.noble_p2):
            nn.init.normal_(p, std=0.1)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The CosNet branch alone: x [..., D_in] -> [..., D_out]."""
        h = torch.cos(self.noble_w1 * self.noble_down(x) + self.noble_p1)  # [..., r]
        h = torch.cos(self.noble_w2 * self.noble_mid(h) + self.noble_p2)  # [..., r]
        return self.noble_up(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = W x + b + branch(x): [..., D_in] -> [..., D_out]."""
        return super().forward(x) + self.branch(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


def _check_rank(rank: int, d_in: int, d_out: int, where: str) -> None:
    if not isinstance(rank, int) or not 1 <= rank <= min(d_in, d_out):
        raise ConfigError(
            f"{where}: rank must be an integer in [1, min(in_features, out_features)] = [1, {min(d_in, d_out)}] "
            f"for a {d_in} -> {d_out} layer, got {rank!r}; lower the rank"
        )


def _matches(name: str, targets: str | Sequence[str]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_noble(model: nn.Module, targets: str | Sequence[str], rank: int = 32) -> list[str]:
    """Replace matching ``nn.Linear`` modules by :class:`NobleLinear`, in place.

    The replacement reuses the original weight and bias Parameters, so the output
    changes only by the near-zero branch (and optimizers holding those tensors
    still see them). Every target is checked before the model is touched.

    Args:
        model: the model to modify.
        targets: a regular expression matched against the full module name
            (``re.fullmatch``, e.g. ``r"blocks\\.\\d+\\.mlp\\.fc\\d"``), or a list of
            name suffixes matched at a dot boundary (e.g. ``["qkv", "fc1"]``, as in peft).
        rank: branch rank r for every replaced layer.

    Returns:
        The names of the replaced modules, in model order.

    Raises:
        ConfigError: no ``nn.Linear`` matches (the message repeats the targets),
            a match is already a NobleLinear, or rank > min(D_in, D_out) for a match.
    """
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as err:
            raise ConfigError(f"apply_noble: targets {targets!r} is not a valid regular expression: {err}") from err
    elif not targets or not all(isinstance(t, str) for t in targets):
        raise ConfigError(f"apply_noble: targets must be a regex string or a non-empty list of names, got {targets!r}")
    found = [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.Linear) and _matches(n, targets)]
    if not found:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        shown = ", ".join(linears[:12]) + (" ..." if len(linears) > 12 else "")
        raise ConfigError(
            f"apply_noble: targets {targets!r} match no nn.Linear module of {type(model).__name__}; "
            f"its linear modules are: {shown or '(none)'}"
        )
    for name, mod in found:
        if isinstance(mod, NobleLinear):
            raise ConfigError(f"apply_noble: module {name!r} is already a NobleLinear; narrow the targets")
        _check_rank(rank, mod.in_features, mod.out_features, f"apply_noble, module {name!r}")
    for name, mod in found:
        w = mod.weight
        new = NobleLinear(mod.in_features, mod.out_features, mod.bias is not None, rank, w.device, w.dtype)
        new.weight = mod.weight
        new.bias = mod.bias
        new.train(mod.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return [n for n, _ in found]


def noble_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float = 0.0,
    branch_lr_mult: float = 1.0,
    branch_weight_decay: float | None = None,
) -> list[dict]:
    """Optimizer parameter groups giving NOBLE branches their own learning rate.

    Four groups (empty ones left out): base weights (decay), base biases and
    1-D parameters (no decay), branch matrices (decay ``branch_weight_decay``),
    branch vectors (w, p, b_mid; no decay). Branch groups carry
    ``lr = base_lr * branch_lr_mult`` as a real learning rate and
    ``lr_scale = branch_lr_mult``; as the multiplier is baked into ``lr`` (and so
    into the scheduler's ``initial_lr``), a LambdaLR keeps the ratio.

    Args:
        model: a model holding NobleLinear modules (others are fine too).
        base_lr: learning rate of the non-branch parameters.
        weight_decay: decay of the non-branch weight matrices.
        branch_lr_mult: learning-rate multiplier of the branch (unverified default 1.0).
        branch_weight_decay: decay of the branch matrices; defaults to ``weight_decay``.

    Returns:
        A list of dicts for ``torch.optim.AdamW(groups)`` and friends.

    Raises:
        ConfigError: a non-positive learning rate or multiplier, or a negative decay.
    """
    if base_lr <= 0 or branch_lr_mult <= 0:
        raise ConfigError(
            f"noble_param_groups: base_lr and branch_lr_mult must be > 0, got {base_lr}, {branch_lr_mult}"
        )
    bwd = weight_decay if branch_weight_decay is None else branch_weight_decay
    if weight_decay < 0 or bwd < 0:
        raise ConfigError(f"noble_param_groups: weight decays must be >= 0, got {weight_decay}, {bwd}")
    buckets: dict[str, list[nn.Parameter]] = {k: [] for k in ("base", "base_no_decay", "branch", "branch_no_decay")}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        branch = any(part.startswith(BRANCH_PREFIX) for part in name.split("."))
        key = ("branch" if branch else "base") + ("" if p.ndim >= 2 else "_no_decay")
        buckets[key].append(p)
    blr = base_lr * branch_lr_mult
    spec = {
        "base": {"lr": base_lr, "weight_decay": weight_decay, "lr_scale": 1.0},
        "base_no_decay": {"lr": base_lr, "weight_decay": 0.0, "lr_scale": 1.0},
        "branch": {"lr": blr, "weight_decay": bwd, "lr_scale": branch_lr_mult},
        "branch_no_decay": {"lr": blr, "weight_decay": 0.0, "lr_scale": branch_lr_mult},
    }
    return [{"name": k, "params": ps, **spec[k]} for k, ps in buckets.items() if ps]


def branch_parameters(module: nn.Module) -> Iterable[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs of every NOBLE branch in ``module``."""
    return ((n, p) for n, p in module.named_parameters() if any(s.startswith(BRANCH_PREFIX) for s in n.split(".")))
