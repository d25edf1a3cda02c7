"""Per-type losses of the multi-task ultrasound model.

- segmentation: Dice + cross-entropy (MONAI ``DiceCELoss``, softmax over classes, one-hot targets);
- classification: cross-entropy;
- detection: objectness BCE on every image (negatives included), GIoU + L1 on the box of positives
  (Rezatofighi et al., "Generalized Intersection over Union", https://arxiv.org/abs/1902.09630);
- keypoints: L1 between soft-argmax coordinates and targets (normalised to the input side).

Defaults (unverified; the published baseline's own weights are not in our reference notes): box L1
weight 5 and GIoU weight 1 follow DETR's ratio; objectness weight 1.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TaskLosses"]


class TaskLosses(nn.Module):
    """Computes one task's loss from its head output and the batch rows of that task.

    Args:
        box_l1_weight: weight of the L1 term of detection (GIoU has weight 1).
        objectness_weight: weight of the objectness BCE.
    """

    def __init__(self, box_l1_weight: float = 5.0, objectness_weight: float = 1.0) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        self.box_l1_weight, self.objectness_weight = box_l1_weight, objectness_weight

    def segmentation(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``logits [n, C, S, S]``, ``mask [n, S, S]`` class indices -> scalar."""
        return self.dice_ce(logits.float(), mask[:, None].long())

    def classification(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``logits [n, C]``, ``label [n]`` -> scalar."""
        return F.cross_entropy(logits.float(), label)

    def detection(self, out: dict[str, torch.Tensor], box: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``out["box"] [n, 4]``, ``out["objectness"] [n]``; ``box [n, 4]`` in [0, 1], ``state [n]`` 1 / 0 -> scalar."""
        from torchvision.ops import generalized_box_iou_loss

        loss = self.objectness_weight * F.binary_cross_entropy_with_logits(out["objectness"].float(), state.float())
        pos = state == 1
        if bool(pos.any()):
            pred, target = out["box"][pos].float(), box[pos].float()
            loss = loss + generalized_box_iou_loss(pred, target, reduction="mean")
            loss = loss + self.box_l1_weight * F.l1_loss(pred, target)
        return loss

    def keypoints(self, out: dict[str, torch.Tensor], points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``out["points"] [n, P_t, 2]``; ``points [n, P, 2]``, ``valid [n, P]`` -> scalar."""
        pred = out["points"].float()
        n_pts = pred.shape[1]
        target, ok = points[:, :n_pts].float(), valid[:, :n_pts]
        return (pred - target).abs().sum(-1)[ok].mean()

    def forward(self, kind: str, out: Any, batch: dict[str, torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """The loss of ``rows`` of ``batch`` for a task of type ``kind``."""
        if kind == "segmentation":
            return self.segmentation(out, batch["mask"][rows])
        if kind == "classification":
            return self.classification(out, batch["label"][rows])
        if kind == "detection":
            return self.detection(out, batch["box"][rows], batch["box_state"][rows])
        return self.keypoints(out, batch["points"][rows], batch["point_valid"][rows])
