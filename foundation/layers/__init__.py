"""The shared layer library: activations, norms, KAN family, NOBLE, attention, blocks, sparsity tools.

Importing this package registers every activation (``foundation.registry.ACTIVATIONS``) and MLP kind
(``foundation.registry.MLPS``).
"""
from foundation.layers.afkan import AF_FUNCTIONS, AFKANLinear
from foundation.layers.ash import ASH, HardASH, z_from_k
from foundation.layers.attention import Attention
from foundation.layers.block import ATTENTIONS, Block, BlockConfig, drop_path
from foundation.layers.create_act import get_act_layer, make_activation
from foundation.layers.create_mlp import make_mlp
from foundation.layers.crrelu import CRReLU
from foundation.layers.dice import Dice
from foundation.layers.evo_norm import EvoNormB0, EvoNormS0
from foundation.layers.kan import INPUT_NORMS, KANInputNorm, KANLinear
from foundation.layers.kan_basis import BASES
from foundation.layers.karat import KArAt
from foundation.layers.mlp import KANMlp, Mlp
from foundation.layers.noble import NobleLinear, apply_noble, branch_parameters, noble_param_groups
from foundation.layers.proact import ProAct, calibrate
from foundation.layers.selu import SELU, AlphaDropout, lecun_normal_
from foundation.layers.skan import PrunedSKANLinear, SKANLinear
from foundation.layers.sparsity import (
    LayerSparsity,
    ThresholdHooks,
    ThresholdReport,
    apply_channel_thresholds,
    calibrate_channel_thresholds,
    evaluate_channel_thresholds,
    measure_sparsity,
)
from foundation.layers.topk import TopKReLU

__all__ = [
    # activations and norms
    "get_act_layer", "make_activation", "CRReLU", "ASH", "HardASH", "z_from_k", "SELU", "AlphaDropout",
    "lecun_normal_", "Dice", "ProAct", "calibrate", "TopKReLU", "EvoNormB0", "EvoNormS0",
    # MLPs and KANs
    "make_mlp", "Mlp", "KANMlp", "KANLinear", "KANInputNorm", "INPUT_NORMS", "BASES", "SKANLinear",
    "PrunedSKANLinear", "AFKANLinear", "AF_FUNCTIONS", "NobleLinear", "apply_noble", "noble_param_groups",
    "branch_parameters",
    # attention and blocks
    "Attention", "KArAt", "Block", "BlockConfig", "ATTENTIONS", "drop_path",
    # activation sparsity
    "LayerSparsity", "ThresholdReport", "ThresholdHooks", "measure_sparsity", "calibrate_channel_thresholds",
    "apply_channel_thresholds", "evaluate_channel_thresholds",
]
