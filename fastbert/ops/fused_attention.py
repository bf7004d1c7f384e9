"""Fused bidirectional attention with key padding, packed (varlen) batches, a sliding window and in-kernel dropout, in
Triton.

FlashAttention-2 style: the [seqlen, seqlen] scores live only in registers, one query block at a time.

    S = scale * Q K^T          (padding keys, and keys outside the window, -> -inf)
    P = softmax(S)             online, in base 2: m_j = max(m_{j-1}, rowmax S_j log2 e),
                               l_j = l_{j-1} 2^(m_{j-1} - m_j) + rowsum 2^(S_j log2 e - m_j)
    P~ = P * Z / (1 - p)       Z the Philox keep-mask (p = dropout_p)
    O = P~ V,                  LSE = (m + log2 l) / log2 e   (fp32, saved for backward)

Backward recomputes P from Q, K and LSE (never stored) and regenerates Z from the saved seed:

    dV = P~^T dO,   dP = (dO V^T) * Z / (1 - p),   dS = P * (dP - delta),   delta = rowsum(dO * O)
    dQ = scale * dS K,   dK = scale * dS^T Q

It is deterministic: ``_attn_bwd_dq_kernel`` (one program per query block, also computes delta) and
``_attn_bwd_dkdv_kernel`` (one program per key block) each own their output rows, so there are no atomics.

Layouts (one kernel, a (sequence start, length, span of real tokens) abstraction per program):

* padded: q, k, v ``[batch, seqlen, heads, head_dim]`` (any strides with a contiguous last dim, e.g. views of a
  fused QKV projection) and an HF 0/1 ``attention_mask [batch, seqlen]`` (bool or integer). Any 0/1 pattern works:
  ``_row_spans_kernel`` turns each mask row into its span [lo, hi) of real tokens and a "holes" flag once per call.
  Right (or left) padding, the Hugging Face norm, then costs nothing inside the loops; only a row with holes loads
  its mask, per key block. Padding queries output 0 and get zero gradient.
* packed: q, k, v ``[total_tokens, heads, head_dim]`` with int32 ``cu_seqlens [batch + 1]`` and ``max_seqlen``;
  zero-length sequences are allowed.

Every program splits its blocks in two kinds: the inner blocks, where every (query, key) pair is valid, run with no
masking at all (the main loop: load, dot, online softmax, dot); the boundary blocks (the span's edges, the band of a
sliding window, every block of a row with holes) apply the masks. ``window`` (ModernBERT's local attention) keeps the
pairs with |i - j| <= window, i and j positions in the sequence. head_dim is any value up to 128: tiles are padded to
the next power of two (at least 16) and the padding columns masked.

Dropout: the keep decision for (b, h, i, j) (query i, key j of sequence b, head h; packed sequences are top-left
aligned) is ``_common.dropout_keep`` at row i, column j of stream b * heads + h, from a seed tensor drawn on the op's
device (see fastbert/ops/_common.py: it follows ``torch.manual_seed``, is replayed by activation checkpointing, needs
no host sync and is not baked into a CUDA graph).

Anatomy: kernels -> launchers ``_attn_fwd`` / ``_attn_bwd`` (layout, allocation, launch config from ``_CONFIGS``) ->
custom ops ``fastbert::attention_fwd`` / ``attention_bwd`` with fake implementations -> ``AttentionFn`` -> the
functional :func:`attention`, the only place that asks ``_backend`` for Triton or reference.
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _backend
from . import _common, padding
from ._common import check_dropout_p, draw_seed, dropout_bits, dropout_keep, dropout_scale, dropout_threshold, fused_op
from .reference import attention_torch

LOG2E = 1.4426950408889634  # log2(e): the kernels work in base 2 (exp2), scale * log2(e) folded into one factor
MAX_HEAD_DIM = 128
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# dropout counters are 32-bit (query index, key index): fine for any realistic length; the int32 token offsets
# inside one sequence also bound the sequence length.
MAX_SEQLEN = 2**31 // 128
MAX_BATCH = 65535  # sequences are the third grid dimension
LOG2E_C = tl.constexpr(LOG2E)
# Integer arguments that change with the batch's lengths or the call: never specialized (Triton would otherwise
# compile a variant per "divisible by 16" / "== 1" pattern of e.g. the total token count).
_RUNTIME_INTS = ["seqlen", "stride_lb", "stride_lh", "stride_mb", "stride_ms", "window", "dropout_threshold"]


# ----------------------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["seqlen", "stride_mb", "stride_ms"])
def _row_spans_kernel(MASK, SPANS, seqlen, stride_mb, stride_ms, BLOCK_R: tl.constexpr):
    """SPANS[b] = (lo, hi, holes) of mask row b: first real token, one past the last ([0, 0) for an empty row), and
    1 when a position in between is padding. One program per row, once per call: the attention programs then read
    three ints instead of scanning the mask."""
    b = tl.program_id(0)
    row = MASK + b.to(tl.int64) * stride_mb
    lo = seqlen + 0
    hi = seqlen * 0
    count = seqlen * 0
    for start in range(0, seqlen, BLOCK_R):
        offs = start + tl.arange(0, BLOCK_R)
        keep = tl.load(row + offs * stride_ms, mask=offs < seqlen, other=0) != 0
        hi = tl.maximum(hi, tl.max(tl.where(keep, offs + 1, 0), 0))
        lo = tl.minimum(lo, tl.min(tl.where(keep, offs, seqlen), 0))
        count += tl.sum(keep.to(tl.int32), 0)
    lo = tl.where(count > 0, lo, 0)
    tl.store(SPANS + b * 3, lo)
    tl.store(SPANS + b * 3 + 1, hi)
    tl.store(SPANS + b * 3 + 2, (hi - lo != count).to(tl.int32))


@triton.jit
def _sequence(SPANS, CU_SEQLENS, b, seqlen, IS_PACKED: tl.constexpr, HAS_MASK: tl.constexpr):
    """(tok_start, n_rows, lo, hi, holes) of sequence b: index of its first row in the token dimension (packed) or 0,
    the rows it owns (packed: its length; padded: seqlen, padding included), the span [lo, hi) of its real tokens and
    whether padding sits inside that span."""
    if IS_PACKED:
        tok_start = tl.load(CU_SEQLENS + b)
        n_rows = tl.load(CU_SEQLENS + b + 1) - tok_start
        lo = n_rows * 0
        hi = n_rows
        holes = n_rows * 0
    elif HAS_MASK:
        tok_start = seqlen * 0
        n_rows = seqlen + 0
        lo = tl.load(SPANS + b * 3)
        hi = tl.load(SPANS + b * 3 + 1)
        holes = tl.load(SPANS + b * 3 + 2)
    else:
        tok_start = seqlen * 0
        n_rows = seqlen + 0
        lo = seqlen * 0
        hi = seqlen + 0
        holes = seqlen * 0
    return tok_start, n_rows, lo, hi, holes


@triton.jit
def _block_ranges(start, lo, hi, holes, window, BLOCK: tl.constexpr, ROWS: tl.constexpr, WINDOWED: tl.constexpr):
    """The blocks of BLOCK positions a program owning the ROWS positions [start, start + ROWS) visits on the other
    side (keys for a query block, queries for a key block): [first, end), and inside it [inner_lo, inner_hi), where
    every pair is valid (in the span, no hole, in the window) and no masking is needed. Empty when the program's
    rows hold no real token or see none through the window."""
    first = lo
    last = hi
    if WINDOWED:
        first = tl.maximum(first, start - window)
        last = tl.minimum(last, start + ROWS + window)
    live = (start < hi) & (start + ROWS > lo) & (first < last)
    first = (first // BLOCK) * BLOCK
    end = tl.where(live, last, first)
    inner_lo = ((lo + BLOCK - 1) // BLOCK) * BLOCK
    inner_hi = (hi // BLOCK) * BLOCK
    if WINDOWED:  # every row r of [start, start + ROWS) must see the whole block: |r - j| <= window
        inner_lo = tl.maximum(inner_lo, ((start + ROWS - 1 - window + BLOCK - 1) // BLOCK) * BLOCK)
        inner_hi = tl.minimum(inner_hi, ((start + window + 1) // BLOCK) * BLOCK)
    inner_lo = tl.minimum(tl.maximum(inner_lo, first), end)
    inner_hi = tl.maximum(tl.minimum(inner_hi, end), inner_lo)
    inner_hi = tl.where(holes != 0, inner_lo, inner_hi)  # padding inside the span: every block is a boundary block
    return first, inner_lo, inner_hi, end


@triton.jit
def _is_token(MASK_ROW, stride_ms, offs, lo, hi, holes, HAS_MASK: tl.constexpr):
    """[len(offs)] bool: position ``offs`` is a real token (in the span [lo, hi) and, in a row with holes, not
    padding)."""
    ok = (offs >= lo) & (offs < hi)
    if HAS_MASK:
        if holes != 0:
            ok = ok & (tl.load(MASK_ROW + offs * stride_ms, mask=ok, other=0) != 0)
    return ok


@triton.jit
def _pairs_ok(MASK_ROW, stride_ms, offs_q, offs_k, lo, hi, holes, window, HAS_MASK: tl.constexpr,
              WINDOWED: tl.constexpr):
    """Validity of the (query, key) pairs of a boundary block: the key is a real token and |query - key| <= window.
    [1, len(offs_k)] without a window, [len(offs_q), len(offs_k)] with one."""
    ok = _is_token(MASK_ROW, stride_ms, offs_k, lo, hi, holes, HAS_MASK)[None, :]
    if WINDOWED:
        ok = ok & (tl.abs(offs_q[:, None] - offs_k[None, :]) <= window)
    return ok


@triton.jit
def _program_tile(SPANS, CU_SEQLENS, seqlen, BLOCK: tl.constexpr, IS_PACKED: tl.constexpr, HAS_MASK: tl.constexpr):
    """The prologue every attention kernel shares: the first row of this program's tile (query rows for the forward
    and dQ kernels, key rows for dK/dV), its head h and sequence b, and the sequence's (tok0 as int64, n_rows, lo, hi,
    holes) from _sequence."""
    start = tl.program_id(0) * BLOCK
    h = tl.program_id(1)
    b = tl.program_id(2)
    tok_start, n_rows, lo, hi, holes = _sequence(SPANS, CU_SEQLENS, b, seqlen, IS_PACKED, HAS_MASK)
    return start, h, b, tok_start.to(tl.int64), n_rows, lo, hi, holes


@triton.jit
def _head(X, b, h, rows, stride_b, stride_h, stride_s):
    """Pointer(s) to token row(s) ``rows`` (int64: a scalar, or a column of rows) of head h of sequence b in a
    [batch, tokens, heads, ...]-strided tensor, all offsets in int64."""
    return X + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + rows * stride_s


@triton.jit
def _tile_mask(offs, bound, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Mask of a [rows, BLOCK_D] tile: rows below ``bound``, and the real head_dim columns (all of them, folded away
    by the compiler, when head_dim is a power of two)."""
    return (offs < bound)[:, None] & (offs_d < HEAD_DIM)[None, :]


