"""Padded ``[batch, seqlen, ...]`` <-> packed ``[total_tokens, ...]`` layouts: the helpers the model, ``patch()``,
the references and the benchmarks share.

A padded batch carries an HF 0/1 ``attention_mask [batch, seqlen]`` (1 = token). Its packed form keeps the real
tokens in row-major order, with int32 ``cu_seqlens [batch + 1]`` (cumulative lengths from 0) and ``max_seqlen``.
"""
from __future__ import annotations

import functools
import weakref
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


class Unpadded(NamedTuple):
    """Where the real tokens of a padded batch are: flat ``indices`` [total] into ``mask.reshape(-1)``, and the
    packed layout's ``cu_seqlens`` / ``max_seqlen``."""

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


def seqlens_to_cu_seqlens(seqlens: torch.Tensor) -> torch.Tensor:
    """[batch] lengths -> int32 [batch + 1] cumulative offsets starting at 0."""
    return F.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))


def unpad(attention_mask: torch.Tensor, seqlens: torch.Tensor, seqlens_host: torch.Tensor) -> Unpadded:
    """The packed layout of a padded batch, from its mask and its per-row lengths (on the mask's device and on the
    host: the caller made the one device->host copy). No ``nonzero`` (no data-dependent shape, no further sync): a
    stable sort puts the real positions first, in their original order."""
    total = int(seqlens_host.sum())
    flat = attention_mask.reshape(-1).bool()
    indices = torch.argsort((~flat).to(torch.uint8), stable=True)[:total]
    max_seqlen = int(seqlens_host.max()) if seqlens_host.numel() else 0
    return Unpadded(indices, seqlens_to_cu_seqlens(seqlens), max_seqlen)


def pad(packed: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """[total, hidden] rows scattered back to [*shape, hidden] (zeros at padding)."""
    out = packed.new_zeros((shape.numel(), packed.shape[-1])).index_copy(0, indices, packed)
    return out.view(*shape, packed.shape[-1])


def packed_to_padded(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[total, *rest] -> ([batch, max_seqlen, *rest] zero-padded, attention_mask [batch, max_seqlen] int64)."""
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    batch = seqlens.numel()
    mask = torch.arange(max_seqlen, device=x.device)[None, :] < seqlens[:, None]  # [batch, max_seqlen]
    out = x.new_zeros((batch, max_seqlen) + tuple(x.shape[1:]))
    out[mask] = x
    return out, mask.long()


def padded_to_packed(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seqlen, *rest] -> [total, *rest] keeping positions where attention_mask is 1."""
    return x[attention_mask.bool()]


def sequence_of_token(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """The index of the packed sequence each of ``total`` tokens belongs to: int64 [total]."""
    return torch.searchsorted(cu_seqlens[1:].long(), torch.arange(total, device=cu_seqlens.device), right=True)


def packed_position_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Positions restarting at 0 in every packed sequence: int64 [total]."""
    return torch.arange(total, device=cu_seqlens.device) - cu_seqlens[:-1].long()[sequence_of_token(cu_seqlens, total)]


def key_padding_mask(mask: torch.Tensor | None, batch: int, seqlen: int) -> torch.Tensor | None:
    """transformers' attention mask (None, [batch, seqlen] 0/1, [batch, 1, 1|seqlen, seqlen] additive or boolean)
    -> a boolean [batch, seqlen] key mask (True = attend), or None when nothing is masked."""
    if mask is None:
        return None
    if mask.dim() == 2:
        return mask.bool()
    if mask.dim() != 4:
        raise ValueError(f"attention_mask must be 2-D [batch, seqlen] or 4-D [batch, 1, q, k], got shape {tuple(mask.shape)}")
    keep = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    keep = keep[:, 0]  # [batch, 1 | seqlen, seqlen]
    # a padding mask is the same for every query row that has any real key; a key is real if any row may attend
    keep = keep.any(dim=1)  # [batch, seqlen]
    return keep.expand(batch, seqlen)


def host_cached(fn: Callable[[torch.Tensor], object]) -> Callable[[torch.Tensor], object]:
    """``fn(t)`` (which reads ``t`` on the host), recomputed only for another tensor or after ``t`` changed in place
    (weak reference + version counter): every layer of a forward receives the same tensor, and it is read once.
    Inference tensors (``torch.inference_mode``) have no version counter: the same object is trusted not to change in
    place between calls. One slot per decorated function: the most recent tensor."""
    last: list = [None, None, None]  # weak ref to the tensor, its version, fn's result

    @functools.wraps(fn)
    def cached(t: torch.Tensor):
        version = -1 if t.is_inference() else t._version
        ref, seen, value = last
        if ref is None or ref() is not t or seen != version:
            value = fn(t)
            last[:] = [weakref.ref(t), version, value]
        return value

    return cached


@host_cached
def host_values(t: torch.Tensor) -> list:
    """``t.tolist()``, read once per tensor (see :func:`host_cached`): e.g. cu_seqlens' bounds for per-sequence loops."""
    return t.tolist()


@host_cached
def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """Packed sequences in one row of position ids that restart (``DataCollatorWithFlattening``: 0, 1, .., 0, 1, ..,
    or RoBERTa's padding_idx + 1 onwards): (int32 cu_seqlens, max_seqlen), or None when the row is one sequence.
    A sequence starts wherever the position does not grow by one. Reads the boundaries on the host (one sync per
    tensor: :func:`host_cached`)."""
    pos = position_ids.reshape(-1)
    if pos.numel() < 2:
        return None
    starts = torch.nonzero(pos[1:] != pos[:-1] + 1).reshape(-1) + 1
    if not starts.numel():
        return None
    cu = torch.cat([starts.new_zeros(1), starts, starts.new_full((1,), pos.numel())]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())
