"""Which ops a model runs: the one path table and the one policy.

* :func:`kernels` maps a path name ("eager", "sdpa", "fused") to a :class:`Kernels` table, the five operations an
  encoder layer needs. Layers keep the table they were given and call its entries; no forward tests a path name.
* :func:`choose_path` is the policy: which path ``attn_implementation`` means on a device ("auto" = the fastest
  correct one there) and when a padded batch is unpadded. The models, ``fastbert.patch``, the training CLIs, the
  benchmarks and ``fastbert.info`` all ask it.

Whether a fused op then launches its Triton kernel or its PyTorch reference for given tensors is the other,
separate decision: ``fastbert._backend.use_triton``, asked only by the fused functionals.

Importing this module is cheap: the Triton modules are imported when the "fused" table is first built.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ATTN_IMPLEMENTATIONS, GELU_APPROXIMATE
from . import padding, reference
from .linear import dense, linear

PATHS = ("eager", "sdpa", "fused")

# Unpad a padded batch when at least this fraction of it is padding; None = never on its own ("always" forces it).
# Measured with the unpad sweep of benchmarks/bench_bert.py (README, Benchmarks). "sdpa" (the CPU default): on the
# 2-core x86 CPU, MiniLM / BERT-base 8 x 256 fp32 inference, padded/unpadded time is 0.89x / 0.96x with no padding
# (the gather, scatter and per-sequence calls cost more than a mask-free padded batch), 1.02x / 1.11x at 3%,
# 1.12x / 1.20x at 12.5%: break-even lies below 3%. Re-measured with the dense layers on oneDNN (fastbert.ops.linear,
# twice as fast here, so the gather/scatter weigh more), MiniLM, interleaved rounds: 0.97x at 0%, 1.08x at 6%, 1.12x
# at 12.5%: the break-even still lies below 6%. "fused": 10%, to be re-measured on a GPU.
UNPAD_MIN_PADDING = {"eager": None, "sdpa": 0.03, "fused": 0.10}


@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """What self-attention needs besides q, k, v: the padding mask (padded layout) or the packing (packed layout)."""

    attention_mask: torch.Tensor | None = None  # [batch, seqlen] 0/1, padded layout
    cu_seqlens: torch.Tensor | None = None  # int32 [batch + 1], packed layout
    max_seqlen: int | None = None

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None


class Kernels(NamedTuple):
    """The operations of one path. Shapes: hidden ``[..., hidden]`` (padded [batch, seqlen, hidden] or packed
    [total, hidden]); q, k, v ``[..., heads, head_dim]``. ``dropout_p`` is applied as given (0.0 in eval mode)."""

    name: str
    # (hidden, query, key, value: nn.Linear, heads) -> q, k, v
    project_qkv: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    # (q, k, v, attn: AttentionInputs, dropout_p) -> out [..., heads, head_dim]
    attention: Callable[..., torch.Tensor]
    # (x, residual, ln: nn.LayerNorm, dropout_p) -> LayerNorm(dropout(x) + residual)
    add_layer_norm: Callable[..., torch.Tensor]
    # (x, ln: nn.LayerNorm) -> LayerNorm(x)
    layer_norm: Callable[..., torch.Tensor]
    # (x, dense: nn.Linear, act: str) -> act(dense(x)), act one of config.HIDDEN_ACTS
    dense_act: Callable[..., torch.Tensor]

    def __reduce__(self):
        # pickled and deep-copied by name: a model that holds its table pickles, and a copy shares the one table
        return kernels, (self.name,)


# ----------------------------------------------------------------------------------------------------------------
# eager / sdpa entries: Hugging Face's own computations, op for op
# ----------------------------------------------------------------------------------------------------------------
def _project_qkv(hidden, query: nn.Linear, key: nn.Linear, value: nn.Linear, heads: int):
    heads_shape = hidden.shape[:-1] + (heads, query.out_features // heads)  # not -1: zero tokens must reshape too
    return tuple(dense(hidden, proj).view(heads_shape) for proj in (query, key, value))  # [..., heads, head_dim] each


def _padded_only(fn: Callable) -> Callable:
    """An attention entry from a padded-only function: packed inputs are padded (q, k, v in one scatter), attended
    and packed again."""

    def attention(q, k, v, attn: AttentionInputs, dropout_p: float):
        if not attn.packed:
            return fn(q, k, v, attn.attention_mask, dropout_p)
        qkv, mask = padding.packed_to_padded(torch.stack((q, k, v), dim=1), attn.cu_seqlens, attn.max_seqlen)
        qp, kp, vp = qkv.unbind(2)  # [batch, max_seqlen, heads, head_dim] each
        return padding.padded_to_packed(fn(qp, kp, vp, mask, dropout_p), mask)

    return attention


def _sdpa_attention(q, k, v, attn: AttentionInputs, dropout_p: float):
    """The sdpa path: transformers' SDPA attention on padded batches; packed batches run one unmasked SDPA call per
    sequence (no padding rebuilt, SDPA's fastest kernel), with cu_seqlens read on the host once per forward."""
    if not attn.packed:
        return reference.sdpa_attention(q, k, v, attn.attention_mask, dropout_p)
    # one SDPA call per sequence (the padded form under torch.compile): the functional's torch path does exactly that
    return reference.attention_torch(q, k, v, cu_seqlens=attn.cu_seqlens, max_seqlen=attn.max_seqlen,
                                     dropout_p=dropout_p)


def _in_place(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """May an eager/sdpa entry write into ``x``? Only when no gradient flows (inference, or frozen weights): ``x`` is
    always a fresh output of its caller (a dense layer, an embedding lookup), and on CPU every avoided
    [tokens, features] allocation saves its page faults (``benchmarks/bench_hf.py``: in-place activation and residual
    sum make the MiniLM FFN block ~10% faster)."""
    return not (x.requires_grad or any(o.requires_grad for o in others))


def _add_layer_norm(x, residual, ln: nn.LayerNorm, dropout_p: float):
    if dropout_p == 0.0 and _in_place(x, residual) and residual.dtype == x.dtype and torch.broadcast_shapes(
            x.shape, residual.shape) == x.shape:
        return _layer_norm(x.add_(residual), ln)
    return ln(F.dropout(x, dropout_p, training=dropout_p > 0.0) + residual)


def _layer_norm(x, ln: nn.LayerNorm):
    # not ln(x): fastbert.patch gives the embeddings' LayerNorm a forward that calls this entry
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


# ----------------------------------------------------------------------------------------------------------------
# fused entries: fastbert's ops (Triton kernels, or their references where Triton cannot run)
# ----------------------------------------------------------------------------------------------------------------
def _fused_kernels() -> Kernels:
    from .fused_attention import attention
    from .fused_gelu import bias_gelu
    from .fused_layer_norm import layer_norm

    def project_qkv(hidden, query: nn.Linear, key: nn.Linear, value: nn.Linear, heads: int):
        # one [3*hidden] GEMM instead of three; q, k, v are strided views of its output (the kernel takes strides)
        weight = torch.cat([query.weight, key.weight, value.weight])  # [3*hidden, hidden]
        bias = torch.cat([query.bias, key.bias, value.bias])
        head_dim = query.out_features // heads  # explicit (not -1): a batch of zero tokens must reshape too
        qkv = linear(hidden, weight, bias).view(hidden.shape[:-1] + (3, heads, head_dim))  # [..., 3, heads, head_dim]
        return qkv.unbind(-3)

    def fused_attention(q, k, v, attn: AttentionInputs, dropout_p: float):
        return attention(q, k, v, attention_mask=attn.attention_mask, cu_seqlens=attn.cu_seqlens,
                         max_seqlen=attn.max_seqlen, dropout_p=dropout_p)

    def add_layer_norm(x, residual, ln: nn.LayerNorm, dropout_p: float):
        return layer_norm(x, ln.weight, ln.bias, ln.eps, residual=residual, dropout_p=dropout_p)

    def plain_layer_norm(x, ln: nn.LayerNorm):
        return layer_norm(x, ln.weight, ln.bias, ln.eps)

    def dense_act(x, layer: nn.Linear, act: str):
        if act not in GELU_APPROXIMATE:
            return dense(x, layer, act)  # relu: nothing to fuse
        # the bias add moves out of the GEMM into the GELU kernel
        return bias_gelu(linear(x, layer.weight), layer.bias, approximate=GELU_APPROXIMATE[act])

    return Kernels("fused", project_qkv, fused_attention, add_layer_norm, plain_layer_norm, dense_act)


@functools.lru_cache(maxsize=None)
def kernels(path: str) -> Kernels:
    """The table of ``path`` ("eager", "sdpa" or "fused"); built once per path."""
    if path == "fused":
        return _fused_kernels()
    if path == "eager":
        return Kernels("eager", _project_qkv, _padded_only(reference.eager_attention), _add_layer_norm, _layer_norm,
                       dense)
    if path == "sdpa":
        return Kernels("sdpa", _project_qkv, _sdpa_attention, _add_layer_norm, _layer_norm, dense)
    raise ValueError(f"unknown path {path!r} (one of {PATHS})")


# ----------------------------------------------------------------------------------------------------------------
# the policy
# ----------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Path:
    """A resolved choice: the kernel table and when to unpad a padded batch."""

    name: str  # "eager", "sdpa" or "fused"
    kernels: Kernels
    unpad_min_padding: float | None  # unpad when at least this fraction is padding; None = never on its own

    def unpads(self, real_tokens: int, positions: int, override: str = "auto") -> bool:
        """Should a padded batch of ``positions`` slots holding ``real_tokens`` tokens run padding-free?
        ``override``: "auto" (this path's rule), "always" or "never"."""
        if override not in ("auto", "always", "never"):
            raise ValueError(f"unpad must be 'auto', 'always' or 'never', got {override!r}")
        if override != "auto":
            return override == "always"
        if self.unpad_min_padding is None or positions == 0:
            return False
        return 1.0 - real_tokens / positions >= self.unpad_min_padding

    def unpad(self, mask: torch.Tensor, override: str = "auto") -> tuple[padding.Unpadded | None, int]:
        """(packed layout or None, real tokens) of a padded batch with boolean/0-1 key ``mask [batch, seqlen]``: the
        layout when :meth:`unpads` says so. Reads the row lengths on the host (the one device-to-host copy)."""
        seqlens = mask.sum(1, dtype=torch.int32)
        seqlens_host = seqlens.cpu()
        real = int(seqlens_host.sum())
        if not self.unpads(real, mask.numel(), override):
            return None, real
        return padding.unpad(mask, seqlens, seqlens_host), real


def choose_path(attn_implementation: str, device: torch.device | str | None = None) -> Path:
    """THE policy: what ``attn_implementation`` runs on ``device`` (default: CPU).

    "auto" is the fastest correct path for the device: "fused" on CUDA when Triton is usable there, else "sdpa"
    (on CPU the fused ops could only run their PyTorch references). "eager", "sdpa" and "fused" are taken as given.
    """
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
    name = attn_implementation
    if name == "auto":
        name = "fused" if _triton_runs_on(torch.device(device if device is not None else "cpu")) else "sdpa"
    return Path(name, kernels(name), UNPAD_MIN_PADDING[name])


def _triton_runs_on(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    from .. import _backend  # imports Triton: only asked about a CUDA device

    return _backend.triton_status()[0]
