"""Fine-tuning: probes on frozen features, full fine-tuning with layer-wise LR decay, LoRA and Dopamine runs."""
from foundation.finetune.features import encode, extract_features, feature_kwargs, pool_tokens, split_batch
from foundation.finetune.llrd import depths_by_order, layerwise_lr_groups
from foundation.eval.metrics import classification_metrics, regression_metrics
from foundation.eval.probe import ProbeResult, fit_probe
from foundation.eval.report import markdown_table, save_confusion_matrix, save_pred_vs_true
from foundation.data.splits import group_split
from foundation.finetune.task_model import Supervised, SupervisedConfig, TaskModel, TaskModelConfig, predict

__all__ = [
    "encode", "extract_features", "feature_kwargs", "pool_tokens", "split_batch", "depths_by_order",
    "layerwise_lr_groups", "predict",
    "classification_metrics", "regression_metrics", "ProbeResult", "fit_probe", "markdown_table",
    "save_confusion_matrix", "save_pred_vs_true", "group_split", "Supervised", "SupervisedConfig", "TaskModel",
    "TaskModelConfig",
]
