"""Functional ops. Each fused op dispatches (in its own functional, through ``fastbert._backend``) to its Triton
kernels or to the plain-PyTorch reference in :mod:`fastbert.ops.reference`.

Importing defines the Triton kernels but compiles nothing: compilation happens at a kernel's first launch.
The functionals are bound here explicitly: each shares its name with its module (``ops.attention`` is the
function, ``fastbert.ops.attention`` the module that holds it).
"""
from . import reference  # noqa: F401
from .attention import attention  # noqa: F401
from .gelu import bias_gelu  # noqa: F401
from .layer_norm import layer_norm  # noqa: F401

__all__ = ["attention", "layer_norm", "bias_gelu", "reference"]
