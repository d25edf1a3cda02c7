"""Relevance patching (RelP), attribution patching and activation patching of a DeeperBrain fine-tune.

Components are the outputs of every attention head (``L{l}.head{h}``: the head's value mix ``[N, Dh]``), every
block's MLP hidden units (``L{l}.mlp.n{j}``: ``act(fc1(.))`` of unit j at all tokens) and, summed over those,
whole layers. A class contrast is a pair of windows (clean of class a, corrupted of class b, same recording)
and the metric ``m = logit_a - logit_b`` of the fine-tune's head on the mean-pooled features.

- **Activation patching** (ground truth): run the corrupted window with one component set to its clean
  value; effect = m(patched) - m(corrupted). One forward per component.
- **Attribution patching** (Nanda 2023, AtP): effect ~ (a_clean - a_corr) . dm/da at the corrupted run
  (a first-order Taylor estimate; two forwards and one backward for every component at once).
- **RelP** (Jafari et al. 2025, "RelP: Faithful and Efficient Circuit Discovery via Relevance Patching"):
  the same product with the LRP relevance coefficients in place of the gradient. They are the gradient of
  the forward pass with the LRP-for-transformers rules (Ali et al. 2022; Achtibat et al. 2024): the LN
  rule (the standard deviation of every LayerNorm held constant), the AH rule (attention probabilities
  held constant), the identity rule for the MLP activation (``act(h) = h * (act(h) / h)`` with the ratio
  held constant). Still two forwards and one backward.

The forward pass here is a dense re-statement of DeeperBrain's (one sample, every real token) that reads the
model's own modules; :func:`logits` without rules equals the model's output (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from foundation.errors import ConfigError

__all__ = ["PatchingResult", "component_effects", "logits", "patching_study"]


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor, rules: bool) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    std = (x.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return (x - mean) / (std.detach() if rules else std) * norm.weight + norm.bias


def _act(mlp: nn.Module, h: torch.Tensor, rules: bool) -> torch.Tensor:
    a = mlp.act(h)
    if not rules:
        return a
    safe = torch.where(h.abs() < 1e-6, torch.full_like(h, 1e-6), h)
    return h * (a / safe).detach()


def _encoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    from foundation.finetune.task_model import head_linear
    from foundation.loading import task_model_of

    task = task_model_of(model)
    if task is None or not hasattr(task.encoder, "tokens") or task.config.pool != "mean":
        raise ConfigError("relevance patching needs a DeeperBrain fine-tune with mean pooling (a head to contrast "
                          "classes); fine-tune the encoder first")
    return task.encoder, head_linear(task)


def logits(model: nn.Module, x: torch.Tensor, pos: torch.Tensor, chan_mask: torch.Tensor, rules: bool = False,
           patch: dict[str, torch.Tensor] | None = None, record: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """One window through the encoder and head, densely: ``x [C, T]`` -> logits ``[K]``.

    Args:
        rules: apply the LRP rules (LN, AH, identity) so that gradients are relevance coefficients.
        patch: component activations to substitute (``L{l}.heads [H, N, Dh]``, ``L{l}.mlp [N, hidden]``), with
            a boolean selector under ``<name>.select`` (same shape, True = take the patched value).
        record: filled with every component activation (for gradients, they keep their graph).
    """
    enc, head = _encoder_and_head(model)
    tok = enc.tokens(x[None], pos[None], chan_mask[None])[0]  # [N, D]
    P = x.shape[-1] // enc.config.patch_size
    h = tok[enc.valid_tokens(chan_mask[None], P)[0]]  # real channels' tokens [N', D]
    for i, blk in enumerate(enc.blocks):
        att = blk.attn
        N = h.shape[0]
        qkv = att.qkv(_layer_norm(blk.norm1, h, rules)).reshape(N, 3, att.num_heads, att.head_dim)
        q, k, v = (t.transpose(0, 1) for t in qkv.unbind(1))  # 3 x [H, N, Dh]
        probs = (q @ k.transpose(1, 2) * att.scale).softmax(-1)  # [H, N, N]
        heads = (probs.detach() if rules else probs) @ v  # [H, N, Dh]
        heads = _substitute(f"L{i}.heads", heads, patch, record)
        h = h + att.proj(heads.transpose(0, 1).reshape(N, -1))  # [H, N, Dh] -> [N, D]
        pre = blk.mlp.fc1(_layer_norm(blk.norm2, h, rules))
        hidden = _substitute(f"L{i}.mlp", _act(blk.mlp, pre, rules), patch, record)
        h = h + blk.mlp.fc2(blk.mlp.norm(hidden))
    feats = _layer_norm(enc.norm, h, rules).mean(0)  # [N', D] -> [D]
    return head(feats)


def _substitute(name: str, value: torch.Tensor, patch: dict | None, record: dict | None) -> torch.Tensor:
    if patch is not None and name in patch:
        value = torch.where(patch[name + ".select"], patch[name], value)
    if record is not None:
        record[name] = value
    return value


@dataclass
class PatchingResult:
    """Per component (names in order): activation-patching, attribution-patching and RelP effects."""

    names: list[str]
    activation: np.ndarray
    attribution: np.ndarray
    relp: np.ndarray


def _components(acts: dict[str, torch.Tensor]) -> list[tuple[str, str, tuple]]:
    """(component name, activation key, index) for every head and MLP unit."""
    out = []
    for key, a in acts.items():
        layer = key.split(".")[0]
        if key.endswith("heads"):
            out += [(f"{layer}.head{h}", key, (h,)) for h in range(a.shape[0])]
        else:
            out += [(f"{layer}.mlp.n{j}", key, (slice(None), j)) for j in range(a.shape[1])]
    return out


def component_effects(model: nn.Module, clean: dict[str, torch.Tensor], corrupt: dict[str, torch.Tensor],
                      a: int, b: int) -> PatchingResult:
    """Effects of every component on ``m = logit_a - logit_b`` when patched from ``clean`` into ``corrupt``.

    Args:
        clean, corrupt: one window each (``x [C, T]``, ``pos [C, 3]``, ``chan_mask [C]``, same channels).
    """
    if not torch.equal(clean["chan_mask"], corrupt["chan_mask"]):
        raise ConfigError("relevance patching: the clean and corrupted windows must share their channels (take "
                          "both from one recording)")
    args = lambda w: (w["x"], w["pos"], w["chan_mask"])
    with torch.no_grad():
        acts_clean: dict[str, torch.Tensor] = {}
        logits(model, *args(clean), record=acts_clean)
        acts_corr: dict[str, torch.Tensor] = {}
        out = logits(model, *args(corrupt), record=acts_corr)
        base = float(out[a] - out[b])
    grads = {}
    for rules in (False, True):
        rec: dict[str, torch.Tensor] = {}
        out = logits(model, *args(corrupt), rules=rules, record=rec)
        keys = list(rec)
        g = torch.autograd.grad(out[a] - out[b], [rec[k] for k in keys])
        grads[rules] = dict(zip(keys, g))
    names, act, atp, relp = [], [], [], []
    with torch.no_grad():
        for name, key, idx in _components(acts_corr):
            diff = (acts_clean[key] - acts_corr[key])[idx]
            atp.append(float((diff * grads[False][key][idx]).sum()))
            relp.append(float((diff * grads[True][key][idx]).sum()))
            select = torch.zeros_like(acts_corr[key], dtype=torch.bool)
            select[idx] = True
            patched = logits(model, *args(corrupt), patch={key: acts_clean[key], key + ".select": select})
            act.append(float(patched[a] - patched[b]) - base)
            names.append(name)
    return PatchingResult(names, np.array(act), np.array(atp), np.array(relp))


def patching_study(model: nn.Module, pairs: list[tuple[dict, dict, int, int]]) -> dict[str, float]:
    """Pearson r of attribution patching and of RelP against activation patching, pooled over pairs.

    Returns:
        ``{"pearson_atp", "pearson_relp", "pearson_atp_heads", "pearson_relp_heads", "pearson_atp_neurons",
        "pearson_relp_neurons", "n_components", "n_pairs"}``.
    """
    from scipy.stats import pearsonr

    results = [component_effects(model, *p) for p in pairs]
    names = results[0].names
    act = np.concatenate([r.activation for r in results])
    atp = np.concatenate([r.attribution for r in results])
    relp = np.concatenate([r.relp for r in results])
    heads = np.concatenate([[".head" in n for n in r.names] for r in results])
    r = lambda u, v: float(pearsonr(u, v)[0]) if np.std(u) > 0 and np.std(v) > 0 else float("nan")
    return {"pearson_atp": r(atp, act), "pearson_relp": r(relp, act),
            "pearson_atp_heads": r(atp[heads], act[heads]), "pearson_relp_heads": r(relp[heads], act[heads]),
            "pearson_atp_neurons": r(atp[~heads], act[~heads]), "pearson_relp_neurons": r(relp[~heads], act[~heads]),
            "n_components": len(names), "n_pairs": len(pairs)}
