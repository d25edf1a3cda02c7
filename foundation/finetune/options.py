"""How to fine-tune: the options of ``foundation finetune`` as one dataclass."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from foundation.errors import ConfigError, did_you_mean

__all__ = ["FinetuneOptions", "HEAD_INITS"]

HEAD_INITS = ("probe", "random")


@dataclass
class FinetuneOptions:
    """How to fine-tune (command-line options of ``foundation finetune``).

    ``method`` names a strategy (``linear-probe``, ``mlp-probe``, ``full``) or a registered adapter method
    (``lora``, ``dopamine``, or any class passed to :func:`foundation.adapters.register_adapter`); see
    :func:`foundation.finetune.strategies.method_names`.
    """

    method: str = field(default="linear-probe", metadata={"help": "a strategy or registered adapter method"})
    test_fraction: float = field(default=0.25, metadata={"help": "share of groups (subjects) held out"})
    split_seed: int = field(default=0, metadata={"help": "seed of the held-out split"})
    pool: str = field(default="mean", metadata={"help": "token pooling: mean | cls"})
    lr_decay: float = field(default=0.75, metadata={"help": "layer-wise LR decay of full fine-tuning"})
    head_lr_scale: float = field(default=10.0, metadata={"help": "head LR of full fine-tuning, a multiple of train.lr"})
    targets: tuple[str, ...] = field(default=(), metadata={"help": "adapter target module suffixes ('': the "
                                                                   "method's default for the encoder)"})
    adapter: dict[str, Any] = field(default_factory=dict, metadata={"help": "other fields of the adapter's config, "
                                                                           "e.g. {'r': 4} (LoRA)"})
    arch: str = field(default="", metadata={"help": "architecture of an imported checkpoint whose file cannot tell it "
                                                    "(labram, cbramod, eegpt, biot, bendr)"})
    exclude_keys: tuple[str, ...] = field(default=(), metadata={"help": "keys (or prefixes) of an imported checkpoint "
                                                                        "to leave out of its strict load"})
    arch_set: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "an imported checkpoint's contract fields (channels, missing_channels, ...) and braindecode sizes"})
    head_init: str = field(default="probe", metadata={"help": "new head of trained methods: 'probe' (LP-FT: a "
                                                              "linear probe of the frozen features) or 'random'"})

    def __post_init__(self) -> None:
        from foundation.finetune.strategies import method_names

        self.targets = tuple(self.targets)
        self.exclude_keys = tuple(self.exclude_keys)
        self.arch_set = dict(self.arch_set)
        self.adapter = dict(self.adapter)
        valid = method_names()
        if self.method not in valid:
            raise ConfigError(f"--method {self.method!r} unknown; {did_you_mean(self.method, valid)}")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"--head-init {self.head_init!r} unknown; valid: {', '.join(HEAD_INITS)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"--test-fraction: expected a value in (0, 1), got {self.test_fraction!r}")
