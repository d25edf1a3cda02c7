"""A layer's functional core compiled once per process, for layers run in eager mode (``fused=True``).

In eager mode every torch op of an activation is one pass over memory, so a layer written with five ops costs
several times GELU's single fused kernel however few tensors it saves. ``torch.compile`` (Inductor) fuses the ops of
a core into one or two passes. :class:`CompiledCore` wraps a module-level core function ``fn``:

- ``core(*args)`` compiles ``fn`` on its first call, with dynamic shapes (``dynamic=True``), so one compile serves
  every shape; a new dtype, number of axes, train/eval branch or constant argument (an axis, a group count)
  compiles once more. ``dynamic=False`` compiles once per shape instead (EvoNorm: measured faster kernels). The
  wrapper is a module-level object, shared by every instance of the layer.
- Inside an outer ``torch.compile`` (``torch.compiler.is_compiling()``) it calls ``fn`` itself, so the outer graph
  traces through it: no nested compiled region, no graph break.
- Where compiling fails (no C++ compiler, a platform Inductor does not support) it warns once, naming the core and
  the reason, and from then on calls ``fn`` uncompiled; the numbers are the same either way (tested).
- ``core.fn`` is the plain function, which a layer built with ``fused=False`` (the default) calls.

Layers choose per instance with ``(core if self.fused else core.fn)(...)``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CompiledCore"]


def _is_compile_error(err: Exception) -> bool:
    """Whether ``err`` came from compiling (imported here: ``torch._dynamo`` takes ~1.5 s to import)."""
    from torch._dynamo.exc import BackendCompilerFailed, TorchRuntimeError
    from torch._inductor.exc import InductorError

    return isinstance(err, (BackendCompilerFailed, InductorError, TorchRuntimeError, OSError))


class CompiledCore:
    """``fn`` compiled lazily with ``torch.compile`` (dynamic shapes by default); plain ``fn`` inside an outer compile.

    Args:
        fn: the layer's functional core (tensors and constants in, a tensor out).
        backend: the ``torch.compile`` backend (``"inductor"``; tests pass a failing one to check the fallback).
        dynamic: ``torch.compile``'s ``dynamic``: True (one compile serves every shape) or False (static kernels,
            one compile per shape; EvoNorm's cores, whose dynamic-size kernels ran much slower).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], backend: str | Callable[..., Any] = "inductor",
                 dynamic: bool = True) -> None:
        self.fn = fn
        self.backend = backend
        self.dynamic = dynamic
        self._compiled: Callable[..., torch.Tensor] | None = None
        self.unavailable: str | None = None  # why compiling failed, once it has

    def __call__(self, *args: Any) -> torch.Tensor:
        if self.unavailable is not None or torch.compiler.is_compiling():
            return self.fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=self.dynamic, backend=self.backend)
        try:
            return self._compiled(*args)
        except Exception as err:
            if not _is_compile_error(err):
                raise
            out = self.fn(*args)  # an error of the inputs themselves raises here, and the core stays compilable
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err  # the backend's own error
            first = str(cause).strip().splitlines()
            self.unavailable = f"{type(err).__name__} from {type(cause).__name__}: {first[0] if first else ''}"
            warnings.warn(f"{self.fn.__module__}.{self.fn.__qualname__}: torch.compile failed ({self.unavailable}); "
                          f"the layer built with fused=True runs its plain, uncompiled core from now on (same "
                          f"numbers, eager speed)", RuntimeWarning, stacklevel=2)
            return out

    def __repr__(self) -> str:
        return f"CompiledCore({self.fn.__qualname__})"
