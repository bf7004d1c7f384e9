"""Functional ops. Each fused op dispatches (in its own functional, through ``fastbert._backend``) to its Triton
kernels or to the plain-PyTorch reference in :mod:`fastbert.ops.reference`.

The Triton modules are imported on first use, so ``import fastbert`` does not import Triton.
"""
import importlib

from . import reference  # noqa: F401  (plain PyTorch, cheap)

_LAZY = {
    "attention": ".attention",
    "layer_norm": ".layer_norm",
    "bias_gelu": ".gelu",
}

__all__ = ["attention", "layer_norm", "bias_gelu", "reference"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
