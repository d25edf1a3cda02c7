"""Fine-tuning strategies, one module each, chosen by method name through registries.

``--method`` is either a strategy registered here (``linear-probe``, ``mlp-probe``, ``full``) or an adapter
method registered in :mod:`foundation.adapters` (``lora``, ``dopamine``, ...), which the ``adapter``
strategy trains. A new adapter method needs only its class registered with
:func:`foundation.adapters.register_adapter`; a new strategy registers with ``STRATEGIES.register``.
"""
from __future__ import annotations

from foundation.errors import ConfigError, did_you_mean
from foundation.finetune.strategies.base import FinetuneJob, Strategy
from foundation.registry import Registry

__all__ = ["STRATEGIES", "FinetuneJob", "Strategy", "make_strategy", "method_names"]

_HERE = "foundation.finetune.strategies"
STRATEGIES = Registry("fine-tuning strategy", builtin={
    "linear-probe": f"{_HERE}.probe:LinearProbe",
    "mlp-probe": f"{_HERE}.probe:MlpProbe",
    "full": f"{_HERE}.full:FullFinetune",
})


def method_names() -> list[str]:
    """Every valid ``--method``: the strategies, then the registered adapter methods."""
    from foundation.adapters import adapter_names

    return STRATEGIES.names() + [n for n in adapter_names() if n not in STRATEGIES]


def make_strategy(method: str, where: str = "--method") -> Strategy:
    """A fresh strategy for ``method``: a registered strategy, else the adapter strategy of that adapter method.

    Raises:
        ConfigError: ``method`` is neither (lists the valid methods).
    """
    if method in STRATEGIES:
        return STRATEGIES.get(method)()
    from foundation.adapters import adapter_names, get_adapter

    if method in adapter_names():
        from foundation.finetune.strategies.adapter import AdapterFinetune

        return AdapterFinetune(get_adapter(method))
    raise ConfigError(f"{where}: unknown method {method!r}; {did_you_mean(method, method_names())}")
