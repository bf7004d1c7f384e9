"""Fused bias + GELU, forward and backward in Triton (BERT's intermediate activation).

Math, with z = x + bias (x: [rows, N], bias: [N] or None):

    "none" (exact, BERT's ``hidden_act="gelu"``):
        y = 0.5 * z * (1 + erf(z / sqrt(2)))
        dy/dz = 0.5 * (1 + erf(z / sqrt(2))) + z * exp(-z^2 / 2) / sqrt(2 * pi)
    "tanh" (``gelu_new`` / ``gelu_pytorch_tanh``), with u = sqrt(2 / pi) * (z + 0.044715 z^3), t = tanh(u):
        y = 0.5 * z * (1 + t)
        dy/dz = 0.5 * (1 + t) + 0.5 * z * (1 - t^2) * sqrt(2 / pi) * (1 + 3 * 0.044715 z^2)

dx = dy * dy/dz and dbias = sum_rows(dx). The two forms differ by up to ~5e-4, more than half-precision rounding,
so they are never substituted for each other: ``approximate`` must be exactly "none" or "tanh".

Backward recomputes z from the saved x and bias (no pre-activation tensor is stored). dbias is reduced
deterministically: each backward program owns a block of rows for a block of columns and writes one fp32 partial row,
summed afterwards by ``torch.sum`` (no atomics). All arithmetic is fp32; y and dx take x's dtype (also under
``torch.autocast``, where bias is typically fp32 and x bf16), dbias takes bias's dtype.

Anatomy: kernels -> launchers ``_bias_gelu_fwd`` / ``_bias_gelu_bwd`` (registered as the custom ops
``fastbert::bias_gelu_fwd`` / ``bias_gelu_bwd`` with fake implementations) -> ``BiasGeluFn`` -> the functional
:func:`bias_gelu`, the only place that asks ``_backend`` for Triton or reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _backend
from . import _common
from ._common import check_float_tensors, fused_op
from .reference import bias_gelu_ref

APPROXIMATIONS = ("none", "tanh")
# The constants are written inline in the kernels: 1/sqrt(2) = 0.7071067811865476, 1/sqrt(2 pi) = 0.3989422804014327,
# sqrt(2/pi) = 0.7978845608028654. (The compiler rejects plain-float globals inside @triton.jit code, and the
# interpreter of some Triton versions mishandles tl.constexpr globals in arithmetic; literals work in both.)


# --------------------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------------------
@triton.jit
def _tanh_and_sech2(u):
    """(tanh(u), 1 - tanh(u)^2) via e = exp(-2|u|) in (0, 1]: no overflow, and 1 - t^2 = 4e / (1 + e)^2 is computed
    without the cancellation of 1 - t*t near |t| = 1."""
    e = tl.exp(-2.0 * tl.abs(u))
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(u < 0.0, -t, t)
    return t, 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _gelu_and_grad(z, TANH: tl.constexpr, NEED_GRAD: tl.constexpr):
    """(gelu(z), d gelu / dz) in fp32; the derivative is 0.0 when NEED_GRAD is False."""
    if TANH:
        z2 = z * z
        t, sech2 = _tanh_and_sech2(0.7978845608028654 * z * (1.0 + 0.044715 * z2))
        y = 0.5 * z * (1.0 + t)
        if NEED_GRAD:
            dydz = 0.5 * (1.0 + t) + 0.5 * z * sech2 * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z2)
        else:
            dydz = 0.0
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        y = z * cdf
        if NEED_GRAD:
            dydz = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
        else:
            dydz = 0.0
    return y, dydz


@triton.jit(do_not_specialize=["M"])
def _bias_gelu_fwd_kernel(
    X, B, Y,
    stride_x_row, stride_y_row,
    M, N,
    HAS_BIAS: tl.constexpr, TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    mask = (rows < M)[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    z = tl.load(X + rows64 * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y, _ = _gelu_and_grad(z, TANH, False)
    tl.store(Y + rows64 * stride_y_row + cols[None, :], y, mask=mask)


@triton.jit(do_not_specialize=["M", "rows_per_program"])
def _bias_gelu_bwd_kernel(
    DY, X, B, DX, DB_PARTIAL,
    stride_dy_row, stride_x_row, stride_dx_row,
    M, N, rows_per_program,
    HAS_BIAS: tl.constexpr, COMPUTE_DB: tl.constexpr, TANH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Program (pid_m, pid_n) owns rows [row_start, row_end) x one BLOCK_N column block and writes one fp32 dbias
    # partial row for it (deterministic two-stage reduction).
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    row_start = pid_m * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for row0 in range(row_start, row_end, BLOCK_M):
        rows = row0 + tl.arange(0, BLOCK_M)
        mask = (rows < row_end)[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)[:, None]
        z = tl.load(X + rows64 * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            z += b[None, :]
        dy = tl.load(DY + rows64 * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        _, dydz = _gelu_and_grad(z, TANH, True)
        dx = dy * dydz
        tl.store(DX + rows64 * stride_dx_row + cols[None, :], dx, mask=mask)
        if COMPUTE_DB:
            db_acc += tl.where(mask, dx, 0.0)
    if COMPUTE_DB:
        tl.store(DB_PARTIAL + pid_m * N + cols, tl.sum(db_acc, axis=0), mask=col_ok)


# --------------------------------------------------------------------------------------------------------------
# launch configuration (H100-oriented heuristics; benchmarks/bench_gelu.py --sweep retunes them)
# --------------------------------------------------------------------------------------------------------------
# Overrides for tuning sweeps: keys "block_m", "block_n", "warps", "bwd_programs_per_sm".
_CONFIG_OVERRIDE: dict[str, int] = {}


def _config(n: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): tiles of ~4K elements forward (~2K backward, which holds more live values:
    ptxas gives ~120 registers/thread for 4K-element backward tiles on sm_90), at most 1024 columns wide."""
    block_n = _CONFIG_OVERRIDE.get("block_n", min(1024, max(16, triton.next_power_of_2(n))))
    block_m = _CONFIG_OVERRIDE.get("block_m", max(1, (2048 if backward else 4096) // block_n))
    per_warp = 256 if backward else 512  # 8 (backward) or 16 (forward) elements per thread
    warps = _CONFIG_OVERRIDE.get("warps", max(4, min(16, block_m * block_n // per_warp)))
    return block_m, block_n, warps


# --------------------------------------------------------------------------------------------------------------
# launchers (2-D row-contiguous inputs)
# --------------------------------------------------------------------------------------------------------------
def _fwd_fake(x, bias, tanh):
    return x.new_empty(x.shape)


@fused_op("bias_gelu_fwd", _fwd_fake)
def _bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor | None, tanh: bool) -> torch.Tensor:
    """x [M, N] (row-contiguous) -> gelu(x + bias) [M, N] in x.dtype."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    block_m, block_n, warps = _config(N)
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _bias_gelu_fwd_kernel[grid](
        x, bias if bias is not None else x, y, x.stride(0), y.stride(0), M, N,
        HAS_BIAS=bias is not None, TANH=tanh, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
    )
    return y


def _bwd_fake(dy, x, bias, tanh, need_db):
    need_db = need_db and bias is not None
    return x.new_empty(x.shape), (bias.new_empty(bias.shape) if need_db else x.new_empty(0))


@fused_op("bias_gelu_bwd", _bwd_fake)
def _bias_gelu_bwd(
    dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, tanh: bool, need_db: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (dx [M, N] in x.dtype, dbias [N] in bias.dtype or an empty tensor when not asked for)."""
    M, N = x.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    empty = torch.empty(0, device=x.device)
    need_db = need_db and bias is not None
    if M == 0 or N == 0:
        return dx, (torch.zeros_like(bias) if need_db else empty)
    block_m, block_n, warps = _config(N, backward=True)
    col_blocks = triton.cdiv(N, block_n)
    meta = dict(HAS_BIAS=bias is not None, COMPUTE_DB=need_db, TANH=tanh, BLOCK_M=block_m, BLOCK_N=block_n,
                num_warps=warps)

    def launch_args(db_partial, rows_per_program):
        return (dy, x, bias if bias is not None else x, dx, db_partial if need_db else dx,
                dy.stride(0), x.stride(0), dx.stride(0), M, N, rows_per_program)

    if x.device.type == "cuda":
        # a persistent grid: as many programs as the GPU holds at once, counting the column blocks
        per_sm = _CONFIG_OVERRIDE.get("bwd_programs_per_sm") or _common.resident_programs_per_sm(
            _bias_gelu_bwd_kernel, x.device, launch_args(dx, block_m), meta)
        row_programs = max(1, _common.sm_count(x.device) * per_sm // col_blocks)
    else:
        row_programs = 4
    row_programs = max(1, min(row_programs, triton.cdiv(M, block_m)))
    rows_per_program = triton.cdiv(triton.cdiv(M, row_programs), block_m) * block_m
    row_programs = triton.cdiv(M, rows_per_program)
    db_partial = torch.empty((row_programs, N), dtype=torch.float32, device=x.device) if need_db else empty
    _bias_gelu_bwd_kernel[(row_programs, col_blocks)](*launch_args(db_partial, rows_per_program), **meta)
    return dx, (db_partial.sum(0).to(bias.dtype) if need_db else empty)


# --------------------------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------------------------
class BiasGeluFn(torch.autograd.Function):
    """y = gelu(x + bias) on [..., N] tensors; saves x and bias (z is recomputed in backward)."""

    @staticmethod
    def forward(ctx, x, bias, tanh):
        shape = x.shape
        x2 = _common.rows(x)  # [M, N]
        y = _bias_gelu_fwd(x2, bias, tanh)
        ctx.save_for_backward(x2, bias)
        ctx.tanh = tanh
        ctx.shape = shape
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, bias = ctx.saved_tensors
        need_db = ctx.needs_input_grad[1] and bias is not None
        dx, db = _bias_gelu_bwd(_common.rows(dy), x2, bias, ctx.tanh, need_db)
        return dx.view(ctx.shape), (db if need_db else None), None


# --------------------------------------------------------------------------------------------------------------
# checks and the functional
# --------------------------------------------------------------------------------------------------------------
def _check_args(x, bias, approximate) -> None:
    """Raise ValueError naming the argument."""
    if approximate not in APPROXIMATIONS:
        raise ValueError(
            f"bias_gelu: approximate must be 'none' (exact erf GELU, BERT's 'gelu') or 'tanh', got {approximate!r}"
        )
    check_float_tensors("bias_gelu", x=x, bias=bias)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"bias_gelu: x must have a last dimension (the features) >= 1, got shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[-1],):
        raise ValueError(
            f"bias_gelu: bias must have shape ({x.shape[-1]},) to match x's last dimension, got {tuple(bias.shape)}"
        )


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none") -> torch.Tensor:
    """GELU(x + bias) over ``[..., N]`` tensors (any leading dims), fused forward and backward.

    bias: ``[N]`` or None. ``approximate``: "none" (exact erf GELU, the default and BERT's "gelu") or "tanh";
    anything else raises ValueError. Returns x's dtype. Falls back to
    :func:`fastbert.ops.reference.bias_gelu_ref` where Triton cannot run (see :mod:`fastbert._backend`).
    """
    _check_args(x, bias, approximate)
    if not _backend.use_triton(x, bias, op="bias_gelu"):
        return bias_gelu_ref(x, bias, approximate)
    # the kernels read bias with unit stride (a strided view gave wrong results); no copy when contiguous
    return BiasGeluFn.apply(x, bias.contiguous() if bias is not None else None, approximate == "tanh")
