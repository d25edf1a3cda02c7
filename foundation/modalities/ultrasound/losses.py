"""Per-type losses of the multi-task ultrasound model.

- segmentation: Dice + cross-entropy (as MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)``: softmax over
  classes, one-hot targets, smooth 1e-5, mean over images and classes; :func:`dice_ce_loss`);
- classification: cross-entropy;
- detection: objectness BCE on every image (negatives included), GIoU + L1 on the box of positives
  (Rezatofighi et al., "Generalized Intersection over Union", https://arxiv.org/abs/1902.09630;
  :func:`giou_loss`, as torchvision's ``generalized_box_iou_loss``);
- keypoints: L1 between soft-argmax coordinates and targets (normalised to the input side).

The Dice and GIoU terms are written here, with no host read and no data-dependent shape, so that a compiled
training step stays one graph (MONAI's Dice loss reads its reduction axes back from a tensor, torchvision's
GIoU indexes with a boolean mask); tests compare both with the libraries.

Defaults (unverified; the published baseline's own weights are not in our reference notes): box L1
weight 5 and GIoU weight 1 follow DETR's ratio; objectness weight 1.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TaskLosses", "dice_ce_loss", "giou_loss"]


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice (softmax, one-hot target) + cross-entropy: ``logits [n, C, *S]``, ``target [n, *S]`` class
    indices in [0, C) -> scalar; the same operations in the same order as MONAI's ``DiceCELoss(to_onehot_y=True,
    softmax=True)`` with its defaults."""
    prob = logits.softmax(1)
    onehot = torch.zeros_like(prob).scatter_(1, target[:, None].long(), 1)  # [n, C, *S]
    dims = list(range(2, logits.dim()))  # the spatial axes
    tp = (prob * onehot).sum(dims)  # [n, C]
    fp = (prob.sum(dims) - tp) * 0.5
    fn = (onehot.sum(dims) - tp) * 0.5
    dice = (1 - (2 * tp + smooth) / (2 * (tp + fp + fn) + smooth)).mean()
    return dice + F.cross_entropy(logits, target.long())


def giou_loss(boxes: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - generalised IoU per box pair: ``boxes [n, 4]``, ``target [n, 4]`` as (x1, y1, x2, y2) -> ``[n]``
    (torchvision's ``generalized_box_iou_loss(reduction="none")``, the intersection by ``torch.where``)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    x1g, y1g, x2g, y2g = target.unbind(-1)
    xk1, yk1, xk2, yk2 = torch.max(x1, x1g), torch.max(y1, y1g), torch.min(x2, x2g), torch.min(y2, y2g)
    overlap = (yk2 > yk1) & (xk2 > xk1)
    inter = torch.where(overlap, (xk2 - xk1) * (yk2 - yk1), torch.zeros_like(x1))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    area_c = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    return 1 - (iou - (area_c - union) / (area_c + eps))


class TaskLosses(nn.Module):
    """Computes one task's loss from its head output and the batch rows of that task.

    Args:
        box_l1_weight: weight of the L1 term of detection (GIoU has weight 1).
        objectness_weight: weight of the objectness BCE.
    """

    def __init__(self, box_l1_weight: float = 5.0, objectness_weight: float = 1.0) -> None:
        super().__init__()
        self.box_l1_weight, self.objectness_weight = box_l1_weight, objectness_weight

    def segmentation(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``logits [n, C, S, S]``, ``mask [n, S, S]`` class indices -> scalar."""
        return dice_ce_loss(logits.float(), mask)

    def classification(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``logits [n, C]``, ``label [n]`` -> scalar."""
        return F.cross_entropy(logits.float(), label)

    def detection(self, out: dict[str, torch.Tensor], box: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``out["box"] [n, 4]``, ``out["objectness"] [n]``; ``box [n, 4]`` in [0, 1], ``state [n]`` 1 / 0 -> scalar."""
        loss = self.objectness_weight * F.binary_cross_entropy_with_logits(out["objectness"].float(), state.float())
        pos = state == 1
        # box terms averaged over the positives, computed on every row and masked (shape-static: no host read
        # of how many rows are positive); a batch without positives adds 0
        unit = torch.tensor([0.0, 0.0, 1.0, 1.0], device=box.device)  # negatives' rows: a valid box against itself
        pred = torch.where(pos[:, None], out["box"].float(), unit)
        target = torch.where(pos[:, None], box.float(), unit)
        per_row = (giou_loss(pred, target)
                   + self.box_l1_weight * (pred - target).abs().mean(-1))  # [n]
        return loss + torch.where(pos, per_row, 0.0).sum() / pos.sum().clamp(min=1)

    def keypoints(self, out: dict[str, torch.Tensor], points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``out["points"] [n, P_t, 2]``; ``points [n, P, 2]``, ``valid [n, P]`` -> scalar."""
        pred = out["points"].float()
        n_pts = pred.shape[1]
        ok = valid[:, :n_pts].bool()
        target = torch.where(ok[..., None], points[:, :n_pts].float(), pred.detach())  # invalid points add 0
        dist = (pred - target).abs().sum(-1)  # [n, P_t]
        return torch.where(ok, dist, 0.0).sum() / ok.sum()  # the mean over valid points (shape-static)

    def forward(self, kind: str, out: Any, batch: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """The loss of ``rows`` of ``batch`` for a task of type ``kind``."""
        if kind == "segmentation":
            return self.segmentation(out, batch["mask"][rows])
        if kind == "classification":
            return self.classification(out, batch["label"][rows])
        if kind == "detection":
            return self.detection(out, batch["box"][rows], batch["box_state"][rows])
        return self.keypoints(out, batch["points"][rows], batch["point_valid"][rows])
