"""fastbert.ops: the fused functionals, their plain-PyTorch references, the layout helpers and the path table.

* ``attention``, ``layer_norm``, ``bias_gelu``: the fused ops (modules ``fused_attention``, ``fused_layer_norm``,
  ``fused_gelu``: Triton kernels, launchers, custom ops, autograd, functional). They are imported on first access,
  so importing this package does not import Triton.
* ``reference``: the PyTorch references (test oracle and CPU path); ``padding``: padded <-> packed helpers.
* ``kernels(path)`` / ``choose_path(attn_implementation, device)``: which ops a model runs (``dispatch``).
* ``linear`` (module) / ``Linear``: dense layers, on oneDNN's GEMM in CPU fp32 inference where it is faster.
"""
import importlib

from . import padding, reference  # noqa: F401
from .dispatch import AttentionInputs, Kernels, Path, choose_path, kernels  # noqa: F401
from . import linear  # noqa: F401
from .linear import Linear  # noqa: F401

_FUNCTIONALS = {"attention": "fused_attention", "layer_norm": "fused_layer_norm", "bias_gelu": "fused_gelu"}

__all__ = ["attention", "layer_norm", "bias_gelu", "reference", "padding", "AttentionInputs", "Kernels", "Path",
           "choose_path", "kernels", "Linear", "linear"]


def __getattr__(name: str):
    if name in _FUNCTIONALS:
        fn = getattr(importlib.import_module(f".{_FUNCTIONALS[name]}", __name__), name)
        globals()[name] = fn  # later lookups skip this hook
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_FUNCTIONALS))
