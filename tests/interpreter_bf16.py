"""Exact bf16 ``tl.dot`` in Triton's interpreter (a test helper, installed by conftest.py under TRITON_INTERPRET=1).

The interpreter stores bfloat16 tensors as their raw bits in ``np.uint16`` arrays (numpy has no bfloat16), and its
``InterpreterBuilder.create_dot`` hands them straight to ``np.matmul(a, b, dtype=float32)``: numpy then multiplies
the *bit patterns* as integers, so every bf16 dot is garbage (upstream triton issue 11584). fp16/fp32/fp8 dots are
fine.

:func:`install` wraps that one method: bf16 operands are widened exactly to fp32 (the bits of a bf16 are the top 16
bits of the fp32 with the same value: ``(u16.astype(uint32) << 16).view(float32)``), then the original method runs
unchanged, so everything else (fp16/fp32/fp8 dots, the accumulator add, the result type) is Triton's own code.

What the result means, as on a GPU: a bf16 x bf16 dot accumulates in fp32 (Triton's semantic layer gives it an fp32
result, added to the ``acc`` argument if any; ``out_dtype=tl.bfloat16`` is rejected before the builder is reached), and
products of two bf16 values are exact in fp32 (8 x 8 significant bits), so ``input_precision`` ("ieee", "tf32",
"tf32x3") cannot change the value of a bf16 dot: bf16 operands are already representable in tf32. The interpreter
ignores ``input_precision`` anyway. Only the order of the fp32 summation differs from a GPU's.

The second patch, on ``InterpreterBuilder.cast_impl``: the interpreter's fp32 -> bf16 casts (``.to(tl.bfloat16)``
and stores of fp32 values to bf16 pointers) truncate, i.e. round toward zero, where GPUs (and torch) round to
nearest even. Truncated bf16 results are up to 1 ulp off instead of half an ulp and biased toward zero, which moved
attention's bf16 dV outside the three-way bound at seqlen 1 for some seeds (P = 1 - 2^-24 in fp32 truncates to
1 - 2^-8). fp32 -> bf16 casts now round to nearest even (NaN stays NaN); every other cast is Triton's own.

Version guard: the patch is known to fit the interpreters of the Triton versions in :data:`SUPPORTED_VERSIONS`
(same ``create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)`` method, bf16 held as ``np.uint16``).
Any other version, or a changed structure, makes :func:`install` raise instead of silently doing nothing.
"""
from __future__ import annotations

import contextlib
import inspect

import numpy as np

SUPPORTED_VERSIONS = ((3, 6), (3, 9))  # (major, minor) whose interpreter.py was read and matches
_DOT_PARAMS = ["self", "a", "b", "d", "input_precision", "max_num_imprecise_acc"]

_original_create_dot = None  # the interpreter's own method while the patch is installed, else None
_original_cast_impl = None


def bf16_bits_to_fp32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> the float32 values they denote (exact, NaN/inf/subnormals included)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def fp32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values -> uint16 bf16 bit patterns, rounded to nearest even (what GPUs and torch do); NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x40), rounded).astype(np.uint16)


def _triton_version() -> tuple[int, int]:
    import triton

    parts = triton.__version__.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise RuntimeError(f"interpreter_bf16: cannot parse triton version {triton.__version__!r}") from None


def _check_structure():
    """Return (interpreter module, tl) after checking the interpreter still looks like the one this patch fits."""
    import triton
    import triton.language as tl
    from triton.runtime import interpreter

    version = _triton_version()
    if version not in SUPPORTED_VERSIONS:
        raise RuntimeError(
            f"interpreter_bf16: triton {triton.__version__} is not a version this patch was checked against "
            f"({', '.join('%d.%d' % v for v in SUPPORTED_VERSIONS)}). Read create_dot in "
            "triton/runtime/interpreter.py: if bf16 tensors are still np.uint16 bits fed to np.matmul, add the "
            "version to SUPPORTED_VERSIONS; if upstream fixed bf16 dots (triton issue 11584), drop this helper."
        )
    builder = getattr(interpreter, "InterpreterBuilder", None)
    dot = getattr(builder, "create_dot", None)
    problems = []
    if dot is None or not callable(dot):
        problems.append("InterpreterBuilder.create_dot is missing")
    elif list(inspect.signature(dot).parameters) != _DOT_PARAMS:
        problems.append(f"create_dot{inspect.signature(dot)} no longer has the parameters {_DOT_PARAMS}")
    cast = getattr(builder, "cast_impl", None)
    if cast is None or list(inspect.signature(cast).parameters) != ["self", "src", "dst_type"]:
        problems.append("InterpreterBuilder.cast_impl(self, src, dst_type) is missing or changed")
    if not hasattr(interpreter, "TensorHandle"):
        problems.append("TensorHandle is missing")
    get_np_dtype = getattr(interpreter, "_get_np_dtype", None)
    if get_np_dtype is None or get_np_dtype(tl.bfloat16) != np.dtype(np.uint16):
        problems.append("bfloat16 is no longer stored as np.uint16 (_get_np_dtype)")
    if problems:
        changed = "; ".join(problems)
        raise RuntimeError(f"interpreter_bf16: triton {triton.__version__}'s interpreter changed: {changed}")
    return interpreter, tl


def install() -> None:
    """Patch ``InterpreterBuilder.create_dot`` to widen bf16 operands exactly to fp32, and ``cast_impl`` to round
    fp32 -> bf16 to nearest even (idempotent)."""
    global _original_create_dot, _original_cast_impl
    if _original_create_dot is not None:
        return
    interpreter, tl = _check_structure()
    original = interpreter.InterpreterBuilder.create_dot
    original_cast = interpreter.InterpreterBuilder.cast_impl
    TensorHandle = interpreter.TensorHandle

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return TensorHandle(fp32_to_bf16_bits(src.data), dst_type.scalar)
        return original_cast(self, src, dst_type)

    cast_impl.__wrapped__ = original_cast
    interpreter.InterpreterBuilder.cast_impl = cast_impl
    _original_cast_impl = original_cast

    def widen(handle):
        if handle.dtype == tl.bfloat16:
            return TensorHandle(bf16_bits_to_fp32(handle.data), tl.float32)
        return handle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    create_dot.__wrapped__ = original
    create_dot.__doc__ = "create_dot with bf16 operands widened exactly to fp32 (tests/interpreter_bf16.py)"
    interpreter.InterpreterBuilder.create_dot = create_dot
    _original_create_dot = original


def uninstall() -> None:
    """Restore the interpreter's own ``create_dot`` and ``cast_impl`` (no-op when not installed)."""
    global _original_create_dot, _original_cast_impl
    if _original_create_dot is None:
        return
    from triton.runtime import interpreter

    interpreter.InterpreterBuilder.create_dot = _original_create_dot
    interpreter.InterpreterBuilder.cast_impl = _original_cast_impl
    _original_create_dot = _original_cast_impl = None


def is_installed() -> bool:
    return _original_create_dot is not None


@contextlib.contextmanager
def original_dot():
    """Run a block with the interpreter's own (bf16-broken) dot and casts; the patch, if installed, comes back
    afterwards."""
    was_installed = is_installed()
    uninstall()
    try:
        yield
    finally:
        if was_installed:
            install()
