"""Plumbing shared by the fused ops (imported by ``fused_attention``, ``fused_layer_norm``, ``fused_gelu`` only,
so ``import fastbert`` never imports Triton).

* launch-side helpers: ``rows`` (2-D row view), ``sm_count``, ``device_capability`` (the key of every launch-config
  table), ``check_dropout_p`` (one name, one range for every op), ``fused_op`` (one way to register a custom op);
* dropout: ``draw_seed``, ``dropout_scale``, ``dropout_threshold`` and the one Philox helper ``dropout_bits`` that
  every kernel derives its keep-mask from.

Dropout counters. Element (row, col) of stream ``s`` gets the 32-bit random number

    bits(row, col) = lane (col % 4) of Philox4x32-10(key=seed, counter=(col // 4, row, s, 0))

so one Philox call yields four numbers for four neighbouring columns, and (row, col, s) are separate 32-bit counter
words (distinct for any tensor with fewer than 2**32 rows and columns). Attention uses row = query, col = key,
s = sequence * heads + head; the row-wise ops use s = 0. An element is kept when ``bits >= threshold`` with
``threshold = round(p * 2**32)`` (an unsigned integer compare, no conversion to float), i.e. with probability
1 - p up to 2**-32, and kept values are scaled by 1 / (1 - p) (``torch.nn.functional.dropout``'s convention).

Seeds. ``draw_seed(device)`` draws a 62-bit seed with ``torch.randint`` into a one-element int64 tensor **on the
op's device**; kernels read it with ``tl.load``. So the dropout pattern follows ``torch.manual_seed``, is replayed by
``torch.utils.checkpoint`` (it restores the RNG state before recomputing), needs no host sync, is not baked into a
CUDA graph, and under ``torch.compile`` the draw is an ordinary traced random op. The ops save the seed tensor for
backward, which regenerates the identical mask instead of storing it. Tests rebuild a mask from the same seed (same
``torch.manual_seed`` before the op and before ``draw_seed``) with this helper.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import triton
import triton.language as tl

from .. import _backend

SEED_HIGH = 2**62


# --------------------------------------------------------------------------------------------------------------
# checks and launch-side helpers
# --------------------------------------------------------------------------------------------------------------
def check_dropout_p(op: str, dropout_p) -> float:
    """The one dropout-probability check: a real number in [0, 1) (p = 1 would drop everything and scale by inf)."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{op}: dropout_p must be a float in [0, 1), got {dropout_p!r}")
    return float(dropout_p)


def check_float_tensors(op: str, **tensors: torch.Tensor | None) -> None:
    """Each named tensor (None allowed) is a floating-point torch.Tensor, on the device of the first one."""
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(f"{op}: {name} is on {t.device} but {first[0]} is on {first[1]}")


def rows(t: torch.Tensor | None) -> torch.Tensor | None:
    """View ``[..., N]`` as ``[rows, N]`` with unit column stride (copies only if that is impossible)."""
    if t is None:
        return None
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


@functools.lru_cache(maxsize=None)
def _cuda_properties(index: int):
    return torch.cuda.get_device_properties(index)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_properties(index).multi_processor_count


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device, None elsewhere (Triton's interpreter on CPU tensors).

    Every launch-config table is keyed by this value; the static compile report replaces it to record what each
    architecture would launch.
    """
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = _cuda_properties(index)
    return props.major, props.minor


def interpreting() -> bool:
    """True when the kernels run in Triton's interpreter (small tiles keep CPU tests quick)."""
    return _backend.TRITON_INTERPRET


def fused_op(name: str, fake: Callable) -> Callable[[Callable], Callable]:
    """Register a launcher as the custom op ``fastbert::<name>`` (with ``fake`` as its fake implementation) and
    return a caller that goes through the op while torch.compile traces (the graph sees an opaque op with known
    output shapes) and calls the launcher directly otherwise (eager calls skip the dispatcher's host overhead)."""

    def register(launcher: Callable) -> Callable:
        op = torch.library.custom_op(f"fastbert::{name}", launcher, mutates_args=())
        op.register_fake(fake)

        @functools.wraps(launcher)
        def call(*args):
            return op(*args) if torch.compiler.is_compiling() else launcher(*args)

        call.op = op
        return call

    return register


# --------------------------------------------------------------------------------------------------------------
# dropout
# --------------------------------------------------------------------------------------------------------------
def draw_seed(device: torch.device | str) -> torch.Tensor:
    """One-element int64 tensor on ``device`` holding a seed drawn from torch's default generator for that device."""
    return torch.randint(0, SEED_HIGH, (1,), device=device, dtype=torch.int64)


def dropout_scale(p: float) -> float:
    """Factor applied to kept elements: 1 / (1 - p)."""
    return 1.0 / (1.0 - p)


def dropout_threshold(p: float) -> int:
    """The keep threshold ``round(p * 2**32)`` as the int32 whose bits the kernels read as uint32 (so the argument
    is always an i32, whatever p: Triton would otherwise compile another variant for values >= 2**31)."""
    t = min(int(math.floor(p * 2**32 + 0.5)), 2**32 - 1)
    return t - 2**32 if t >= 2**31 else t


@triton.jit
def dropout_bits(seed, rows, col_start, stream, BLOCK_N: tl.constexpr):
    """uint32 random numbers [BLOCK_M, BLOCK_N] for ``rows`` (a [BLOCK_M] integer vector) x columns
    [col_start, col_start + BLOCK_N) of ``stream``; ``col_start`` a multiple of 4, BLOCK_N a power of two >= 4.
    Keep an element when ``bits >= threshold.to(tl.uint32, bitcast=True)`` (see :func:`dropout_threshold`)."""
    quads = (col_start // 4 + tl.arange(0, BLOCK_N // 4)).to(tl.uint32)  # [BLOCK_N // 4]
    c0 = quads[None, :] + tl.zeros_like(rows).to(tl.uint32)[:, None]  # [BLOCK_M, BLOCK_N // 4]
    c1 = rows.to(tl.uint32)[:, None] + tl.zeros_like(quads)[None, :]
    c2 = (tl.zeros_like(rows) + stream).to(tl.uint32)[:, None] + tl.zeros_like(quads)[None, :]  # stream may be a literal
    zero = tl.zeros_like(c0)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, zero)
    # interleave(interleave(r0, r2), interleave(r1, r3))[..., j] == r_{j % 4}[..., j // 4]
    return tl.interleave(tl.interleave(r0, r2), tl.interleave(r1, r3))


@triton.jit
def dropout_keep(seed, rows, col_start, stream, threshold, BLOCK_N: tl.constexpr):
    """Boolean keep-mask [BLOCK_M, BLOCK_N] (see :func:`dropout_bits`); ``threshold`` from :func:`dropout_threshold`."""
    return dropout_bits(seed, rows, col_start, stream, BLOCK_N) >= threshold.to(tl.uint32, bitcast=True)
