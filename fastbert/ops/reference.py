"""Plain-PyTorch versions of every fused op: the test oracle AND the CPU path.

Each ``*_ref`` function has the same contract as its fused twin in this package (same arguments, same layouts,
same treatment of padding), so tests compare the two directly and the dispatch in each functional op can fall
back here. ``upcast=True`` computes in fp32 and casts back to the input dtype (the "ref32" of the three-way test
rule); ``upcast=False`` computes in the input dtype ("reflp").

Also here: the two attention paths BertModel offers besides "fused" (``eager_attention``, HF's naive
matmul/softmax attention, and ``sdpa_attention``), so the path table (``fastbert.ops.dispatch``) and the benchmarks
share one definition.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .padding import host_values, packed_to_padded, padded_to_packed


# --------------------------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------------------------
def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None, dropout_p: float = 0.0,
                  softmax_scale: float | None = None, dropout_mask: torch.Tensor | None = None, upcast: bool = True,
                  window: int | None = None) -> torch.Tensor:
    """Bidirectional softmax attention with key padding; the oracle of ``fastbert.ops.attention``.

    Padded layout: q, k, v ``[batch, seqlen, heads, head_dim]``, ``attention_mask`` ``[batch, seqlen]`` (1 = token,
    0 = padding) or None. Packed layout: q, k, v ``[total_tokens, heads, head_dim]`` with int32 ``cu_seqlens``
    ``[batch + 1]`` and ``max_seqlen``.

        S = scale * Q K^T  (padding keys, and keys with |i - j| > window, -> -inf),   P = softmax(S),   O = dropout(P) V

    Padded query rows get O = 0 (so a fully padded row is 0, never NaN). ``dropout_mask`` is the boolean keep-mask
    ``[batch, heads, seqlen_q, seqlen_k]`` (packed layout: ``[batch, heads, max_seqlen, max_seqlen]``, per sequence,
    top-left aligned); kept probabilities are scaled by 1 / (1 - dropout_p). Without it, dropout draws from torch.
    """
    if cu_seqlens is not None:
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
        qkv, mask = packed_to_padded(torch.stack((q, k, v), dim=1), cu_seqlens, max_seqlen)
        qp, kp, vp = qkv.unbind(2)
        out = attention_ref(qp, kp, vp, mask, None, None, dropout_p, softmax_scale, dropout_mask, upcast, window)
        return padded_to_packed(out, mask)

    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # [batch, heads, seqlen_q, seqlen_k]
    drop = torch.zeros(scores.shape[-2:], dtype=torch.bool, device=q.device)  # [seqlen_q, seqlen_k]
    if window is not None:
        pos = torch.arange(q.shape[1], device=q.device)
        drop = (pos[:, None] - pos[None, :]).abs() > window
    if attention_mask is not None:
        drop = drop | ~attention_mask.bool()[:, None, None, :]
    # finfo.min rather than -inf: a fully padded row stays finite (its output is zeroed below anyway).
    scores = scores.masked_fill(drop, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        if dropout_mask is None:
            probs = F.dropout(probs, p=dropout_p, training=True)
        else:
            probs = probs.masked_fill(~dropout_mask, 0.0) / (1.0 - dropout_p)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)  # [batch, seqlen, heads, head_dim]
    if attention_mask is not None:
        out = out * attention_mask[:, :, None, None].to(out.dtype)
    return out.to(dtype)


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None, dropout_p: float = 0.0,
                    softmax_scale: float | None = None, window: int | None = None) -> torch.Tensor:
    """``fastbert.ops.attention``'s contract on torch's scaled_dot_product_attention, in the input dtype: the path
    the functional takes where its Triton kernels cannot run (CPU tensors). Same arguments and layouts as
    :func:`attention_ref`; padding query rows are 0; no mask at all when nothing is masked (SDPA's fastest kernel).
    Dropout is torch's (p exactly, not rounded to 1/256 like the kernels). Packed inputs without a window run one
    unmasked SDPA call per sequence (:func:`sdpa_attention_packed`, cu_seqlens read on the host once per tensor);
    under torch.compile, or with a window, they are padded, attended with a mask and packed again."""
    if cu_seqlens is not None:
        if window is None and not torch.compiler.is_compiling():
            return sdpa_attention_packed(q, k, v, cu_seqlens, dropout_p, softmax_scale, bounds=host_values(cu_seqlens))
        if max_seqlen is None:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0
        qkv, mask = packed_to_padded(torch.stack((q, k, v), dim=1), cu_seqlens, max_seqlen)
        qp, kp, vp = qkv.unbind(2)  # [batch, max_seqlen, heads, head_dim] each
        return padded_to_packed(attention_torch(qp, kp, vp, mask, None, None, dropout_p, softmax_scale, window), mask)
    allowed = None  # bool, True = attend: [batch, 1, 1, seqlen] and/or [1, 1, seqlen, seqlen]
    if attention_mask is not None:
        allowed = attention_mask.bool()[:, None, None, :]
    if window is not None:
        pos = torch.arange(q.shape[1], device=q.device)
        band = ((pos[:, None] - pos[None, :]).abs() <= window)[None, None]
        allowed = band if allowed is None else allowed & band
    if allowed is not None:
        # a query row that may attend to nothing (only padding rows can) would come out NaN: let it see every key,
        # its output is zeroed below
        allowed = allowed | ~allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed,
                                         dropout_p=dropout_p, scale=softmax_scale)  # [batch, heads, seqlen, head_dim]
    out = out.transpose(1, 2)
    if attention_mask is not None:
        out = out.masked_fill(~attention_mask.bool()[:, :, None, None], 0.0)
    return out.contiguous()


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """HF's additive mask: [batch, seqlen] 0/1 -> [batch, 1, 1, seqlen] with 0 (keep) or finfo(dtype).min (drop)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    dropout_p: float = 0.0, softmax_scale: float | None = None) -> torch.Tensor:
    """Hugging Face's eager BERT attention: matmul, additive mask, fp32 softmax, dropout, matmul.

    q, k, v ``[batch, seqlen, heads, head_dim]`` -> ``[batch, seqlen, heads, head_dim]``. Like HF, padded query rows
    are computed over the real keys (not zeroed). ``dropout_p`` is applied as given (pass 0.0 in eval mode).
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, heads, seqlen, head_dim]
    scores = torch.matmul(qt, kt.transpose(-1, -2)) * scale  # [batch, heads, seqlen_q, seqlen_k]
    if attention_mask is not None:
        scores = scores + extended_attention_mask(attention_mask, scores.dtype)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout_p, training=dropout_p > 0.0)
    return torch.matmul(probs, vt).transpose(1, 2)  # [batch, seqlen, heads, head_dim]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   dropout_p: float = 0.0, softmax_scale: float | None = None) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention with HF's additive padding mask (same layout as eager)."""
    mask = None if attention_mask is None else extended_attention_mask(attention_mask, q.dtype)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, dropout_p=dropout_p, scale=softmax_scale
    )  # [batch, heads, seqlen, head_dim]
    return out.transpose(1, 2)


