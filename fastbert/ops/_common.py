"""Plumbing shared by the fused ops (imported by ``fused_attention``, ``fused_layer_norm``, ``fused_gelu`` only,
so ``import fastbert`` never imports Triton).

* launch-side helpers: ``rows`` (2-D row view), ``sm_count``, ``resident_programs_per_sm`` (persistent grids),
  ``device_capability`` (the key of every launch-config table), ``check_dropout_p`` (one name, one range for every op), ``fused_op`` (one way to register a custom op);
* dropout: ``draw_seed``, ``dropout_scale``, ``dropout_threshold`` and the one Philox helper ``dropout_bits`` that
  every kernel derives its keep-mask from.

Dropout bits. Element (row, col) of stream ``s`` (attention: row = query, col = key, s = sequence * heads + head;
the row-wise ops: s = 0) gets one random byte. Columns go in groups of 64; group g of a row takes its 64 bytes from
four Philox4x32-10 calls (key = seed, counter = (4 g + cq, row, s, 0), cq = 0..3), each call giving 16 bytes to the
columns 64 g + 16 w + 8 kk + 2 cq + e (w = word 0..3, kk = 0..1, e = 0..1: byte 2 kk + e of word w). That interleave
puts the 16 bytes of one call on exactly the 16 columns of a row that one thread holds in the MMA accumulator layout
(pairs of neighbouring columns every 8 columns), so the kernels build the keep-mask in the layout of the scores with
no data movement, at one Philox call per 16 elements. An element is kept when its byte is >= ``round(256 p)``, i.e.
with probability 1 - p', where p' = round(256 p) / 256 is p rounded to a multiple of 1/256 (0.1 -> 0.1016, as in
flash-attention's 8-bit dropout; below 1/512 it rounds to 0) and kept values are scaled by 1 / (1 - p'), so the
expectation is exact (``effective_dropout_p`` gives p'). Kernels using it need BLOCK_N, the column tile, to be a
multiple of 64.

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


REGISTERS_PER_SM = 65536  # 32-bit registers per streaming multiprocessor on every NVIDIA architecture since sm_50
MAX_PROGRAMS_PER_SM = 32  # resident thread blocks per SM on sm_80 .. sm_120
_RESIDENT: dict[tuple, int] = {}


def resident_programs_per_sm(kernel, device: torch.device, args: tuple, meta: dict) -> int:
    """How many programs of the variant ``kernel[...](*args, **meta)`` compiles to an SM of ``device`` holds at once:
    the smallest of what its threads, registers and shared memory allow (compiled, not launched, on first use and
    cached per variant). Persistent grids size themselves with it, so every program is resident."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (kernel, index, tuple(sorted(meta.items())),
           tuple(a.dtype if isinstance(a, torch.Tensor) else type(a) for a in args))
    if key not in _RESIDENT:
        compiled = kernel.warmup(*args, grid=(1,), **meta)
        compiled._init_handles()  # loads the binary: its register count is known from here on
        props = _cuda_properties(index)
        threads = compiled.metadata.num_warps * props.warp_size
        limits = [props.max_threads_per_multi_processor // threads,
                  REGISTERS_PER_SM // max(1, compiled.n_regs * threads), MAX_PROGRAMS_PER_SM]
        if compiled.metadata.shared:
            limits.append(props.shared_memory_per_multiprocessor // compiled.metadata.shared)
        _RESIDENT[key] = max(1, min(limits))
    return _RESIDENT[key]


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


def dropout_threshold(p: float) -> int:
    """The keep threshold of the kernels' 8-bit dropout: an element is kept when its random byte is >= this."""
    return min(int(math.floor(p * 256 + 0.5)), 255)


def effective_dropout_p(p: float) -> float:
    """The dropout probability the kernels apply for ``p``: p rounded to a multiple of 1/256."""
    return dropout_threshold(p) / 256


def dropout_scale(p: float) -> float:
    """Factor applied to kept elements: 1 / (1 - p'), p' the effective probability (so E[dropout(x)] = x)."""
    return 1.0 / (1.0 - effective_dropout_p(p))


@triton.jit
def dropout_bits(seed, rows, col_start, stream, BLOCK_N: tl.constexpr):
    """Random bytes (uint32 values 0..255) [BLOCK_M, BLOCK_N] for ``rows`` (a [BLOCK_M] integer vector) x columns
    [col_start, col_start + BLOCK_N) of ``stream``; ``col_start`` and BLOCK_N multiples of 64 (module docstring)."""
    NG: tl.constexpr = BLOCK_N // 64
    groups = col_start // 64 + tl.arange(0, NG)
    cq = tl.arange(0, 4)
    zeros = tl.zeros_like(rows).to(tl.uint32)[:, None, None]  # [BLOCK_M, 1, 1]
    c0 = (groups[:, None] * 4 + cq[None, :]).to(tl.uint32)[None, :, :] + zeros  # [BLOCK_M, NG, 4]
    c1 = rows.to(tl.uint32)[:, None, None] + tl.zeros_like(c0)
    c2 = (tl.zeros_like(rows) + stream).to(tl.uint32)[:, None, None] + tl.zeros_like(c0)  # stream may be a literal
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, tl.zeros_like(c0))
    # the bytes of word w as [BLOCK_M, NG, cq, e, kk] (byte 2 kk + e)
    b0 = tl.join(tl.join(r0 & 0xFF, (r0 >> 8) & 0xFF), tl.join((r0 >> 16) & 0xFF, r0 >> 24))
    b1 = tl.join(tl.join(r1 & 0xFF, (r1 >> 8) & 0xFF), tl.join((r1 >> 16) & 0xFF, r1 >> 24))
    b2 = tl.join(tl.join(r2 & 0xFF, (r2 >> 8) & 0xFF), tl.join((r2 >> 16) & 0xFF, r2 >> 24))
    b3 = tl.join(tl.join(r3 & 0xFF, (r3 >> 8) & 0xFF), tl.join((r3 >> 16) & 0xFF, r3 >> 24))
    z = tl.join(tl.join(b0, b1), tl.join(b2, b3))  # [BLOCK_M, NG, cq, e, kk, w % 2, w // 2]
    z = tl.permute(z, (0, 1, 6, 5, 4, 2, 3))  # [BLOCK_M, NG, w // 2, w % 2, kk, cq, e]: column 64 g + 16 w + 8 kk + 2 cq + e
    return tl.reshape(z, (rows.shape[0], BLOCK_N))


@triton.jit
def dropout_keep(seed, rows, col_start, stream, threshold, BLOCK_N: tl.constexpr):
    """Boolean keep-mask [BLOCK_M, BLOCK_N] (see :func:`dropout_bits`); ``threshold`` from :func:`dropout_threshold`."""
    return dropout_bits(seed, rows, col_start, stream, BLOCK_N) >= threshold
