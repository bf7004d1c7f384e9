"""Fused dropout + residual add + LayerNorm (BERT's post-LN), forward and backward in Triton.

Math, per row of N features (x, residual: [rows, N]; weight w, bias b: [N]; keep: the Philox keep-mask):

    s     = x * keep / (1 - p) + residual          (dropout only when p > 0, residual optional)
    mean  = sum(s) / N,   rstd = 1 / sqrt(sum((s - mean)^2) / N + eps)
    x_hat = (s - mean) * rstd,   y = x_hat * w + b

Backward (the LayerNorm VJP), with g = dy * w:

    ds = rstd * (g - mean(g) - x_hat * mean(g * x_hat))      (row means over the N features)
    dresidual = ds,   dx = ds * keep / (1 - p),   dw = sum_rows(dy * x_hat),   db = sum_rows(dy)

Statistics and all arithmetic are fp32 whatever the storage dtype. dw/db are reduced deterministically: each
backward program owns a contiguous block of rows and writes one fp32 partial row; ``torch.sum`` over the
(few hundred) partials finishes the reduction. No atomics, so backward is bitwise reproducible.

What backward reads. Forward saves mean and rstd (fp32, 8 bytes per row) and backward recomputes ``s`` from x,
residual and the keep-mask regenerated from the saved Philox seed, rather than forward writing ``s`` out. Both
choices move the same bytes over a forward+backward (fwd 3 + bwd 4 tensor passes here, fwd 4 + bwd 3 with a saved
``s``), but recomputing: (1) keeps forward-only (inference) at the ideal 3 passes; (2) costs no extra activation
memory in BERT, where the residual is also the input of the next Linear and is saved anyway; (3) keeps ``s`` in fp32
in both directions instead of rounding it to bf16 for storage, so backward is the exact VJP of forward.

Anatomy: kernels -> launchers ``_layer_norm_fwd`` / ``_layer_norm_bwd`` (registered as the custom ops
``fastbert::layer_norm_fwd`` / ``layer_norm_bwd`` with fake implementations) -> ``LayerNormFn`` -> the functional
:func:`layer_norm`, the only place that asks ``_backend`` for Triton or reference. Dropout: ``_common.dropout_keep``
at (row, column) of stream 0.

Dtypes. Output y has x's dtype (also under ``torch.autocast`` with fp32 parameters and bf16/fp16 activations: unlike
``torch.nn.LayerNorm``, which autocast runs in fp32 and which then returns fp32, we return x.dtype so the next
Linear gets the half-precision tensor it would cast to anyway, at half the bytes). Residual may have another floating
dtype; each gradient has the dtype of its input (dw in weight.dtype, and so on).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import _backend
from . import _common
from ._common import check_dropout_p, check_float_tensors, draw_seed, dropout_keep, dropout_scale, dropout_threshold, fused_op
from .reference import layer_norm_ref

MAX_HIDDEN = 16384  # one row must fit one register block (BLOCK_N = next_power_of_2(hidden))


# --------------------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------------------
@triton.jit
def _dropout_add(X, R, SEED, rows, rows64, cols, mask, stride_x_row, stride_r_row, dropout_threshold, dropout_scale,
                 HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, BLOCK_N: tl.constexpr):
    """(s, keep): s = x * keep / (1 - p) + residual in fp32 for the tile rows x cols (keep is all-true without
    dropout); forward computes it, backward recomputes it identically."""
    s = tl.load(X + rows64 * stride_x_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    keep = mask
    if HAS_DROPOUT:
        keep = dropout_keep(tl.load(SEED), rows, 0, 0, dropout_threshold, BLOCK_N)
        s = tl.where(keep, s * dropout_scale, 0.0)
    if HAS_RESIDUAL:
        s += tl.load(R + rows64 * stride_r_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return s, keep


@triton.jit(do_not_specialize=["M", "dropout_threshold"])
def _layer_norm_fwd_kernel(
    X, R, W, B, Y, MEAN, RSTD, SEED,
    stride_x_row, stride_r_row, stride_y_row,
    M, N, eps, dropout_threshold, dropout_scale,
    HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)[:, None]  # int64 row offsets: rows * stride can pass 2**31 elements

    s, _ = _dropout_add(X, R, SEED, rows, rows64, cols, mask, stride_x_row, stride_r_row, dropout_threshold,
                        dropout_scale, HAS_RESIDUAL, HAS_DROPOUT, BLOCK_N)
    mean = tl.sum(s, axis=1) / N
    s_centered = tl.where(mask, s - mean[:, None], 0.0)  # zero the padding lanes before the variance
    var = tl.sum(s_centered * s_centered, axis=1) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)

    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    y = s_centered * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64 * stride_y_row + cols[None, :], y, mask=mask)


@triton.jit(do_not_specialize=["M", "rows_per_program", "dropout_threshold"])
def _layer_norm_bwd_kernel(
    DY, X, R, W, MEAN, RSTD, SEED, DRES, DX, DW_PARTIAL, DB_PARTIAL,
    stride_dy_row, stride_x_row, stride_r_row, stride_dres_row, stride_dx_row,
    M, N, rows_per_program, dropout_threshold, dropout_scale,
    HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    STORE_DRES: tl.constexpr, STORE_DX: tl.constexpr, COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Program `pid` owns rows [row_start, row_end) and walks them BLOCK_M at a time, keeping its dw/db partial
    # sums in registers; one fp32 partial row per program is written at the end (deterministic, no atomics).
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for row0 in range(row_start, row_end, BLOCK_M):
        rows = row0 + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        mask = row_ok[:, None] & col_ok[None, :]
        rows64 = rows.to(tl.int64)[:, None]

        # recompute s = dropout(x) + residual exactly as forward did (fp32)
        s, keep = _dropout_add(X, R, SEED, rows, rows64, cols, mask, stride_x_row, stride_r_row, dropout_threshold,
                               dropout_scale, HAS_RESIDUAL, HAS_DROPOUT, BLOCK_N)
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        x_hat = tl.where(mask, (s - mean[:, None]) * rstd[:, None], 0.0)

        dy = tl.load(DY + rows64 * stride_dy_row + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        g = dy * w[None, :]
        mean_g = tl.sum(g, axis=1) / N
        mean_g_xhat = tl.sum(g * x_hat, axis=1) / N
        ds = (g - mean_g[:, None] - x_hat * mean_g_xhat[:, None]) * rstd[:, None]
        if COMPUTE_DW:
            dw_acc += dy * x_hat
        if COMPUTE_DB:
            db_acc += dy
        if STORE_DRES:
            tl.store(DRES + rows64 * stride_dres_row + cols[None, :], ds, mask=mask)
        if STORE_DX:
            dx = ds
            if HAS_DROPOUT:
                dx = tl.where(keep, ds * dropout_scale, 0.0)
            tl.store(DX + rows64 * stride_dx_row + cols[None, :], dx, mask=mask)
    if COMPUTE_DW:
        tl.store(DW_PARTIAL + pid * N + cols, tl.sum(dw_acc, axis=0), mask=col_ok)
    if COMPUTE_DB:
        tl.store(DB_PARTIAL + pid * N + cols, tl.sum(db_acc, axis=0), mask=col_ok)


# --------------------------------------------------------------------------------------------------------------
# launch configuration (benchmarks/bench_layer_norm.py --sweep retunes it through _CONFIG_OVERRIDE)
# --------------------------------------------------------------------------------------------------------------
# Overrides for tuning sweeps: keys "fwd_block_m", "fwd_warps", "bwd_block_m", "bwd_warps", "bwd_programs_per_sm".
_CONFIG_OVERRIDE: dict[str, int] = {}


def _block_n(n: int) -> int:
    return max(64, triton.next_power_of_2(n))  # >= 64: the dropout bytes come in groups of 64 columns


def _fwd_config(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): several rows per program at small widths (~4K elements per tile)."""
    block_n = _block_n(n)
    block_m = _CONFIG_OVERRIDE.get("fwd_block_m", max(1, min(16, 4096 // block_n)))
    warps = _CONFIG_OVERRIDE.get("fwd_warps", max(4, min(16, block_m * block_n // 512)))
    return block_m, block_n, warps


def _bwd_tile(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) of the backward: ~2K elements per step of a program's row loop."""
    block_n = _block_n(n)
    block_m = _CONFIG_OVERRIDE.get("bwd_block_m", max(1, min(8, 2048 // block_n)))
    warps = _CONFIG_OVERRIDE.get("bwd_warps", max(4, min(16, block_m * block_n // 256)))
    return block_m, block_n, warps


def _bwd_programs(m: int, block_m: int, device: torch.device, args: tuple, meta: dict) -> int:
    """A persistent grid: as many programs as the GPU holds at once (``_common.resident_programs_per_sm`` per SM),
    never more than there are row blocks; 4 in the interpreter (few programs, each looping over many rows)."""
    if device.type == "cuda":
        per_sm = _CONFIG_OVERRIDE.get("bwd_programs_per_sm") or _common.resident_programs_per_sm(
            _layer_norm_bwd_kernel, device, args, meta)
        programs = _common.sm_count(device) * per_sm
    else:
        programs = 4
    return max(1, min(programs, triton.cdiv(m, block_m)))


# --------------------------------------------------------------------------------------------------------------
# launchers (2-D row-contiguous inputs; LayerNormFn flattens leading dims), registered as custom ops
# --------------------------------------------------------------------------------------------------------------
def _fwd_fake(x, weight, bias, residual, seed, eps, dropout_p):
    M = x.shape[0]
    return x.new_empty(x.shape), x.new_empty((M,), dtype=torch.float32), x.new_empty((M,), dtype=torch.float32)


@fused_op("layer_norm_fwd", _fwd_fake)
def _layer_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    seed: torch.Tensor | None,
    eps: float,
    dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, residual [M, N] (row-contiguous) -> (y [M, N] in x.dtype, mean [M] fp32, rstd [M] fp32)."""
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    mean = torch.empty((M,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return y, mean, rstd
    has_dropout = dropout_p > 0.0
    block_m, block_n, warps = _fwd_config(N)
    _layer_norm_fwd_kernel[(triton.cdiv(M, block_m),)](
        x, residual if residual is not None else x, weight, bias if bias is not None else weight, y, mean, rstd,
        seed if has_dropout else mean,
        x.stride(0), residual.stride(0) if residual is not None else 0, y.stride(0),
        M, N, float(eps), dropout_threshold(dropout_p), dropout_scale(dropout_p),
        HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, HAS_DROPOUT=has_dropout,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
    )
    return y, mean, rstd


def _stores_dres(need_dx, need_dres, has_dropout, x_dtype, residual_dtype) -> bool:
    """Does backward write dresidual separately (else dresidual is dx itself)?"""
    return need_dres and (has_dropout or not need_dx or residual_dtype != x_dtype)


def _bwd_fake(dy, x, residual, weight, bias, mean, rstd, seed, dropout_p, need_dx, need_dres, need_dw, need_db):
    r_dtype = residual.dtype if residual is not None else None
    store_dres = _stores_dres(need_dx, need_dres, dropout_p > 0.0, x.dtype, r_dtype)
    return (
        x.new_empty(x.shape) if need_dx else x.new_empty(0),
        x.new_empty(x.shape, dtype=r_dtype) if store_dres else x.new_empty(0),
        weight.new_empty(weight.shape) if need_dw else x.new_empty(0),
        bias.new_empty(bias.shape) if need_db else x.new_empty(0),
    )


@fused_op("layer_norm_bwd", _bwd_fake)
def _layer_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    seed: torch.Tensor | None,
    dropout_p: float,
    need_dx: bool,
    need_dres: bool,
    need_dw: bool,
    need_db: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dx, dresidual, dweight, dbias); an output not asked for is an empty tensor.

    Without dropout dx == dresidual: only dx is written and dresidual comes back empty (the caller reuses dx,
    as autograd's own AddBackward hands one gradient tensor to both inputs), unless the two dtypes differ.
    """
    M, N = x.shape
    device = x.device
    has_dropout = dropout_p > 0.0
    empty = torch.empty(0, device=device)
    residual_dtype = residual.dtype if residual is not None else None
    store_dres = _stores_dres(need_dx, need_dres, has_dropout, x.dtype, residual_dtype)
    dres = torch.empty((M, N), dtype=residual_dtype, device=device) if store_dres else empty
    dx = torch.empty((M, N), dtype=x.dtype, device=device) if need_dx else empty
    block_m, block_n, warps = _bwd_tile(N)
    meta = dict(HAS_RESIDUAL=residual is not None, HAS_DROPOUT=has_dropout, STORE_DRES=store_dres, STORE_DX=need_dx,
                COMPUTE_DW=need_dw, COMPUTE_DB=need_db, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)

    def launch_args(dw_partial, db_partial, rows_per_program):
        return (dy, x, residual if residual is not None else x, weight, mean, rstd, seed if has_dropout else mean,
                dres if store_dres else dy, dx if need_dx else dy,
                dw_partial if need_dw else mean, db_partial if need_db else mean,
                dy.stride(0), x.stride(0), residual.stride(0) if residual is not None else 0,
                dres.stride(0) if store_dres else 0, dx.stride(0) if need_dx else 0,
                M, N, rows_per_program, dropout_threshold(dropout_p), dropout_scale(dropout_p))

    programs = _bwd_programs(M, block_m, device, launch_args(mean, mean, block_m), meta) if M else 0
    rows_per_program = triton.cdiv(triton.cdiv(M, programs), block_m) * block_m if M else block_m
    programs = triton.cdiv(M, rows_per_program) if M else 0
    dw_partial = torch.empty((programs, N), dtype=torch.float32, device=device) if need_dw else empty
    db_partial = torch.empty((programs, N), dtype=torch.float32, device=device) if need_db else empty
    if programs:
        _layer_norm_bwd_kernel[(programs,)](*launch_args(dw_partial, db_partial, rows_per_program), **meta)
    dw = dw_partial.sum(0).to(weight.dtype) if need_dw else empty
    db = db_partial.sum(0).to(bias.dtype) if need_db else empty
    return dx, dres, dw, db


# --------------------------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------------------------
class LayerNormFn(torch.autograd.Function):
    """y = LayerNorm(dropout(x) + residual) on [..., N] tensors; saves x, residual, mean, rstd and the seed."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, seed, eps, dropout_p):
        shape = x.shape
        x2, r2 = _common.rows(x), _common.rows(residual)  # [M, N]
        y, mean, rstd = _layer_norm_fwd(x2, weight, bias, r2, seed, eps, dropout_p)
        ctx.save_for_backward(x2, r2, weight, bias, mean, rstd, seed)
        ctx.dropout_p = dropout_p
        ctx.shapes = (shape, residual.shape if residual is not None else None)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, r2, weight, bias, mean, rstd, seed = ctx.saved_tensors
        need_dx, need_dw, need_db, need_dres = ctx.needs_input_grad[:4]
        need_db = need_db and bias is not None
        need_dres = need_dres and r2 is not None
        x_shape, r_shape = ctx.shapes
        dx, dres, dw, db = _layer_norm_bwd(
            _common.rows(dy), x2, r2, weight, bias, mean, rstd, seed, ctx.dropout_p, need_dx, need_dres, need_dw, need_db
        )
        if need_dres and not dres.numel():
            dres = dx  # no dropout: dresidual == dx, one tensor for both (like AddBackward)
        return (
            dx.view(x_shape) if need_dx else None,
            dw if need_dw else None,
            db if need_db else None,
            dres.view(r_shape) if need_dres else None,
            None,
            None,
            None,
        )


# --------------------------------------------------------------------------------------------------------------
# checks and the functional
# --------------------------------------------------------------------------------------------------------------
def _check_args(x, weight, bias, residual, eps, dropout_p) -> float:
    """Raise ValueError naming the argument; return dropout_p as a float."""
    if weight is None:
        raise ValueError("layer_norm: weight must be a torch.Tensor [hidden], got None")
    check_float_tensors("layer_norm", x=x, weight=weight, bias=bias, residual=residual)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"layer_norm: x must have a last dimension (the hidden size) >= 1, got shape {tuple(x.shape)}")
    n = x.shape[-1]
    if n > MAX_HIDDEN:
        raise ValueError(f"layer_norm: hidden size {n} is too large (the fused kernel supports up to {MAX_HIDDEN})")
    if tuple(weight.shape) != (n,):
        raise ValueError(f"layer_norm: weight must have shape ({n},) to match x's last dimension, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"layer_norm: bias must have shape ({n},) to match x's last dimension, got {tuple(bias.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"layer_norm: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < math.inf:
        raise ValueError(f"layer_norm: eps must be a positive finite float, got {eps!r}")
    return check_dropout_p("layer_norm", dropout_p)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-12,
    residual: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """LayerNorm(dropout(x) + residual) over the last dimension, in one fused pass forward and backward.

    x: ``[..., N]`` (any leading dims, e.g. [batch, seqlen, N] or packed [tokens, N]); residual: x's shape or None;
    weight, bias: ``[N]`` (bias may be None); 1 <= N <= 16384. ``dropout_p`` in [0, 1) applies dropout to x only
    (pass 0.0 in eval mode); its Philox seed comes from torch's generator on x's device and is replayed in backward.
    Returns ``[..., N]`` in x.dtype (see the module docstring for the autocast policy). Falls back to
    :func:`fastbert.ops.reference.layer_norm_ref` where Triton cannot run (see :mod:`fastbert._backend`).
    """
    dropout_p = _check_args(x, weight, bias, residual, eps, dropout_p)
    if not _backend.use_triton(x, weight, bias, residual, op="layer_norm"):
        return layer_norm_ref(x, weight, bias, eps, residual, dropout_p)
    seed = draw_seed(x.device) if dropout_p > 0.0 else None
    # the kernels read weight and bias with unit stride (a strided view gave wrong results); no copy when contiguous
    weight, bias = weight.contiguous(), (bias.contiguous() if bias is not None else None)
    return LayerNormFn.apply(x, weight, bias, residual, seed, float(eps), dropout_p)