def sdpa_attention_packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                          dropout_p: float = 0.0, softmax_scale: float | None = None,
                          bounds: list[int] | None = None) -> torch.Tensor:
    """Packed attention on torch SDPA without padding: one unmasked SDPA call per sequence (q, k, v
    ``[total, heads, head_dim]``, ``bounds`` the host copy of cu_seqlens when the caller has it). The sdpa path's
    padding-free attention: no [batch, max_seqlen] padding, no mask, so SDPA's fastest kernel on every sequence."""
    bounds = cu_seqlens.tolist() if bounds is None else bounds
    out = torch.empty_like(q)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            seq = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))  # [1, heads, n, head_dim]
            out[start:end] = F.scaled_dot_product_attention(*seq, dropout_p=dropout_p, scale=softmax_scale)[0].transpose(0, 1)
    return out


# --------------------------------------------------------------------------------------------------------------
# dropout + residual + LayerNorm, bias + GELU
# --------------------------------------------------------------------------------------------------------------
def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-12,
                   residual: torch.Tensor | None = None, dropout_p: float = 0.0,
                   dropout_mask: torch.Tensor | None = None, upcast: bool = True) -> torch.Tensor:
    """LayerNorm(dropout(x) + residual) over the last dimension; ``dropout_mask`` is the boolean keep-mask of x."""
    dtype = x.dtype
    if upcast:
        x = x.float()
        residual = residual.float() if residual is not None else None
        weight = weight.float()
        bias = bias.float() if bias is not None else None
    if dropout_p > 0.0:
        x = F.dropout(x, dropout_p, training=True) if dropout_mask is None else x.masked_fill(~dropout_mask, 0.0) / (1.0 - dropout_p)
    if residual is not None:
        x = x + residual
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps).to(dtype)


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none", upcast: bool = True) -> torch.Tensor:
    """GELU(x + bias) over the last dimension; ``approximate`` "none" (erf, BERT's "gelu") or "tanh"."""
    dtype = x.dtype
    if upcast:
        x = x.float()
        bias = bias.float() if bias is not None else None
    if bias is not None:
        x = x + bias
    return F.gelu(x, approximate=approximate).to(dtype)
