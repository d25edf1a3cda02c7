"""Fine-tuning: strategies (probes on frozen features, full fine-tuning with layer-wise LR decay, adapters)
and the runner that orchestrates them (:func:`run_finetune`, :func:`finetune_model`)."""
from foundation.finetune.features import encode, extract_features, feature_kwargs, pool_tokens, split_batch
from foundation.finetune.llrd import depths_by_order, layerwise_lr_groups
from foundation.finetune.options import FinetuneOptions
from foundation.finetune.runner import finetune_model, run_finetune
from foundation.finetune.strategies import STRATEGIES, FinetuneJob, Strategy, make_strategy, method_names
from foundation.finetune.task_model import Supervised, SupervisedConfig, TaskModel, TaskModelConfig, predict

__all__ = [
    "encode", "extract_features", "feature_kwargs", "pool_tokens", "split_batch", "depths_by_order",
    "layerwise_lr_groups", "predict", "FinetuneOptions", "finetune_model", "run_finetune", "STRATEGIES",
    "FinetuneJob", "Strategy", "make_strategy", "method_names", "Supervised", "SupervisedConfig", "TaskModel",
    "TaskModelConfig",
]
