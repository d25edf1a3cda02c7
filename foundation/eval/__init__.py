"""Evaluation: metrics, probes on frozen features, reports (tables, confusion matrices, plots)."""
from __future__ import annotations

from foundation.eval.metrics import classification_metrics, regression_metrics
from foundation.eval.probe import ProbeResult, fit_probe
from foundation.eval.report import markdown_table, save_confusion_matrix, save_pred_vs_true

__all__ = ["classification_metrics", "regression_metrics", "ProbeResult", "fit_probe", "markdown_table",
           "save_confusion_matrix", "save_pred_vs_true"]