@triton.jit
def _load_tile(ptrs, offs, bound, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BOUNDED: tl.constexpr):
    """A [rows, BLOCK_D] tile, zero outside rows < ``bound`` (only when BOUNDED: inner blocks are in range) and
    outside the real head_dim columns (only when head_dim is not a power of two)."""
    if BOUNDED:
        x = tl.load(ptrs, mask=_tile_mask(offs, bound, offs_d, HEAD_DIM, BLOCK_D), other=0.0)
    elif HEAD_DIM == BLOCK_D:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    return x


@triton.jit
def _fwd_block(acc, l_i, m_i, q, K_base, V_base, stride_ks, stride_vs, start_n, offs_m, offs_d,
               MASK_ROW, stride_ms, lo, hi, holes, window, seed, bh, qk_scale, dropout_threshold,
               BOUNDARY: tl.constexpr, HAS_MASK: tl.constexpr, WINDOWED: tl.constexpr, HAS_DROPOUT: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One key block of the online softmax (BOUNDARY: apply the pair masks)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(K_base + offs_n[:, None] * stride_ks + offs_d[None, :], offs_n, hi, offs_d, HEAD_DIM, BLOCK_D,
                   BOUNDARY)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
    if BOUNDARY:
        qk = tl.where(_pairs_ok(MASK_ROW, stride_ms, offs_m, offs_n, lo, hi, holes, window, HAS_MASK, WINDOWED),
                      qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if HAS_DROPOUT:
        p = tl.where(dropout_keep(seed, offs_m, start_n, bh, dropout_threshold, BLOCK_N), p, 0.0)
    v = _load_tile(V_base + offs_n[:, None] * stride_vs + offs_d[None, :], offs_n, hi, offs_d, HEAD_DIM, BLOCK_D,
                   BOUNDARY)
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_fwd_kernel(
    Q, K, V, O, LSE, MASK, SPANS, CU_SEQLENS, SEED,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh,
    stride_mb, stride_ms,
    seqlen, num_heads, window, qk_scale, dropout_threshold, dropout_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_PACKED: tl.constexpr, HAS_MASK: tl.constexpr, WINDOWED: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One program = BLOCK_M query rows of one (sequence b, head h): the inner key blocks without masks, then the
    boundary blocks with them."""
    start_m, h, b, tok0, n_rows, lo, hi, holes = _program_tile(SPANS, CU_SEQLENS, seqlen, BLOCK_M, IS_PACKED, HAS_MASK)
    if start_m < n_rows:
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        MASK_ROW = MASK + b.to(tl.int64) * stride_mb
        rows = (tok0 + offs_m)[:, None]
        q_ptrs = _head(Q, b, h, rows, stride_qb, stride_qh, stride_qs) + offs_d[None, :]
        q = tl.load(q_ptrs, mask=_tile_mask(offs_m, hi, offs_d, HEAD_DIM, BLOCK_D), other=0.0)
        K_base = _head(K, b, h, tok0, stride_kb, stride_kh, stride_ks)
        V_base = _head(V, b, h, tok0, stride_vb, stride_vh, stride_vs)
        seed = tl.load(SEED) if HAS_DROPOUT else 0
        bh = b * num_heads + h

        # A finite start for the running max: a block whose keys are all masked then gives p = 2^-inf = 0 and
        # alpha = 1 instead of 2^(-inf + inf) = NaN.
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        first, inner_lo, inner_hi, end = _block_ranges(start_m, lo, hi, holes, window, BLOCK_N, BLOCK_M, WINDOWED)
        for start_n in range(inner_lo, inner_hi, BLOCK_N):  # the main loop: no masks
            acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K_base, V_base, stride_ks, stride_vs, start_n, offs_m,
                                       offs_d, MASK_ROW, stride_ms, lo, hi, holes, window, seed, bh, qk_scale,
                                       dropout_threshold, False, HAS_MASK, WINDOWED, HAS_DROPOUT,
                                       HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        for start_n in range(first, inner_lo, BLOCK_N):
            acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K_base, V_base, stride_ks, stride_vs, start_n, offs_m,
                                       offs_d, MASK_ROW, stride_ms, lo, hi, holes, window, seed, bh, qk_scale,
                                       dropout_threshold, True, HAS_MASK, WINDOWED, HAS_DROPOUT,
                                       HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)
        for start_n in range(inner_hi, end, BLOCK_N):
            acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K_base, V_base, stride_ks, stride_vs, start_n, offs_m,
                                       offs_d, MASK_ROW, stride_ms, lo, hi, holes, window, seed, bh, qk_scale,
                                       dropout_threshold, True, HAS_MASK, WINDOWED, HAS_DROPOUT,
                                       HEAD_DIM, BLOCK_D, BLOCK_N, DOT_PRECISION)

        # Padding queries, and rows that see no key: O = 0 and LSE = +inf, so backward recomputes P = 0 for them.
        q_tok = _is_token(MASK_ROW, stride_ms, offs_m, lo, hi, holes, HAS_MASK)
        has_keys = l_i > 0.0
        l_safe = tl.where(has_keys, l_i, 1.0)
        acc = acc * (dropout_scale / l_safe)[:, None]
        acc = tl.where(q_tok[:, None], acc, 0.0)
        lse = tl.where(q_tok & has_keys, (m_i + tl.math.log2(l_safe)) / LOG2E_C, float("inf"))
        o_ptrs = _head(O, b, h, rows, stride_ob, stride_oh, stride_os) + offs_d[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=_tile_mask(offs_m, n_rows, offs_d, HEAD_DIM, BLOCK_D))
        tl.store(_head(LSE, b, h, tok0 + offs_m, stride_lb, stride_lh, 1), lse, mask=offs_m < n_rows)


@triton.jit
def _dq_block(dq, q, do, lse2, delta, K_base, V_base, stride_ks, stride_vs, start_n, offs_m, offs_d,
              MASK_ROW, stride_ms, lo, hi, holes, window, seed, bh, qk_scale, dropout_threshold, dropout_scale,
              BOUNDARY: tl.constexpr, HAS_MASK: tl.constexpr, WINDOWED: tl.constexpr, HAS_DROPOUT: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dQ += dS K over one key block, P recomputed from the saved LSE (BOUNDARY: apply the pair masks)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_tile(K_base + offs_n[:, None] * stride_ks + offs_d[None, :], offs_n, hi, offs_d, HEAD_DIM, BLOCK_D,
                   BOUNDARY)
    v = _load_tile(V_base + offs_n[:, None] * stride_vs + offs_d[None, :], offs_n, hi, offs_d, HEAD_DIM, BLOCK_D,
                   BOUNDARY)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    p = tl.math.exp2(qk * qk_scale - lse2[:, None])
    if BOUNDARY:
        p = tl.where(_pairs_ok(MASK_ROW, stride_ms, offs_m, offs_n, lo, hi, holes, window, HAS_MASK, WINDOWED), p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    if HAS_DROPOUT:
        keep = dropout_keep(seed, offs_m, start_n, bh, dropout_threshold, BLOCK_N)
        dp = tl.where(keep, dp * dropout_scale, 0.0)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dq_kernel(
    Q, K, V, O, DO, LSE, DELTA, DQ, MASK, SPANS, CU_SEQLENS, SEED,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh,
    stride_lb, stride_lh,
    stride_mb, stride_ms,
    seqlen, num_heads, window, qk_scale, softmax_scale, dropout_threshold, dropout_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_PACKED: tl.constexpr, HAS_MASK: tl.constexpr, WINDOWED: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """delta = rowsum(dO * O) (stored for the dK/dV kernel) and dQ = scale * dS K for BLOCK_M query rows."""
    start_m, h, b, tok0, n_rows, lo, hi, holes = _program_tile(SPANS, CU_SEQLENS, seqlen, BLOCK_M, IS_PACKED, HAS_MASK)
    if start_m < n_rows:
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        MASK_ROW = MASK + b.to(tl.int64) * stride_mb
        rows = (tok0 + offs_m)[:, None]
        own = _tile_mask(offs_m, n_rows, offs_d, HEAD_DIM, BLOCK_D)
        q = tl.load(_head(Q, b, h, rows, stride_qb, stride_qh, stride_qs) + offs_d[None, :],
                    mask=_tile_mask(offs_m, hi, offs_d, HEAD_DIM, BLOCK_D), other=0.0)
        do = tl.load(_head(DO, b, h, rows, stride_dob, stride_doh, stride_dos) + offs_d[None, :], mask=own, other=0.0)
        o = tl.load(_head(O, b, h, rows, stride_ob, stride_oh, stride_os) + offs_d[None, :], mask=own, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        lse_off = _head(0, b, h, tok0 + offs_m, stride_lb, stride_lh, 1)
        tl.store(DELTA + lse_off, delta, mask=offs_m < n_rows)
        lse2 = tl.load(LSE + lse_off, mask=offs_m < n_rows, other=float("inf")) * LOG2E_C
        K_base = _head(K, b, h, tok0, stride_kb, stride_kh, stride_ks)
        V_base = _head(V, b, h, tok0, stride_vb, stride_vh, stride_vs)
        seed = tl.load(SEED) if HAS_DROPOUT else 0
        bh = b * num_heads + h

        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        first, inner_lo, inner_hi, end = _block_ranges(start_m, lo, hi, holes, window, BLOCK_N, BLOCK_M, WINDOWED)
        for start_n in range(inner_lo, inner_hi, BLOCK_N):  # the main loop: no masks
            dq = _dq_block(dq, q, do, lse2, delta, K_base, V_base, stride_ks, stride_vs, start_n, offs_m, offs_d,
                           MASK_ROW, stride_ms, lo, hi, holes, window, seed, bh, qk_scale, dropout_threshold,
                           dropout_scale, False, HAS_MASK, WINDOWED, HAS_DROPOUT, HEAD_DIM, BLOCK_D, BLOCK_N,
                           DOT_PRECISION)
        for start_n in range(first, inner_lo, BLOCK_N):
            dq = _dq_block(dq, q, do, lse2, delta, K_base, V_base, stride_ks, stride_vs, start_n, offs_m, offs_d,
                           MASK_ROW, stride_ms, lo, hi, holes, window, seed, bh, qk_scale, dropout_threshold,
                           dropout_scale, True, HAS_MASK, WINDOWED, HAS_DROPOUT, HEAD_DIM, BLOCK_D, BLOCK_N,
                           DOT_PRECISION)
        for start_n in range(inner_hi, end, BLOCK_N):
            dq = _dq_block(dq, q, do, lse2, delta, K_base, V_base, stride_ks, stride_vs, start_n, offs_m, offs_d,
                           MASK_ROW, stride_ms, lo, hi, holes, window, seed, bh, qk_scale, dropout_threshold,
                           dropout_scale, True, HAS_MASK, WINDOWED, HAS_DROPOUT, HEAD_DIM, BLOCK_D, BLOCK_N,
                           DOT_PRECISION)
        dq = dq * softmax_scale
        tl.store(_head(DQ, b, h, rows, stride_dqb, stride_dqh, stride_dqs) + offs_d[None, :],
                 dq.to(DQ.dtype.element_ty), mask=own)


@triton.jit
def _dkdv_block(dk, dv, k, v, Q_base, DO_base, LSE_base, DELTA_base, stride_qs, stride_dos, start_m, start_n, offs_n,
                offs_d, hi, window, seed, bh, qk_scale, dropout_threshold, dropout_scale,
                BOUNDARY: tl.constexpr, WINDOWED: tl.constexpr, HAS_DROPOUT: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dV += P~^T dO and dK += dS^T Q over one query block, on transposed [key, query] tiles. Padding queries need no
    mask: their LSE is +inf, so P^T is 0 for them (BOUNDARY: the span's edge and the window band)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_tile(Q_base + offs_m[:, None] * stride_qs + offs_d[None, :], offs_m, hi, offs_d, HEAD_DIM, BLOCK_D,
                   BOUNDARY)
    do = _load_tile(DO_base + offs_m[:, None] * stride_dos + offs_d[None, :], offs_m, hi, offs_d, HEAD_DIM, BLOCK_D,
                    BOUNDARY)
    if BOUNDARY:
        lse2 = tl.load(LSE_base + offs_m, mask=offs_m < hi, other=float("inf")) * LOG2E_C
        delta = tl.load(DELTA_base + offs_m, mask=offs_m < hi, other=0.0)
    else:
        lse2 = tl.load(LSE_base + offs_m) * LOG2E_C
        delta = tl.load(DELTA_base + offs_m)
    qkT = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
    pT = tl.math.exp2(qkT * qk_scale - lse2[None, :])
    if BOUNDARY:
        if WINDOWED:
            pT = tl.where(tl.abs(offs_n[:, None] - offs_m[None, :]) <= window, pT, 0.0)
    dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    if HAS_DROPOUT:
        # the forward's [query, key] numbers, transposed as uint32 (an i1 tile does not go through the shuffle)
        keepT = tl.trans(dropout_bits(seed, offs_m, start_n, bh, BLOCK_N)) >= dropout_threshold
        pdT = tl.where(keepT, pT * dropout_scale, 0.0)
        dpT = tl.where(keepT, dpT * dropout_scale, 0.0)
    else:
        pdT = pT
    dv = tl.dot(pdT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dsT = pT * (dpT - delta[None, :])
    dk = tl.dot(dsT.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, MASK, SPANS, CU_SEQLENS, SEED,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
    stride_lb, stride_lh,
    stride_mb, stride_ms,
    seqlen, num_heads, window, qk_scale, softmax_scale, dropout_threshold, dropout_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_PACKED: tl.constexpr, HAS_MASK: tl.constexpr, WINDOWED: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dV = P~^T dO and dK = scale * dS^T Q for BLOCK_N key rows, looping over the query blocks that see them.
    Padding keys (outside the span or holes) get zero rows."""
    start_n, h, b, tok0, n_rows, lo, hi, holes = _program_tile(SPANS, CU_SEQLENS, seqlen, BLOCK_N, IS_PACKED, HAS_MASK)
    if start_n < n_rows:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        rows = (tok0 + offs_n)[:, None]
        kv_mask = _tile_mask(offs_n, hi, offs_d, HEAD_DIM, BLOCK_D)
        k = tl.load(_head(K, b, h, rows, stride_kb, stride_kh, stride_ks) + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(_head(V, b, h, rows, stride_vb, stride_vh, stride_vs) + offs_d[None, :], mask=kv_mask, other=0.0)
        Q_base = _head(Q, b, h, tok0, stride_qb, stride_qh, stride_qs)
        DO_base = _head(DO, b, h, tok0, stride_dob, stride_doh, stride_dos)
        LSE_base = _head(LSE, b, h, tok0, stride_lb, stride_lh, 1)
        DELTA_base = _head(DELTA, b, h, tok0, stride_lb, stride_lh, 1)
        seed = tl.load(SEED) if HAS_DROPOUT else 0
        bh = b * num_heads + h

        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        # padding queries need no mask (P^T = 0 through their infinite LSE): holes do not split the query range
        first, inner_lo, inner_hi, end = _block_ranges(start_n, lo, hi, holes * 0, window, BLOCK_M, BLOCK_N, WINDOWED)
        for start_m in range(inner_lo, inner_hi, BLOCK_M):  # the main loop: no masks
            dk, dv = _dkdv_block(dk, dv, k, v, Q_base, DO_base, LSE_base, DELTA_base, stride_qs, stride_dos, start_m,
                                 start_n, offs_n, offs_d, hi, window, seed, bh, qk_scale, dropout_threshold,
                                 dropout_scale, False, WINDOWED, HAS_DROPOUT, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
                                 DOT_PRECISION)
        for start_m in range(first, inner_lo, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, Q_base, DO_base, LSE_base, DELTA_base, stride_qs, stride_dos, start_m,
                                 start_n, offs_n, offs_d, hi, window, seed, bh, qk_scale, dropout_threshold,
                                 dropout_scale, True, WINDOWED, HAS_DROPOUT, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
                                 DOT_PRECISION)
        for start_m in range(inner_hi, end, BLOCK_M):
            dk, dv = _dkdv_block(dk, dv, k, v, Q_base, DO_base, LSE_base, DELTA_base, stride_qs, stride_dos, start_m,
                                 start_n, offs_n, offs_d, hi, window, seed, bh, qk_scale, dropout_threshold,
                                 dropout_scale, True, WINDOWED, HAS_DROPOUT, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N,
                                 DOT_PRECISION)
        k_tok = _is_token(MASK + b.to(tl.int64) * stride_mb, stride_ms, offs_n, lo, hi, holes, HAS_MASK)[:, None]
        own = _tile_mask(offs_n, n_rows, offs_d, HEAD_DIM, BLOCK_D)
        dk = tl.where(k_tok, dk * softmax_scale, 0.0)
        dv = tl.where(k_tok, dv, 0.0)
        tl.store(_head(DK, b, h, rows, stride_dkb, stride_dkh, stride_dks) + offs_d[None, :],
                 dk.to(DK.dtype.element_ty), mask=own)
        tl.store(_head(DV, b, h, rows, stride_dvb, stride_dvh, stride_dvs) + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=own)


# ----------------------------------------------------------------------------------------------------------------
# launch configuration: one table, keyed by kernel, tile width and dropout, with per-architecture overrides
# ----------------------------------------------------------------------------------------------------------------
# (kernel, BLOCK_D <= 64, dropout) -> launch parameters for fp16/bf16; _ARCH_CONFIGS[(major, minor)] overrides an
# entry for one architecture. Never keyed on the sequence length. Chosen with the static report
# (benchmarks/static_report.py): no register spills on sm_80/86/89/90/100/120 for head_dim 32/64/128, padded and
# packed, with and without dropout; among the spill-free candidates, the fewest main-loop instructions x warps per
# (query x key) tile element. The dropout variants hold the 8-bit keep lanes and the Philox state in registers too,
# hence their smaller dk/dv query tiles.
def _cfg(block_m, block_n, warps, stages):
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)


_CONFIGS = {
    ("fwd", True, False): _cfg(128, 64, 8, 3),
    ("fwd", True, True): _cfg(128, 64, 8, 3),
    ("fwd", False, False): _cfg(64, 64, 8, 2),
    ("fwd", False, True): _cfg(64, 64, 8, 2),
    ("dq", True, False): _cfg(64, 64, 8, 2),
    ("dq", True, True): _cfg(64, 64, 8, 2),
    ("dq", False, False): _cfg(64, 64, 8, 2),
    ("dq", False, True): _cfg(64, 64, 8, 2),
    ("dkdv", True, False): _cfg(32, 64, 4, 2),
    ("dkdv", True, True): _cfg(16, 64, 4, 2),
    ("dkdv", False, False): _cfg(32, 64, 8, 2),
    ("dkdv", False, True): _cfg(32, 64, 8, 2),
}
# The overrides below are the defaults' spills (bytes/thread, static report) they remove.
_AMPERE_CONSUMER = {  # sm_86 / sm_89: 100 KB of shared memory and 48 warps per SM
    ("fwd", True, False): _cfg(128, 64, 8, 2),  # 3 stages: 8 B at head_dim 32 (packed)
    ("fwd", False, False): _cfg(64, 64, 8, 1),  # 2 stages: 12 B at head_dim 128 (packed)
    ("dq", True, True): _cfg(32, 64, 4, 2),  # 64 query rows x 8 warps: 28 B at head_dim 64 (padded)
}
_ARCH_CONFIGS = {
    (8, 6): _AMPERE_CONSUMER,
    (8, 9): _AMPERE_CONSUMER,
    (9, 0): {("fwd", True, False): _cfg(128, 64, 4, 3)},  # one warpgroup per 128 query rows, spill-free on sm_90
    (10, 0): {("fwd", True, False): _cfg(128, 64, 8, 1)},  # 3 stages: 52 B at head_dim 32 (padded)
    (12, 0): {
        ("fwd", False, False): _cfg(64, 64, 8, 1),  # 2 stages: 16 B at head_dim 128 (packed)
        ("dq", True, True): _cfg(32, 64, 4, 2),  # 64 query rows x 8 warps: 84 B at head_dim 64 (padded)
        ("dq", False, False): _cfg(64, 64, 8, 1),  # 2 stages: 4 B at head_dim 128 (padded)
    },
}
# fp32 (accepted, not a fast path): small query tiles and one stage, so they fit in shared memory at head_dim 128.
_FP32_CONFIG = dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=1)
# The interpreter: small tiles keep the CPU tests quick while still crossing block boundaries. BLOCK_N is a multiple
# of 64 everywhere: the dropout bytes come in groups of 64 key columns (fastbert/ops/_common.py).
_INTERPRETER_CONFIG = dict(BLOCK_M=32, BLOCK_N=64, num_warps=4, num_stages=1)


def _block_d(head_dim: int) -> int:
    """Tile width for head_dim: the next power of two, at least 16 (tl.dot's smallest K)."""
    return max(16, triton.next_power_of_2(head_dim))


def _launch_config(kernel: str, head_dim: int, dtype: torch.dtype, capability, dropout: bool) -> dict:
    """Block sizes, warps and stages for ``kernel`` ("fwd", "dq", "dkdv") on a device of ``capability``."""
    if capability is None:
        return dict(_INTERPRETER_CONFIG)
    if dtype == torch.float32:
        return dict(_FP32_CONFIG)
    key = (kernel, _block_d(head_dim) <= 64, bool(dropout))
    return dict(_ARCH_CONFIGS.get(tuple(capability), {}).get(key, _CONFIGS[key]))


# ----------------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------------
def _layout(q: torch.Tensor, cu_seqlens: Optional[torch.Tensor], max_seqlen: int):
    """(batch, seqlen, heads, is_packed) where seqlen is the padded length or max_seqlen."""
    if cu_seqlens is not None:
        return cu_seqlens.numel() - 1, int(max_seqlen), q.shape[1], True
    return q.shape[0], q.shape[1], q.shape[2], False


def _strides3(t: torch.Tensor, is_packed: bool):
    """(stride_batch, stride_seq, stride_head) of a [B, S, H, D] or [T, H, D] tensor."""
    return (0, t.stride(0), t.stride(1)) if is_packed else (t.stride(0), t.stride(1), t.stride(2))


def _lse_shape(q: torch.Tensor, is_packed: bool):
    return (q.shape[1], q.shape[0]) if is_packed else (q.shape[0], q.shape[2], q.shape[1])  # [H, T] / [B, H, S]


def _lse_strides(lse: torch.Tensor, is_packed: bool):
    return (0, lse.stride(0)) if is_packed else (lse.stride(0), lse.stride(1))


def _mask_args(attention_mask: Optional[torch.Tensor], q: torch.Tensor):
    """(mask, spans, stride_mb, stride_ms): the mask as the kernels read it and its rows' spans (one small launch)."""
    if attention_mask is None:
        return q, q, 0, 0  # dummy pointers, never read (HAS_MASK=False)
    m = attention_mask.view(torch.uint8) if attention_mask.dtype == torch.bool else attention_mask
    batch, seqlen = m.shape
    spans = torch.empty((batch, 3), dtype=torch.int32, device=m.device)
    _row_spans_kernel[(batch,)](m, spans, seqlen, m.stride(0), m.stride(1),
                                BLOCK_R=256 if not _common.interpreting() else 32)
    return m, spans, m.stride(0), m.stride(1)


def _meta(q, is_packed, has_mask, window, dropout_p):
    return dict(
        HEAD_DIM=q.shape[-1], BLOCK_D=_block_d(q.shape[-1]),
        IS_PACKED=is_packed, HAS_MASK=has_mask, WINDOWED=window >= 0, HAS_DROPOUT=dropout_p > 0.0,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _fwd_fake(q, k, v, attention_mask, cu_seqlens, seed, max_seqlen, window, dropout_p, softmax_scale):
    return q.new_empty(q.shape), q.new_empty(_lse_shape(q, cu_seqlens is not None), dtype=torch.float32)


@fused_op("attention_fwd", _fwd_fake)
def _attn_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor], seed: Optional[torch.Tensor], max_seqlen: int, window: int, dropout_p: float,
    softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward: returns (out like q but contiguous, lse fp32 [B, H, S] or [H, T])."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    batch, seqlen, heads, is_packed = _layout(q, cu_seqlens, max_seqlen)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(_lse_shape(q, is_packed), dtype=torch.float32, device=q.device)
    if out.numel() == 0 or batch == 0 or seqlen == 0:
        return out.zero_(), lse.fill_(float("inf"))
    mask, spans, stride_mb, stride_ms = _mask_args(attention_mask, q)
    cfg = _launch_config("fwd", q.shape[-1], q.dtype, _common.device_capability(q.device), dropout_p > 0.0)
    _attn_fwd_kernel[(triton.cdiv(seqlen, cfg["BLOCK_M"]), heads, batch)](
        q, k, v, out, lse, mask, spans, cu_seqlens if is_packed else q, seed if seed is not None else q,
        *_strides3(q, is_packed), *_strides3(k, is_packed), *_strides3(v, is_packed), *_strides3(out, is_packed),
        *_lse_strides(lse, is_packed), stride_mb, stride_ms,
        seqlen, heads, window, softmax_scale * LOG2E, dropout_threshold(dropout_p), dropout_scale(dropout_p),
        **_meta(q, is_packed, attention_mask is not None, window, dropout_p), **cfg,
    )
    return out, lse


def _bwd_fake(dout, q, k, v, out, lse, attention_mask, cu_seqlens, seed, max_seqlen, window, dropout_p, softmax_scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@fused_op("attention_bwd", _bwd_fake)
def _attn_bwd(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    attention_mask: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], seed: Optional[torch.Tensor],
    max_seqlen: int, window: int, dropout_p: float, softmax_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward: returns (dq, dk, dv), contiguous, in q's dtype."""
    q, k, v, out, dout = (_last_dim_contiguous(t) for t in (q, k, v, out, dout))
    batch, seqlen, heads, is_packed = _layout(q, cu_seqlens, max_seqlen)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or batch == 0 or seqlen == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty_like(lse)
    mask, spans, stride_mb, stride_ms = _mask_args(attention_mask, q)
    meta = _meta(q, is_packed, attention_mask is not None, window, dropout_p)
    cu = cu_seqlens if is_packed else q
    sd = seed if seed is not None else q
    scalars = (seqlen, heads, window, softmax_scale * LOG2E, softmax_scale, dropout_threshold(dropout_p),
               dropout_scale(dropout_p))
    capability = _common.device_capability(q.device)

    cfg = _launch_config("dq", q.shape[-1], q.dtype, capability, dropout_p > 0.0)
    _attn_bwd_dq_kernel[(triton.cdiv(seqlen, cfg["BLOCK_M"]), heads, batch)](
        q, k, v, out, dout, lse, delta, dq, mask, spans, cu, sd,
        *_strides3(q, is_packed), *_strides3(k, is_packed), *_strides3(v, is_packed), *_strides3(out, is_packed),
        *_strides3(dout, is_packed), *_strides3(dq, is_packed), *_lse_strides(lse, is_packed), stride_mb, stride_ms,
        *scalars, **meta, **cfg,
    )
    cfg = _launch_config("dkdv", q.shape[-1], q.dtype, capability, dropout_p > 0.0)
    _attn_bwd_dkdv_kernel[(triton.cdiv(seqlen, cfg["BLOCK_N"]), heads, batch)](
        q, k, v, dout, lse, delta, dk, dv, mask, spans, cu, sd,
        *_strides3(q, is_packed), *_strides3(k, is_packed), *_strides3(v, is_packed), *_strides3(dout, is_packed),
        *_strides3(dk, is_packed), *_strides3(dv, is_packed), *_lse_strides(lse, is_packed), stride_mb, stride_ms,
        *scalars, **meta, **cfg,
    )
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------------------------
# autograd
# ----------------------------------------------------------------------------------------------------------------
class AttentionFn(torch.autograd.Function):
    """Autograd for the fused op: saves q, k, v, out, the fp32 LSE and the dropout seed (never P or the mask)."""

    @staticmethod
    def forward(ctx, q, k, v, attention_mask, cu_seqlens, seed, max_seqlen, window, dropout_p, softmax_scale):
        out, lse = _attn_fwd(q, k, v, attention_mask, cu_seqlens, seed, max_seqlen, window, dropout_p, softmax_scale)
        ctx.save_for_backward(q, k, v, out, lse, attention_mask, cu_seqlens, seed)
        ctx.args = (max_seqlen, window, dropout_p, softmax_scale)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, attention_mask, cu_seqlens, seed = ctx.saved_tensors
        dq, dk, dv = _attn_bwd(dout, q, k, v, out, lse, attention_mask, cu_seqlens, seed, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# checks and the functional
# ----------------------------------------------------------------------------------------------------------------
def _check_args(q, k, v, attention_mask, cu_seqlens, max_seqlen, window, dropout_p,
                softmax_scale) -> tuple[int, float, float]:
    """Raise ValueError naming the argument; return (window, dropout_p, softmax_scale) with -1 for no window."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"attention: dtype {q.dtype} is not supported (use float16, bfloat16 or float32)")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"attention: q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    packed = cu_seqlens is not None
    want = 3 if packed else 4
    if q.dim() != want:
        layout = "[total_tokens, heads, head_dim] (packed, with cu_seqlens)" if packed else "[batch, seqlen, heads, head_dim]"
        raise ValueError(f"attention: q, k, v must be {want}-D {layout}, got shape {tuple(q.shape)}")
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head_dim {head_dim} is not supported (any value from 1 to {MAX_HEAD_DIM})")
    dropout_p = check_dropout_p("attention", dropout_p)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    elif (not isinstance(softmax_scale, (int, float)) or isinstance(softmax_scale, bool)
          or not math.isfinite(softmax_scale) or softmax_scale <= 0):
        raise ValueError(f"attention: softmax_scale must be a positive finite float or None, got {softmax_scale!r}")
    if window is None:
        window = -1
    elif isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"attention: window must be None or an int >= 0 (keys with |i - j| <= window), got {window!r}")

    if packed:
        if attention_mask is not None:
            raise ValueError("attention: pass either attention_mask (padded layout) or cu_seqlens (packed layout), not both")
        is_tensor = isinstance(cu_seqlens, torch.Tensor)
        if not is_tensor or cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            got = f"{cu_seqlens.dtype} shape {tuple(cu_seqlens.shape)}" if is_tensor else type(cu_seqlens).__name__
            raise ValueError(f"attention: cu_seqlens must be a 1-D int32 tensor [batch + 1], got {got}")
        if cu_seqlens.device != q.device:
            raise ValueError(f"attention: cu_seqlens is on {cu_seqlens.device} but q is on {q.device}")
        if max_seqlen is None:
            raise ValueError("attention: max_seqlen (the longest sequence, a Python int) is required with cu_seqlens")
        if not isinstance(max_seqlen, (int, torch.SymInt)) or isinstance(max_seqlen, bool) or max_seqlen < 0:
            raise ValueError(f"attention: max_seqlen must be a non-negative int, got {max_seqlen!r}")
        _check_cu_seqlens_values(cu_seqlens, q.shape[0], max_seqlen)
        seqlen = max_seqlen
    else:
        if max_seqlen is not None and max_seqlen != q.shape[1]:
            raise ValueError(
                f"attention: max_seqlen is for the packed layout (cu_seqlens); got max_seqlen={max_seqlen} "
                f"with padded q {tuple(q.shape)}"
            )
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise ValueError(f"attention: attention_mask must be a tensor, got {type(attention_mask).__name__}")
            if tuple(attention_mask.shape) != tuple(q.shape[:2]):
                raise ValueError(
                    f"attention: attention_mask must be the 2-D 0/1 mask [batch, seqlen] = {tuple(q.shape[:2])}, "
                    f"got shape {tuple(attention_mask.shape)}"
                )
            if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
                raise ValueError(
                    f"attention: attention_mask must be a bool or integer 0/1 mask (1 = token), got {attention_mask.dtype}; "
                    "pass the tokenizer's mask, not an additive (extended) float mask"
                )
            if attention_mask.device != q.device:
                raise ValueError(f"attention: attention_mask is on {attention_mask.device} but q is on {q.device}")
        seqlen = q.shape[1]
    batch = cu_seqlens.numel() - 1 if packed else q.shape[0]
    if batch > MAX_BATCH:
        raise ValueError(f"attention: at most {MAX_BATCH} sequences per call (a grid dimension), got {batch}")
    if seqlen > MAX_SEQLEN:
        raise ValueError(f"attention: sequence length {seqlen} exceeds the supported maximum {MAX_SEQLEN}")
    return window, dropout_p, float(softmax_scale)


@padding.host_cached
def _cu_seqlens_facts(cu_seqlens: torch.Tensor) -> tuple[list, bool, int]:
    """(values, non-decreasing, longest length) of cu_seqlens: one device-to-host copy per tensor (a model passes one
    cu_seqlens to every layer; see ``padding.host_cached``)."""
    cu = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    return cu, all(n >= 0 for n in lengths), max(lengths, default=0)


def _check_cu_seqlens_values(cu_seqlens: torch.Tensor, total: int, max_seqlen: int) -> None:
    """cu_seqlens[0] == 0, non-decreasing, cu_seqlens[-1] == total tokens, max length <= max_seqlen.

    The values are read once per tensor (``_cu_seqlens_facts``), never under torch.compile tracing or CUDA-graph
    capture (the checks are skipped there)."""
    if torch.compiler.is_compiling():
        return
    if cu_seqlens.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    cu, non_decreasing, longest = _cu_seqlens_facts(cu_seqlens)
    problem = None
    if cu[0] != 0:
        problem = f"cu_seqlens[0] must be 0, got {cu[0]}"
    elif not non_decreasing:
        problem = f"cu_seqlens must be non-decreasing, got {cu if len(cu) <= 16 else str(cu[:16]) + '...'}"
    elif cu[-1] != total:
        problem = f"cu_seqlens[-1] = {cu[-1]} must equal the number of tokens in q ({total})"
    elif longest > max_seqlen:
        problem = f"max_seqlen = {max_seqlen} is smaller than the longest sequence ({longest})"
    if problem is not None:
        raise ValueError(f"attention: {problem}")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attention_mask: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    max_seqlen: Optional[int] = None,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    window: Optional[int] = None,
) -> torch.Tensor:
    """Bidirectional softmax attention with key padding, an optional sliding window and attention-probability dropout
    (fused, O(seqlen) memory).

    Padded layout: q, k, v ``[batch, seqlen, heads, head_dim]`` and an optional 0/1 ``attention_mask``
    ``[batch, seqlen]`` (bool or integer; 1 = token; any pattern of zeros). Packed layout: q, k, v
    ``[total_tokens, heads, head_dim]`` with int32 ``cu_seqlens [batch + 1]`` and ``max_seqlen`` (a Python int).
    Any head_dim from 1 to 128; float16, bfloat16 or float32 (fp32 uses exact fp32 dots, not TF32).

        out = dropout(softmax(softmax_scale * q k^T + padding bias)) v,  softmax_scale defaults to 1/sqrt(head_dim)

    ``window``: when given, query i attends only to keys j with |i - j| <= window (positions in the sequence;
    ModernBERT's local attention is ``window = local_attention // 2``). Returns a contiguous tensor shaped like q in
    q's dtype. Padding query rows are 0 (never NaN), as is every row of a zero-length sequence. ``dropout_p`` in
    [0, 1): pass 0.0 in eval mode; the Triton kernels apply it rounded to a multiple of 1/256
    (``_common.effective_dropout_p``), the reference path exactly.

    Triton kernels for CUDA tensors, or CPU tensors under TRITON_INTERPRET=1; otherwise
    ``reference.attention_torch`` (the same contract on torch's SDPA, dropout from torch), with a one-time warning
    unless FASTBERT_DISABLE_TRITON=1 (the decision is ``fastbert._backend.use_triton``).

    Packed layout: the cu_seqlens values are checked (one host sync on GPU, repeated only for a new or modified
    tensor; skipped under torch.compile and CUDA-graph capture). The padded layout never syncs.
    """
    window, dropout_p, softmax_scale = _check_args(q, k, v, attention_mask, cu_seqlens, max_seqlen, window, dropout_p,
                                                   softmax_scale)
    if not _backend.use_triton(q, k, v, attention_mask, cu_seqlens, op="attention"):
        return attention_torch(q, k, v, attention_mask, cu_seqlens, max_seqlen, dropout_p, softmax_scale,
                               window if window >= 0 else None)
    seed = draw_seed(q.device) if dropout_p > 0.0 else None
    if cu_seqlens is not None:
        cu_seqlens = cu_seqlens.contiguous()  # the kernels index it with unit stride (a strided view read garbage)
    max_seqlen = max_seqlen if cu_seqlens is not None else q.shape[1]
    return AttentionFn.apply(q, k, v, attention_mask, cu_seqlens, seed, max_seqlen, window, dropout_p, softmax_scale)
