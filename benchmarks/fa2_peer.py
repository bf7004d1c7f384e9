"""The floor for the fused attention forward: a minimal FlashAttention-2 forward in Triton.

The algorithm of the Triton fused-attention tutorial (FlashAttention-2): one program per (query block, head,
batch); the query tile stays in registers while the program streams key/value blocks, with the online softmax
in base 2 and the scale folded into the exponent:

    c = softmax_scale * log2(e)
    S_j = Q K_j^T,   m_j = max(m_{j-1}, c * rowmax S_j)
    P_j = 2^(c S_j - m_j),   alpha_j = 2^(m_{j-1} - m_j)
    l_j = alpha_j l_{j-1} + rowsum P_j,   O_j = alpha_j O_{j-1} + P_j V_j
    O = O_n / l_n,   LSE = (m_n + log2 l_n) / log2(e)

No padding mask, no dropout, no bounds checks: ``seqlen`` must be a multiple of ``BLOCK_M`` and ``BLOCK_N``
(what makes it a floor). Layout ``[batch, seqlen, heads, head_dim]`` with any strides and a unit last stride,
like fastbert's padded layout, so the two compile from the same kind of pointer arithmetic. The static compile
report (``benchmarks/static_report.py``) compiles it with the block sizes, warps and stages of fastbert's
forward for the same head_dim, dtype and target, and divides the main-loop instruction counts.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit(do_not_specialize=["seqlen"])
def _fa2_fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    seqlen, num_heads, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program = BLOCK_M query rows of one (batch b, head h). LSE is [batch, heads, seqlen] fp32."""
    b = tl.program_id(2).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)

    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + d[None, :])
    k_ptrs = K + b * stride_kb + h * stride_kh + cols[:, None] * stride_ks + d[None, :]  # [BLOCK_N, HEAD_DIM]
    v_ptrs = V + b * stride_vb + h * stride_vh + cols[:, None] * stride_vs + d[None, :]

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max of c * S (base-2 logits)
    l = tl.zeros([BLOCK_M], tl.float32)  # running sum of 2^(c S - m)
    o = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)  # unnormalized output
    for _ in range(0, seqlen, BLOCK_N):
        s = tl.dot(q, tl.trans(tl.load(k_ptrs)))  # [BLOCK_M, BLOCK_N], fp32
        m_new = tl.maximum(m, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m - m_new)
        l = l * alpha + tl.sum(p, 1)
        o = tl.dot(p.to(V.dtype.element_ty), tl.load(v_ptrs), o * alpha[:, None])
        m = m_new
        k_ptrs += BLOCK_N * stride_ks
        v_ptrs += BLOCK_N * stride_vs

    tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + d[None, :],
             (o / l[:, None]).to(O.dtype.element_ty))
    tl.store(LSE + (b * num_heads + h) * seqlen + rows, (m + tl.math.log2(l)) * LN2)


def fa2_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, softmax_scale: float | None = None,
                BLOCK_M: int = 128, BLOCK_N: int = 64, num_warps: int = 4, num_stages: int = 3):
    """q, k, v ``[batch, seqlen, heads, head_dim]`` (fp16/bf16, unit last stride) -> (out like q, lse fp32
    ``[batch, heads, seqlen]``). seqlen must be a multiple of BLOCK_M and BLOCK_N (no bounds checks)."""
    batch, seqlen, heads, head_dim = q.shape
    if seqlen % BLOCK_M or seqlen % BLOCK_N:
        raise ValueError(f"fa2_forward: seqlen {seqlen} must be a multiple of BLOCK_M={BLOCK_M} and BLOCK_N={BLOCK_N}")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("fa2_forward: q, k, v need a unit last stride")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seqlen), dtype=torch.float32, device=q.device)
    _fa2_fwd_kernel[(seqlen // BLOCK_M, heads, batch)](
        q, k, v, out, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        seqlen, heads, scale * _LOG2E,
        HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps, num_stages=num_stages,
    )
    return out, lse
