"""Triton or reference: may a fused op run its Triton kernel on these tensors? (Asked only by the fused functionals;
which *path* a model runs is the other decision, ``fastbert.ops.dispatch.choose_path``.)

Rules (read once, at import, because Triton itself decides interpreter vs. compiler when kernels are defined):

* ``FASTBERT_DISABLE_TRITON=1``  -> never use Triton (PyTorch reference path everywhere).
* CUDA tensors                   -> Triton kernels (compiled for the GPU).
* CPU tensors + ``TRITON_INTERPRET=1`` (set before the first fused op is used: Triton reads it when the kernels are
  defined, on first use) -> Triton kernels in Triton's interpreter (slow; this is how CPU CI tests the kernels).
* CPU tensors otherwise           -> the plain-PyTorch reference in :mod:`fastbert.ops.reference`, with a
  one-time warning per op so a slow path is never silent.
"""
from __future__ import annotations

import os
import warnings

import torch

TRITON_DISABLED = os.environ.get("FASTBERT_DISABLE_TRITON", "0") not in ("", "0")
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _probe_triton() -> tuple[bool, str]:
    if TRITON_DISABLED:
        return False, "disabled by FASTBERT_DISABLE_TRITON=1"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising anything else
        return False, f"triton is not importable ({type(exc).__name__}: {exc})"
    return True, f"triton {triton.__version__}" + (" (interpreter: TRITON_INTERPRET=1)" if TRITON_INTERPRET else "")


# Probed once, when the first fused-op module imports this one (those import triton anyway; so does the path policy
# when asked about a CUDA device): a plain constant keeps torch.compile from tracing a cached call on every dispatch.
_TRITON_STATUS = _probe_triton()


def triton_status() -> tuple[bool, str]:
    """(usable, human-readable version or reason)."""
    return _TRITON_STATUS


def cuda_status() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False" + (
            " (CPU-only torch build)" if torch.version.cuda is None else ""
        )
    return True, f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"


def why_not_triton(*tensors: torch.Tensor | None) -> str | None:
    """None when the Triton kernels can run on these tensors, else the reason they cannot."""
    ok, reason = triton_status()
    if not ok:
        return reason
    devices = {t.device.type for t in tensors if t is not None}
    if devices == {"cuda"}:
        return None
    if devices == {"cpu"}:
        return None if TRITON_INTERPRET else "CPU tensors (set TRITON_INTERPRET=1 before importing fastbert to run the kernels in Triton's interpreter)"
    return f"tensors on devices {sorted(devices)} (Triton kernels need all tensors on one CUDA device)"


def use_triton(*tensors: torch.Tensor | None, op: str = "op") -> bool:
    """True when ``op`` should launch its Triton kernel for these tensors.

    A fallback to the reference path warns once per op unless Triton was disabled on purpose.
    """
    reason = why_not_triton(*tensors)
    if reason is None:
        return True
    if not TRITON_DISABLED:
        _warn_fallback(op, reason)
    return False


_WARNED: set[tuple[str, str]] = set()


def _warn_fallback(op: str, reason: str) -> None:
    if (op, reason) not in _WARNED:  # once per op and reason (a plain set: torch.compile traces it without fuss)
        _WARNED.add((op, reason))
        warnings.warn(f"fastbert.ops.{op}: using the PyTorch reference path: {reason}", RuntimeWarning, stacklevel=3)
