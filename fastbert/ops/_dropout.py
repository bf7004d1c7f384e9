"""Counter-based (Philox) dropout shared by the fused kernels.

Seeds. ``draw_seed(device)`` draws a 62-bit seed with ``torch.randint`` into a one-element int64 tensor **on the
op's device**; kernels read it with ``tl.load``. So the dropout pattern follows ``torch.manual_seed`` (the CUDA
default generator on GPU, the CPU generator on CPU), ``torch.utils.checkpoint`` replays it (it restores the RNG
state before recomputing), there is no host sync and no seed baked into a CUDA graph, and under ``torch.compile``
the draw is an ordinary traced random op feeding an otherwise deterministic custom op (safe to recompute or reorder).
The op saves the seed tensor for backward, which regenerates the identical mask instead of storing it.

Counters. Element (row, col) of a row-major [rows, cols] tile gets uniform number

    u(row, col) = lane (col % 4) of Philox4x32-10(key=seed, counter=(col // 4, row, 0, 0))

i.e. each Philox call yields four numbers for four neighbouring columns (4x fewer Philox rounds than one call per
element), and (row, col) are two separate 32-bit counter words, so no int64 flat index is needed and any tensor with
fewer than 2**32 rows and columns gets distinct counters. An element is kept when ``u >= p``, i.e. with probability
1 - p, and kept values are scaled by 1 / (1 - p) (``torch.nn.functional.dropout``'s convention).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

SEED_HIGH = 2**62


def draw_seed(device: torch.device | str) -> torch.Tensor:
    """One-element int64 tensor on ``device`` holding a seed drawn from torch's default generator for that device."""
    return torch.randint(0, SEED_HIGH, (1,), device=device, dtype=torch.int64)


def dropout_scale(p: float) -> float:
    """Factor applied to kept elements: 1 / (1 - p); 0 when p == 1 (nothing is kept)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


@triton.jit
def uniform_tile(seed, rows, col_start, BLOCK_N: tl.constexpr):
    """Uniform [0, 1) numbers for the tile rows x [col_start, col_start + BLOCK_N).

    ``rows`` is a [BLOCK_M] integer vector, ``col_start`` a multiple of 4, BLOCK_N a power of two >= 4.
    Returns fp32 [BLOCK_M, BLOCK_N].
    """
    quads = (col_start // 4 + tl.arange(0, BLOCK_N // 4)).to(tl.uint32)  # [BLOCK_N // 4]
    c0 = quads[None, :] + tl.zeros_like(rows)[:, None].to(tl.uint32)  # [BLOCK_M, BLOCK_N // 4]
    c1 = rows.to(tl.uint32)[:, None] + tl.zeros_like(quads)[None, :]
    zero = tl.zeros_like(c0)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, zero, zero)
    u0 = tl.uint_to_uniform_float(r0)
    u1 = tl.uint_to_uniform_float(r1)
    u2 = tl.uint_to_uniform_float(r2)
    u3 = tl.uint_to_uniform_float(r3)
    # interleave(interleave(u0, u2), interleave(u1, u3))[..., j] == u_{j % 4}[..., j // 4]
    return tl.interleave(tl.interleave(u0, u2), tl.interleave(u1, u3))


@triton.jit
def keep_tile(SEED, rows, col_start, dropout_p, BLOCK_N: tl.constexpr):
    """Boolean keep-mask [BLOCK_M, BLOCK_N] for the tile (see :func:`uniform_tile`); SEED points at the int64 seed."""
    seed = tl.load(SEED)
    return uniform_tile(seed, rows, col_start, BLOCK_N) >= dropout_p


@triton.jit
def _dropout_mask_kernel(SEED, KEEP, M, N, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col_start = tl.program_id(1) * BLOCK_N
    cols = col_start + tl.arange(0, BLOCK_N)
    keep = keep_tile(SEED, rows, col_start, dropout_p, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    tl.store(KEEP + rows.to(tl.int64)[:, None] * N + cols[None, :], keep.to(tl.uint8), mask=mask)


def dropout_mask(seed: torch.Tensor, rows: int, cols: int, dropout_p: float) -> torch.Tensor:
    """The boolean keep-mask [rows, cols] the fused kernels use for ``seed`` (a test hook and debugging aid)."""
    keep = torch.empty((rows, cols), dtype=torch.uint8, device=seed.device)
    if rows and cols:
        block_n = max(16, min(1024, triton.next_power_of_2(cols)))
        block_m = 4
        grid = (triton.cdiv(rows, block_m), triton.cdiv(cols, block_n))
        _dropout_mask_kernel[grid](seed, keep, rows, cols, float(dropout_p), BLOCK_M=block_m, BLOCK_N=block_n)
    return keep.bool()
