"""Bad inputs to every public entry point give a ValueError or TypeError that names the argument: never a crash, a
hang, a NaN output or an opaque internal error. The model (fastbert.BertModel), the functional ops (attention,
layer_norm, bias_gelu) and the collator (MLMCollator, collate; its C++ cases run in a subprocess, so a crash there
fails these tests instead of killing the run). Tables of named cases plus hypothesis sweeps around them.

The case tables (``MODEL_CASES``, ``OP_CASES``, ``COLLATOR_CASES``) are also what the README's reliability table
lists: case -> the exception and the start of its message.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastbert
from fastbert.data import MLMCollator, SpecialTokens, collate, mask_tokens

SWEEP = settings(max_examples=25, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
VOCAB, MAX_POS = 300, 64  # tiny_config's vocab_size and max_position_embeddings
INT64_MAX = 2**63 - 1


def _raises(call, exc, match: str):
    """call() raises ``exc`` (a type or tuple) with a message matching ``match`` (which names the argument)."""
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------------------
class Batch(NamedTuple):
    ids: torch.Tensor  # [3, 11] padded
    mask: torch.Tensor  # [3, 11] 0/1
    pids: torch.Tensor  # [21] packed
    cu: torch.Tensor  # int32 [4]
    ms: int


def make_batch(padded_batch, packed_batch) -> Batch:
    padded = padded_batch("right", batch=3, seqlen=11)
    packed = packed_batch(padded)
    return Batch(padded["input_ids"], padded["attention_mask"], packed["input_ids"], packed["cu_seqlens"],
                 packed["max_seqlen"])


@functools.lru_cache(maxsize=None)
def make_model(tiny_config, path: str = "eager", head: str = "BertModel"):
    torch.manual_seed(0)
    return getattr(fastbert, head)(tiny_config(num_hidden_layers=1, attn_implementation=path)).eval()


def _ints(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


ELSEWHERE = "meta"  # a device other than the (CPU) model's, available on every machine

# name -> (call(model, batch), exception, regex the message must match: it names the argument)
MODEL_CASES = {
    "input_ids negative": (
        lambda m, b: m(b.ids.index_fill(1, torch.tensor([2]), -1), b.mask),
        ValueError, r"^input_ids: token id outside \[0, vocab_size=300\)"),
    "input_ids >= vocab_size": (
        lambda m, b: m(b.ids.index_fill(1, torch.tensor([2]), VOCAB), b.mask),
        ValueError, r"^input_ids: token id outside"),
    "input_ids packed >= vocab_size": (
        lambda m, b: m(b.pids + VOCAB, cu_seqlens=b.cu, max_seqlen=b.ms),
        ValueError, r"^input_ids: token id outside"),
    "input_ids longer than max_position_embeddings": (
        lambda m, b: m(torch.ones(1, MAX_POS + 1, dtype=torch.long)),
        ValueError, r"^input_ids: sequence length 65 exceeds max_pos"),
    "packed max_seqlen > max_position_embeddings": (
        lambda m, b: m(torch.ones(MAX_POS + 1, dtype=torch.long), cu_seqlens=_ints([0, MAX_POS + 1]),
                       max_seqlen=MAX_POS + 1),
        ValueError, r"^max_seqlen=65 exceeds max_position_embeddings"),
    "input_ids float": (lambda m, b: m(b.ids.float(), b.mask), ValueError, r"^input_ids must be an integer tensor"),
    "input_ids bool": (lambda m, b: m(b.ids.bool(), b.mask), ValueError, r"^input_ids must be an integer tensor"),
    "input_ids int16": (lambda m, b: m(b.ids.short(), b.mask), ValueError, r"^input_ids must be an integer tensor"),
    "input_ids uint8": (
        lambda m, b: m(b.ids.clamp(max=255).to(torch.uint8), b.mask),
        ValueError, r"^input_ids must be an integer tensor"),
    "input_ids a list": (lambda m, b: m(b.ids.tolist(), b.mask), ValueError, r"^input_ids must be an integer tensor"),
    "input_ids 1-D without cu_seqlens": (lambda m, b: m(b.pids), ValueError, r"^input_ids must be \[batch, seqlen\]"),
    "input_ids 3-D": (lambda m, b: m(b.ids[None]), ValueError, r"^input_ids must be \[batch, seqlen\]"),
    "input_ids 2-D with cu_seqlens": (
        lambda m, b: m(b.ids, cu_seqlens=b.cu, max_seqlen=b.ms),
        ValueError, r"^input_ids must be 1-D \[total_tokens\] with cu_seqlens"),
    "input_ids on another device": (
        lambda m, b: m(b.ids.to(ELSEWHERE), b.mask.to(ELSEWHERE)),
        ValueError, r"^input_ids is on meta but the model is on"),
    "empty batch (0 rows)": (lambda m, b: m(b.ids[:0], b.mask[:0]), ValueError, r"^input_ids: empty batch"),
    "empty batch (0 columns)": (lambda m, b: m(b.ids[:, :0], b.mask[:, :0]), ValueError, r"^input_ids: empty batch"),
    "empty packed batch (cu_seqlens [0])": (
        lambda m, b: m(b.pids[:0], cu_seqlens=_ints([0]), max_seqlen=0),
        ValueError, r"^cu_seqlens: empty batch"),
    "packed batch of zero-length sequences only": (
        lambda m, b: m(b.pids[:0], cu_seqlens=_ints([0, 0, 0]), max_seqlen=0),
        ValueError, r"^input_ids: empty batch \(no tokens\)"),
    "attention_mask int with 2": (
        lambda m, b: m(b.ids, b.mask * 2),
        ValueError, r"^attention_mask must hold only 0 and 1"),
    "attention_mask int with -1": (
        lambda m, b: m(b.ids, -b.mask),
        ValueError, r"^attention_mask must hold only 0 and 1"),
    "attention_mask float 0.5": (
        lambda m, b: m(b.ids, b.mask * 0.5),
        ValueError, r"^attention_mask must hold only 0 and 1"),
    "attention_mask float NaN": (
        lambda m, b: m(b.ids, b.mask.float().masked_fill(b.mask == 0, math.nan)),
        ValueError, r"^attention_mask must hold only 0 and 1"),
    "attention_mask additive -10000": (
        lambda m, b: m(b.ids, (1.0 - b.mask.float()) * -10000.0),
        ValueError, r"^attention_mask must hold only 0 and 1.*not an additive"),
    "attention_mask additive -inf": (
        lambda m, b: m(b.ids, (1.0 - b.mask.float()) * -math.inf),
        ValueError, r"^attention_mask must hold only 0 and 1.*not an additive"),
    "attention_mask complex": (
        lambda m, b: m(b.ids, b.mask.to(torch.complex64)),
        ValueError, r"^attention_mask must be a bool, integer or float 0/1 mask"),
    "attention_mask other shape": (
        lambda m, b: m(b.ids, b.mask[:, :5]),
        ValueError, r"^attention_mask must have the shape of input_ids"),
    "attention_mask 4-D [batch, 1, 1, seqlen]": (
        lambda m, b: m(b.ids, b.mask[:, None, None, :]),
        ValueError, r"^attention_mask must have the shape of input_ids"),
    "attention_mask a list": (lambda m, b: m(b.ids, b.mask.tolist()), ValueError, r"^attention_mask must be a tensor"),
    "attention_mask on another device": (
        lambda m, b: m(b.ids, b.mask.to(ELSEWHERE)),
        ValueError, r"^attention_mask is on meta but input_ids is on"),
    "attention_mask with cu_seqlens": (
        lambda m, b: m(b.pids, torch.ones_like(b.pids), cu_seqlens=b.cu, max_seqlen=b.ms),
        ValueError, r"^attention_mask must be None with cu_seqlens"),
    "token_type_ids >= type_vocab_size": (
        lambda m, b: m(b.ids, b.mask, token_type_ids=torch.full_like(b.ids, 2)),
        ValueError, r"^token_type_ids: value outside \[0, type_vocab_size=2\)"),
    "token_type_ids float": (
        lambda m, b: m(b.ids, b.mask, token_type_ids=torch.zeros(3, 11)),
        ValueError, r"^token_type_ids must be an integer tensor"),
    "position_ids >= max_position_embeddings": (
        lambda m, b: m(b.ids, b.mask, position_ids=torch.full_like(b.ids, MAX_POS)),
        ValueError, r"^position_ids: value outside"),
    "cu_seqlens not increasing": (
        lambda m, b: m(b.pids, cu_seqlens=_ints([0, 11, 5, 21]), max_seqlen=11),
        ValueError, r"^cu_seqlens must start at 0, never decrease"),
    "cu_seqlens not starting at 0": (
        lambda m, b: m(b.pids, cu_seqlens=_ints([1, 11, 17, 21]), max_seqlen=11),
        ValueError, r"^cu_seqlens must start at 0"),
    "cu_seqlens[-1] != len(input_ids)": (
        lambda m, b: m(b.pids[:-1], cu_seqlens=b.cu, max_seqlen=b.ms),
        ValueError, r"^cu_seqlens must .*end at len\(input_ids\)"),
    "cu_seqlens int64": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu.long(), max_seqlen=b.ms),
        ValueError, r"^cu_seqlens must be a 1-D int32 tensor \[batch \+ 1\], got torch.int64"),
    "cu_seqlens 2-D": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu[None], max_seqlen=b.ms),
        ValueError, r"^cu_seqlens must be a 1-D int32 tensor"),
    "cu_seqlens a list": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu.tolist(), max_seqlen=b.ms),
        ValueError, r"^cu_seqlens must be a 1-D int32 tensor \[batch \+ 1\], got list"),
    "cu_seqlens on another device": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu.to(ELSEWHERE), max_seqlen=b.ms),
        ValueError, r"^cu_seqlens is on meta but input_ids is on"),
    "max_seqlen smaller than the longest": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu, max_seqlen=b.ms - 1),
        ValueError, r"^max_seqlen=10 is smaller than the longest sequence"),
    "max_seqlen negative": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu, max_seqlen=-1),
        ValueError, r"^max_seqlen must be a non-negative int"),
    "max_seqlen float": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu, max_seqlen=float(b.ms)),
        ValueError, r"^max_seqlen must be a non-negative int"),
    "max_seqlen tensor": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu, max_seqlen=torch.tensor(b.ms)),
        ValueError, r"^max_seqlen must be a non-negative int"),
    "max_seqlen bool": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu, max_seqlen=True),
        ValueError, r"^max_seqlen must be a non-negative int"),
    "max_seqlen missing": (
        lambda m, b: m(b.pids, cu_seqlens=b.cu),
        ValueError, r"^max_seqlen must be a non-negative int"),
    "max_seqlen with a padded batch": (
        lambda m, b: m(b.ids, b.mask, max_seqlen=5),
        ValueError, r"^max_seqlen is for the packed layout"),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_model_bad_input(case, tiny_config, padded_batch, packed_batch):
    call, exc, match = MODEL_CASES[case]
    model, b = make_model(tiny_config), make_batch(padded_batch, packed_batch)
    _raises(lambda: call(model, b), exc, match)


@SWEEP
@given(row=st.integers(0, 2), col=st.integers(0, 10), packed=st.booleans(),
       dtype=st.sampled_from([torch.int64, torch.int32]),
       value=st.one_of(st.integers(-2**63, -1), st.integers(VOCAB, INT64_MAX)))
def test_model_ids_out_of_range_sweep(row, col, packed, dtype, value, tiny_config, padded_batch, packed_batch):
    if dtype == torch.int32:
        assume(-2**31 <= value < 2**31)
    model, b = make_model(tiny_config), make_batch(padded_batch, packed_batch)
    if packed:
        ids = b.pids.to(dtype).index_fill(0, torch.tensor([row * 7 % len(b.pids)]), value)
        _raises(lambda: model(ids, cu_seqlens=b.cu, max_seqlen=b.ms), ValueError, r"^input_ids: token id outside")
    else:
        ids = b.ids.to(dtype)
        ids[row, col] = value
        _raises(lambda: model(ids, b.mask), ValueError, r"^input_ids: token id outside")


@SWEEP
@given(seqlen=st.integers(MAX_POS + 1, 3 * MAX_POS), packed=st.booleans())
def test_model_too_long_sweep(seqlen, packed, tiny_config):
    model = make_model(tiny_config)
    ids = torch.full((seqlen,), 7)
    if packed:
        _raises(lambda: model(ids, cu_seqlens=_ints([0, seqlen]), max_seqlen=seqlen), ValueError,
                r"^max_seqlen=\d+ exceeds max_position_embeddings")
    else:
        _raises(lambda: model(ids[None]), ValueError, r"^input_ids: sequence length \d+ exceeds max_position")


mask_values = st.one_of(
    st.tuples(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
              st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.sampled_from([torch.int64, torch.int32, torch.int8]), st.integers(-128, 127)),
)


@SWEEP
@given(dtype_value=mask_values, row=st.integers(0, 2), col=st.integers(0, 10))
def test_model_mask_values_sweep(dtype_value, row, col, tiny_config, padded_batch, packed_batch):
    """A mask holding anything but 0 and 1 (an additive mask, NaN, 2, ...) is refused, whatever its dtype."""
    dtype, value = dtype_value
    model, b = make_model(tiny_config), make_batch(padded_batch, packed_batch)
    mask = b.mask.to(dtype)
    mask[row, col] = torch.tensor(value, dtype=torch.float64 if dtype.is_floating_point else torch.int64).to(dtype)
    assume(mask[row, col].item() not in (0, 1))  # e.g. a tiny float rounded to 0 in the dtype is a valid mask
    _raises(lambda: model(b.ids, mask), ValueError, r"^attention_mask must hold only 0 and 1")


@st.composite
def bad_cu_seqlens(draw):
    lengths = draw(st.lists(st.integers(0, 8), min_size=2, max_size=5))
    assume(sum(lengths) > 0)
    cu = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    kind = draw(st.sampled_from(["start", "decrease", "end", "int64", "small max_seqlen"]))
    total, max_seqlen = cu[-1], max(lengths)
    if kind == "start":
        cu[0] = draw(st.integers(1, 50).filter(lambda v: v != 0))
    elif kind == "decrease":
        i = draw(st.integers(1, len(cu) - 2))
        cu[i] = cu[i + 1] + draw(st.integers(1, 5))
        max_seqlen = MAX_POS  # only the decrease is wrong
    elif kind == "end":
        total += draw(st.sampled_from([-1, 1, 2]))
        assume(total >= 1)
    elif kind == "small max_seqlen":
        max_seqlen -= draw(st.integers(1, max_seqlen))
    dtype = torch.int64 if kind == "int64" else torch.int32
    match = r"^max_seqlen=\d+ is smaller" if kind == "small max_seqlen" else r"^cu_seqlens must"
    return torch.tensor(cu, dtype=dtype), total, max_seqlen, match


@SWEEP
@given(case=bad_cu_seqlens())
def test_model_cu_seqlens_sweep(case, tiny_config):
    cu, total, max_seqlen, match = case
    model = make_model(tiny_config)
    _raises(lambda: model(torch.full((total,), 7), cu_seqlens=cu, max_seqlen=max_seqlen), ValueError, match)


def _all_finite(out) -> bool:
    flat = []
    for value in out.to_tuple():
        flat.extend(value if isinstance(value, tuple) else (value,))
    return all(torch.isfinite(t).all() for t in flat)


@pytest.mark.parametrize("path", ["eager", "sdpa", "fused"])
@settings(SWEEP, max_examples=8)
@given(padded_rows=st.lists(st.booleans(), min_size=3, max_size=3),
       layout=st.sampled_from(["never", "always", "packed"]))
def test_all_padding_rows_give_finite_outputs(path, padded_rows, layout, tiny_config, padded_batch, packed_batch):
    """Rows that are all padding (every row, too), or zero-length packed sequences: finite outputs, no error."""
    model = make_model(tiny_config, path, "BertForPreTraining")
    model.bert.unpad = "always" if layout == "always" else "never"
    b = make_batch(padded_batch, packed_batch)
    mask = b.mask.clone()
    mask[torch.tensor(padded_rows)] = 0
    if layout == "packed":
        assume(not all(padded_rows))  # no tokens at all is an empty batch (a ValueError, see MODEL_CASES)
        lengths = mask.sum(1)
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int()
        out = model(b.ids[mask.bool()], cu_seqlens=cu, max_seqlen=int(lengths.max()), output_hidden_states=True)
    else:
        out = model(b.ids * mask, mask, output_hidden_states=True)
    assert _all_finite(out)


# ----------------------------------------------------------------------------------------------------------------
# the functional ops
# ----------------------------------------------------------------------------------------------------------------
def _attention(**kwargs):
    from fastbert.ops import attention

    return attention(**kwargs)


def _qkv(shape=(2, 7, 2, 16), dtype=torch.float32, device="cpu"):
    return tuple(torch.randn(shape, dtype=dtype, device=device) for _ in range(3))


def _attn(device, **over):
    """attention() on a small valid padded batch, with the arguments in ``over`` replaced."""
    q, k, v = _qkv(device=device)
    args = dict(q=q, k=k, v=v, attention_mask=torch.ones(2, 7, dtype=torch.long, device=device))
    return _attention(**{**args, **over})


def _attn_packed(device, **over):
    q, k, v = _qkv((7, 2, 16), device=device)
    args = dict(q=q, k=k, v=v, cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32, device=device), max_seqlen=4)
    return _attention(**{**args, **over})


def _ln(device, **over):
    from fastbert.ops import layer_norm

    x = torch.randn(3, 5, 32, device=device)
    args = dict(x=x, weight=torch.ones(32, device=device), bias=torch.zeros(32, device=device), eps=1e-12,
                residual=torch.randn(3, 5, 32, device=device))
    return layer_norm(**{**args, **over})


def _gelu(device, **over):
    from fastbert.ops import bias_gelu

    args = dict(x=torch.randn(3, 5, 32, device=device), bias=torch.zeros(32, device=device))
    return bias_gelu(**{**args, **over})


def _other(device) -> str:
    return "meta" if torch.device(device).type == "cpu" else "cpu"


# name -> (call(device), exception, regex naming the argument)
OP_CASES = {
    "attention q not a tensor": (lambda d: _attn(d, q=[[1.0]]), ValueError, r"^attention: q must be a torch.Tensor"),
    "attention k shape differs": (
        lambda d: _attn(d, k=torch.randn(2, 5, 2, 16, device=d)),
        ValueError, r"^attention: q, k, v must have the same shape"),
    "attention q 3-D without cu_seqlens": (
        lambda d: _attn(d, q=torch.randn(7, 2, 16, device=d)),
        ValueError, r"^attention: q, k, v must have the same shape"),
    "attention q, k, v 3-D without cu_seqlens": (
        lambda d: _attn(d, **dict(zip("qkv", _qkv((7, 2, 16), device=d))), attention_mask=None),
        ValueError, r"^attention: q, k, v must be 4-D"),
    "attention q, k, v 5-D": (
        lambda d: _attn(d, **dict(zip("qkv", _qkv((1, 2, 7, 2, 16), device=d)))),
        ValueError, r"^attention: q, k, v must be 4-D"),
    "attention q, k, v 4-D with cu_seqlens": (
        lambda d: _attn_packed(d, **dict(zip("qkv", _qkv(device=d)))),
        ValueError, r"^attention: q, k, v must be 3-D"),
    "attention dtypes differ": (
        lambda d: _attn(d, q=torch.randn(2, 7, 2, 16, device=d).half()),
        ValueError, r"^attention: q, k, v must share a dtype"),
    "attention int tensors": (
        lambda d: _attn(d, **dict(zip("qkv", (t.int() for t in _qkv(device=d))))),
        ValueError, r"^attention: dtype torch.int32 is not supported"),
    "attention float64": (
        lambda d: _attn(d, **dict(zip("qkv", (t.double() for t in _qkv(device=d))))),
        ValueError, r"^attention: dtype torch.float64 is not supported"),
    "attention q on another device": (
        lambda d: _attn(d, q=torch.randn(2, 7, 2, 16, device=_other(d))),
        ValueError, r"^attention: q, k, v must be on one device"),
    "attention head_dim 160": (
        lambda d: _attn(d, **dict(zip("qkv", _qkv((2, 7, 2, 160), device=d)))),
        ValueError, r"^attention: head_dim 160 is not supported"),
    "attention head_dim 0": (
        lambda d: _attn(d, **dict(zip("qkv", _qkv((2, 7, 2, 0), device=d)))),
        ValueError, r"^attention: head_dim 0 is not supported"),
    "attention dropout_p 1.0": (
        lambda d: _attn(d, dropout_p=1.0),
        ValueError, r"^attention: dropout_p must be a float in \[0, 1\)"),
    "attention dropout_p -0.1": (lambda d: _attn(d, dropout_p=-0.1), ValueError, r"^attention: dropout_p must be"),
    "attention dropout_p NaN": (lambda d: _attn(d, dropout_p=math.nan), ValueError, r"^attention: dropout_p must be"),
    "attention dropout_p True": (lambda d: _attn(d, dropout_p=True), ValueError, r"^attention: dropout_p must be"),
    "attention dropout_p '0.1'": (lambda d: _attn(d, dropout_p="0.1"), ValueError, r"^attention: dropout_p must be"),
    "attention dropout_p tensor": (
        lambda d: _attn(d, dropout_p=torch.tensor(0.1)),
        ValueError, r"^attention: dropout_p must be"),
    "attention softmax_scale inf": (
        lambda d: _attn(d, softmax_scale=math.inf),
        ValueError, r"^attention: softmax_scale must be a positive finite float or None"),
    "attention softmax_scale NaN": (
        lambda d: _attn(d, softmax_scale=math.nan),
        ValueError, r"^attention: softmax_scale must be"),
    "attention softmax_scale '1'": (
        lambda d: _attn(d, softmax_scale="1"),
        ValueError, r"^attention: softmax_scale must be"),
    "attention attention_mask float": (
        lambda d: _attn(d, attention_mask=torch.ones(2, 7, device=d)),
        ValueError, r"^attention: attention_mask must be a bool or integer 0/1 mask"),
    "attention attention_mask other shape": (
        lambda d: _attn(d, attention_mask=torch.ones(2, 5, dtype=torch.long, device=d)),
        ValueError, r"^attention: attention_mask must be the 2-D 0/1 mask"),
    "attention attention_mask on another device": (
        lambda d: _attn(d, attention_mask=torch.ones(2, 7, dtype=torch.long, device=_other(d))),
        ValueError, r"^attention: attention_mask is on"),
    "attention attention_mask with cu_seqlens": (
        lambda d: _attn_packed(d, attention_mask=torch.ones(2, 4, device=d)),
        ValueError, r"^attention: pass either attention_mask .* or cu_seqlens"),
    "attention cu_seqlens int64": (
        lambda d: _attn_packed(d, cu_seqlens=torch.tensor([0, 3, 7], device=d)),
        ValueError, r"^attention: cu_seqlens must be a 1-D int32 tensor"),
    "attention cu_seqlens not increasing": (
        lambda d: _attn_packed(d, cu_seqlens=torch.tensor([0, 5, 3, 7], dtype=torch.int32, device=d), max_seqlen=5),
        ValueError, r"^attention: cu_seqlens must be non-decreasing"),
    "attention cu_seqlens not starting at 0": (
        lambda d: _attn_packed(d, cu_seqlens=torch.tensor([1, 3, 7], dtype=torch.int32, device=d)),
        ValueError, r"^attention: cu_seqlens\[0\] must be 0"),
    "attention cu_seqlens[-1] != tokens": (
        lambda d: _attn_packed(d, cu_seqlens=torch.tensor([0, 3, 6], dtype=torch.int32, device=d)),
        ValueError, r"^attention: cu_seqlens\[-1\] = 6 must equal the number of tokens"),
    "attention cu_seqlens on another device": (
        lambda d: _attn_packed(d, cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32, device=_other(d))),
        ValueError, r"^attention: cu_seqlens is on"),
    "attention max_seqlen smaller than longest": (
        lambda d: _attn_packed(d, max_seqlen=3),
        ValueError, r"^attention: max_seqlen = 3 is smaller than the longest"),
    "attention max_seqlen negative": (
        lambda d: _attn_packed(d, max_seqlen=-1),
        ValueError, r"^attention: max_seqlen must be a non-negative int"),
    "attention max_seqlen float": (
        lambda d: _attn_packed(d, max_seqlen=4.0),
        ValueError, r"^attention: max_seqlen must be a non-negative int"),
    "attention max_seqlen missing": (
        lambda d: _attn_packed(d, max_seqlen=None),
        ValueError, r"^attention: max_seqlen .* is required"),
    "attention max_seqlen with padded q": (
        lambda d: _attn(d, max_seqlen=3),
        ValueError, r"^attention: max_seqlen is for the packed layout"),
    "layer_norm eps 0": (lambda d: _ln(d, eps=0.0), ValueError, r"^layer_norm: eps must be a positive finite float"),
    "layer_norm eps negative": (lambda d: _ln(d, eps=-1e-5), ValueError, r"^layer_norm: eps must be"),
    "layer_norm eps NaN": (lambda d: _ln(d, eps=math.nan), ValueError, r"^layer_norm: eps must be"),
    "layer_norm eps inf": (lambda d: _ln(d, eps=math.inf), ValueError, r"^layer_norm: eps must be"),
    "layer_norm eps '1e-5'": (lambda d: _ln(d, eps="1e-5"), ValueError, r"^layer_norm: eps must be"),
    "layer_norm dropout_p 1.0": (
        lambda d: _ln(d, dropout_p=1.0),
        ValueError, r"^layer_norm: dropout_p must be a float in \[0, 1\)"),
    "layer_norm dropout_p NaN": (lambda d: _ln(d, dropout_p=math.nan), ValueError, r"^layer_norm: dropout_p must be"),
    "layer_norm weight shape": (
        lambda d: _ln(d, weight=torch.ones(16, device=d)),
        ValueError, r"^layer_norm: weight must have shape \(32,\)"),
    "layer_norm weight None": (
        lambda d: _ln(d, weight=None),
        ValueError, r"^layer_norm: weight must be a torch.Tensor"),
    "layer_norm bias shape": (
        lambda d: _ln(d, bias=torch.zeros(1, 32, device=d)),
        ValueError, r"^layer_norm: bias must have shape \(32,\)"),
    "layer_norm residual shape": (
        lambda d: _ln(d, residual=torch.randn(1, 5, 32, device=d)),
        ValueError, r"^layer_norm: residual must have x's shape"),
    "layer_norm int x": (
        lambda d: _ln(d, x=torch.ones(3, 5, 32, dtype=torch.int32, device=d)),
        ValueError, r"^layer_norm: x must be a floating-point tensor"),
    "layer_norm int weight": (
        lambda d: _ln(d, weight=torch.ones(32, dtype=torch.int32, device=d)),
        ValueError, r"^layer_norm: weight must be a floating-point tensor"),
    "layer_norm x 0-D": (
        lambda d: _ln(d, x=torch.tensor(1.0, device=d), residual=None),
        ValueError, r"^layer_norm: x must have a last dimension"),
    "layer_norm hidden 0": (
        lambda d: _ln(d, x=torch.randn(3, 0, device=d), weight=torch.ones(0, device=d), bias=torch.ones(0, device=d),
                      residual=None),
        ValueError, r"^layer_norm: x must have a last dimension \(the hidden size\) >= 1"),
    "layer_norm weight on another device": (
        lambda d: _ln(d, weight=torch.ones(32, device=_other(d))),
        ValueError, r"^layer_norm: weight is on .* but x is on"),
    "layer_norm residual on another device": (
        lambda d: _ln(d, residual=torch.randn(3, 5, 32, device=_other(d))),
        ValueError, r"^layer_norm: residual is on .* but x is on"),
    "bias_gelu approximate 'gelu'": (
        lambda d: _gelu(d, approximate="gelu"),
        ValueError, r"^bias_gelu: approximate must be 'none'"),
    "bias_gelu approximate None": (
        lambda d: _gelu(d, approximate=None),
        ValueError, r"^bias_gelu: approximate must be"),
    "bias_gelu approximate True": (
        lambda d: _gelu(d, approximate=True),
        ValueError, r"^bias_gelu: approximate must be"),
    "bias_gelu bias shape": (
        lambda d: _gelu(d, bias=torch.zeros(16, device=d)),
        ValueError, r"^bias_gelu: bias must have shape \(32,\)"),
    "bias_gelu int x": (
        lambda d: _gelu(d, x=torch.ones(3, 32, dtype=torch.int64, device=d)),
        ValueError, r"^bias_gelu: x must be a floating-point tensor"),
    "bias_gelu int bias": (
        lambda d: _gelu(d, bias=torch.ones(32, dtype=torch.int64, device=d)),
        ValueError, r"^bias_gelu: bias must be a floating-point tensor"),
    "bias_gelu x 0-D": (
        lambda d: _gelu(d, x=torch.tensor(1.0, device=d), bias=None),
        ValueError, r"^bias_gelu: x must have a last dimension"),
    "bias_gelu features 0": (
        lambda d: _gelu(d, x=torch.randn(3, 0, device=d), bias=None),
        ValueError, r"^bias_gelu: x must have a last dimension \(the features\) >= 1"),
    "bias_gelu bias on another device": (
        lambda d: _gelu(d, bias=torch.zeros(32, device=_other(d))),
        ValueError, r"^bias_gelu: bias is on .* but x is on"),
}


@pytest.mark.parametrize("case", OP_CASES)
def test_op_bad_input(case, device):
    call, exc, match = OP_CASES[case]
    _raises(lambda: call(device), exc, match)


not_a_probability = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda p: not 0.0 <= p < 1.0),
    st.booleans(), st.none(), st.text(max_size=3), st.just(torch.tensor(0.1)),
)


@SWEEP
@given(p=not_a_probability, op=st.sampled_from(["attention", "layer_norm"]))
def test_op_dropout_p_sweep(p, op, device):
    call = _attn if op == "attention" else _ln
    _raises(lambda: call(device, dropout_p=p), ValueError, rf"^{op}: dropout_p must be a float in \[0, 1\)")


@SWEEP
@given(scale=st.one_of(st.sampled_from([math.inf, -math.inf, math.nan]), st.booleans(), st.text(max_size=3),
                       st.just(torch.tensor(0.5))))
def test_op_softmax_scale_sweep(scale, device):
    _raises(lambda: _attn(device, softmax_scale=scale), ValueError, r"^attention: softmax_scale must be")


@SWEEP
@given(eps=st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf]), st.booleans(), st.none(),
                     st.text(max_size=3)))
def test_op_eps_sweep(eps, device):
    _raises(lambda: _ln(device, eps=eps), ValueError, r"^layer_norm: eps must be a positive finite float")


shapes = st.lists(st.integers(0, 40), min_size=1, max_size=3).map(tuple)


@SWEEP
@given(shape=shapes, which=st.sampled_from(["weight", "bias", "residual"]))
def test_op_layer_norm_shape_sweep(shape, which, device):
    assume(shape != ((32,) if which != "residual" else (3, 5, 32)))
    _raises(lambda: _ln(device, **{which: torch.randn(shape, device=device)}), ValueError,
            rf"^layer_norm: {which} must have")


@SWEEP
@given(shape=shapes)
def test_op_bias_gelu_bias_shape_sweep(shape, device):
    assume(shape != (32,))
    _raises(lambda: _gelu(device, bias=torch.randn(shape, device=device)), ValueError,
            r"^bias_gelu: bias must have shape")


@SWEEP
@given(approximate=st.one_of(st.text(max_size=6), st.none(), st.booleans(), st.integers()).filter(
    lambda a: a not in ("none", "tanh")))
def test_op_approximate_sweep(approximate, device):
    _raises(lambda: _gelu(device, approximate=approximate), ValueError, r"^bias_gelu: approximate must be")


@SWEEP
@given(head_dim=st.one_of(st.just(0), st.integers(129, 300)), packed=st.booleans())  # any of 1..128 runs
def test_op_head_dim_sweep(head_dim, packed, device):
    if packed:
        call = lambda: _attn_packed(device, **dict(zip("qkv", _qkv((7, 2, head_dim), device=device))))
    else:
        call = lambda: _attn(device, **dict(zip("qkv", _qkv((2, 7, 2, head_dim), device=device))))
    _raises(call, ValueError, rf"^attention: head_dim {head_dim} is not supported")


@SWEEP
@given(shapes=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 3), st.sampled_from([16, 32])),
                       min_size=3, max_size=3))
def test_op_attention_qkv_shape_sweep(shapes, device):
    assume(len(set(shapes)) > 1)
    q, k, v = (torch.randn(s, device=device) for s in shapes)
    _raises(lambda: _attention(q=q, k=k, v=v), ValueError, r"^attention: q, k, v must have the same shape")


def _strided_last_dim(t: torch.Tensor) -> torch.Tensor:
    """t's values in a tensor whose last dimension has stride 2 (a view of a wider buffer)."""
    wide = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out = wide[..., ::2]
    assert out.stride(-1) == 2
    return out


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_attention_non_contiguous_last_dim_works(layout, device):
    from fastbert.ops import attention

    if layout == "padded":
        q, k, v = _qkv(device=device)
        kw = dict(attention_mask=torch.tensor([[1] * 7, [1] * 4 + [0] * 3], device=device))
    else:
        q, k, v = _qkv((7, 2, 16), device=device)
        kw = dict(cu_seqlens=torch.tensor([0, 3, 7], dtype=torch.int32, device=device), max_seqlen=4)
    ref = attention(q, k, v, **kw)
    if layout == "packed":  # a strided cu_seqlens too (the kernels read it with unit stride: it read garbage)
        kw["cu_seqlens"] = _strided_last_dim(kw["cu_seqlens"])
    out = attention(_strided_last_dim(q), _strided_last_dim(k), _strided_last_dim(v), **kw)
    torch.testing.assert_close(out, ref)


def _values_and_grads(fn, *tensors):
    """fn(*tensors) and the gradients of a fixed loss w.r.t. each tensor."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    (out * torch.linspace(-1, 1, out.numel(), device=out.device).view(out.shape)).sum().backward()
    return [out.detach()] + [t.grad for t in leaves]


def test_layer_norm_and_bias_gelu_non_contiguous_last_dim_work(device):
    """Strided x, residual, weight and bias give the contiguous results, forward and backward (strided weight and
    bias were read with unit stride: wrong values, silently)."""
    from fastbert.ops import bias_gelu, layer_norm

    x, r = torch.randn(3, 5, 32, device=device), torch.randn(3, 5, 32, device=device)
    w, b = torch.randn(32, device=device), torch.randn(32, device=device)
    def strided(fn):
        return lambda *ts: fn(*(_strided_last_dim(t) for t in ts))  # differentiable: grads reach the same leaves

    ln = lambda x, w, b, r: layer_norm(x, w, b, 1e-12, residual=r)
    for got, want in zip(_values_and_grads(strided(ln), x, w, b, r), _values_and_grads(ln, x, w, b, r)):
        torch.testing.assert_close(got, want)
    for got, want in zip(_values_and_grads(strided(bias_gelu), x, b), _values_and_grads(bias_gelu, x, b)):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------------------------------------------
# the collator (C++): every case runs in one subprocess, so a crash fails the tests instead of ending the run
# ----------------------------------------------------------------------------------------------------------------
SPECIAL = SpecialTokens(vocab_size=VOCAB, cls_token_id=1, sep_token_id=2, pad_token_id=0, mask_token_id=3,
                        unk_token_id=4)
GOOD = [[1, 5, 6, 2], [1, 7, 2]]


def _mlm(examples=GOOD, special=SPECIAL, **kw):
    return MLMCollator(special, **kw)(examples)


def _special(**over) -> SpecialTokens:
    fields = dict(vocab_size=VOCAB, cls_token_id=1, sep_token_id=2, pad_token_id=0, mask_token_id=3, unk_token_id=4)
    return SpecialTokens(**{**fields, **over})


TE = (TypeError, ValueError)
# name -> (call(), exception(s), regex naming the argument)
COLLATOR_CASES = {
    "MLMCollator id negative": (
        lambda: _mlm([[1, -5, 2]]),
        ValueError, r"^input_ids\[0\]\[1\]=-5 is outside \[0, vocab_size=300\)"),
    "MLMCollator id >= vocab_size": (lambda: _mlm([[1, 300, 2]]), ValueError, r"^input_ids\[0\]\[1\]=300 is outside"),
    "MLMCollator id >= 2^63 (list)": (
        lambda: _mlm([[1, 2**70, 2]]),
        ValueError, r"^input_ids\[0\]\[1\] does not fit in 64 bits"),
    "MLMCollator id >= 2^63 (uint64 array)": (
        lambda: _mlm([np.array([2**63 + 5], dtype=np.uint64)]),
        ValueError, r"^input_ids\[0\] holds a value >= 2\^63"),
    "MLMCollator uint64 array": (
        lambda: _mlm([np.array([1, 300], dtype=np.uint64)]),
        ValueError, r"^input_ids\[0\]\[1\]=300 is outside"),
    "MLMCollator float array": (
        lambda: _mlm([np.array([1.0, 5.0, 2.0])]),
        TypeError, r"^input_ids\[0\] must hold integers, got dtype float64"),
    "MLMCollator float list": (
        lambda: _mlm([[1.0, 5.0]]),
        TypeError, r"^input_ids\[0\]\[0\] must be an integer, got float"),
    "MLMCollator float tensor": (
        lambda: _mlm([torch.tensor([1.0, 5.0])]),
        TypeError, r"^input_ids\[0\] must hold integers"),
    "MLMCollator bool array": (
        lambda: _mlm([np.array([True, False])]),
        TypeError, r"^input_ids\[0\] must hold integers, got dtype bool"),
    "MLMCollator str ids": (lambda: _mlm([["a", "b"]]), TypeError, r"^input_ids\[0\]\[0\] must be an integer, got str"),
    "MLMCollator ragged nested list": (
        lambda: _mlm([[[1, 2], [3]]]),
        TypeError, r"^input_ids\[0\]\[0\] must be an integer, got list"),
    "MLMCollator 2-D array as one example": (
        lambda: _mlm([np.array([[1, 2], [3, 4]])]),
        ValueError, r"^input_ids\[0\] must be 1-D"),
    "MLMCollator None as an example": (lambda: _mlm([None]), TypeError, r"^input_ids\[0\] must be"),
    "MLMCollator empty batch": (lambda: _mlm([]), ValueError, r"^MLMCollator got an empty batch"),
    "MLMCollator example without input_ids": (
        lambda: _mlm([{"x": [1]}]),
        ValueError, r"every example needs a 'input_ids' entry"),
    "MLMCollator token_type_ids length": (
        lambda: _mlm([{"input_ids": [1, 5, 2], "token_type_ids": [0, 0]}]),
        ValueError, r"^token_type_ids\[0\] has 2 entries, input_ids\[0\] 3"),
    "MLMCollator token_type_ids negative": (
        lambda: _mlm([{"input_ids": [1, 5, 2], "token_type_ids": [0, -1, 0]}]),
        ValueError, r"^token_type_ids\[0\]\[1\]=-1 is negative"),
    "MLMCollator next_sentence_label str": (
        lambda: _mlm([{"input_ids": [1, 5, 2], "next_sentence_label": "a"}]),
        TypeError, r"'next_sentence_label' must be one integer"),
    "MLMCollator sample_index float": (
        lambda: _mlm([{"input_ids": [1, 5, 2], "sample_index": 1.5}]),
        TypeError, r"'sample_index' must be one integer"),
    "MLMCollator mlm_probability -0.1": (
        lambda: _mlm(mlm_probability=-0.1),
        ValueError, r"^mlm_probability must be in \[0, 1\]"),
    "MLMCollator mlm_probability 1.1": (
        lambda: _mlm(mlm_probability=1.1),
        ValueError, r"^mlm_probability must be in \[0, 1\]"),
    "MLMCollator mlm_probability NaN": (
        lambda: _mlm(mlm_probability=math.nan),
        ValueError, r"^mlm_probability must be in \[0, 1\]"),
    "MLMCollator mlm_probability '0.1'": (
        lambda: _mlm(mlm_probability="0.1"),
        TypeError, r"^mlm_probability must be a float"),
    "MLMCollator split of 2": (lambda: _mlm(split=(0.5, 0.5)), ValueError, r"^split must have 3 entries"),
    "MLMCollator split not summing to 1": (
        lambda: _mlm(split=(0.5, 0.6, 0.1)),
        ValueError, r"^split \(mask, random, keep\) must sum to 1"),
    "MLMCollator split with NaN": (
        lambda: _mlm(split=(math.nan, 0.5, 0.5)),
        ValueError, r"^split\[0\] must be in \[0, 1\]"),
    "MLMCollator extra_special_ids out of vocab": (
        lambda: _mlm(extra_special_ids=(300,)),
        ValueError, r"^extra_special_ids\[0\]=300 is outside \[0, vocab_size=300\)"),
    "MLMCollator extra_special_ids negative": (
        lambda: _mlm(extra_special_ids=(-1,)),
        ValueError, r"^extra_special_ids\[0\]=-1 is outside"),
    "MLMCollator extra_special_ids duplicate": (
        lambda: _mlm(extra_special_ids=(7, 7)),
        ValueError, r"^extra_special_ids\[1\]=7 repeats extra_special_ids\[0\]"),
    "MLMCollator extra_special_ids repeats [CLS]": (
        lambda: _mlm(extra_special_ids=(1,)),
        ValueError, r"^extra_special_ids\[0\]=1 repeats cls_token_id"),
    "MLMCollator extra_special_ids float": (
        lambda: _mlm(extra_special_ids=(5.5,)),
        TypeError, r"^extra_special_ids\[0\] must be an int"),
    "MLMCollator special_tokens id out of vocab": (
        lambda: _mlm(special=_special(cls_token_id=400)),
        ValueError, r"^special_tokens.cls_token_id=400 is outside"),
    "MLMCollator special_tokens duplicate ids": (
        lambda: _mlm(special=_special(sep_token_id=1)),
        ValueError, r"^special_tokens: cls_token_id and sep_token_id are both 1"),
    "MLMCollator special_tokens [MASK] = [CLS]": (
        lambda: _mlm(special=_special(mask_token_id=1)),
        ValueError, r"^special_tokens: cls_token_id and mask_token_id are both 1"),
    "MLMCollator special_tokens vocab_size 0": (
        lambda: _mlm(special=_special(vocab_size=0)),
        ValueError, r"^special_tokens.vocab_size must be >= 1"),
    "MLMCollator special_tokens not a SpecialTokens": (
        lambda: MLMCollator({"vocab_size": 300}),
        TypeError, r"^special_tokens must be a SpecialTokens"),
    "MLMCollator max_predictions_per_seq -1": (
        lambda: _mlm(exact_count=True, max_predictions_per_seq=-1),
        ValueError, r"^max_predictions_per_seq must be >= 0"),
    "MLMCollator pad_to_multiple_of 0": (
        lambda: _mlm(pad_to_multiple_of=0),
        ValueError, r"^pad_to_multiple_of must be >= 1"),
    "MLMCollator pad_to_multiple_of with packed": (
        lambda: _mlm(pad_to_multiple_of=8, packed=True),
        ValueError, r"^pad_to_multiple_of applies to the padded layout only"),
    "MLMCollator num_threads -1": (lambda: _mlm(num_threads=-1), ValueError, r"^num_threads must be >= 0"),
    "MLMCollator num_threads 2^40": (lambda: _mlm(num_threads=2**40), ValueError, r"^num_threads must be <= 1024"),
    "MLMCollator pad_to_multiple_of 2^40": (
        lambda: _mlm(pad_to_multiple_of=2**40),
        ValueError, r"^pad_to_multiple_of must be <= 65536"),
    "MLMCollator continuation_table without whole_word_mask": (
        lambda: _mlm(continuation_table=np.zeros(300, bool)),
        ValueError, r"^continuation_table is only used with whole_word_mask=True"),
    "collate pad_token_id 2^70": (
        lambda: collate([[1, 2]], pad_token_id=2**70),
        ValueError, r"^pad_token_id must be <= 9223372036854775807"),
    "collate pad_token_id -1": (lambda: collate([[1, 2]], pad_token_id=-1), ValueError, r"^pad_token_id must be >= 0"),
    "collate num_threads 2^40": (lambda: collate([[1, 2]], num_threads=2**40), ValueError, r"^num_threads must be <= 1024"),
    "collate pad_to_multiple_of 2^40": (
        lambda: collate([[1, 2]], pad_to_multiple_of=2**40),
        ValueError, r"^pad_to_multiple_of must be <= 65536"),
    "MLMCollator seed float": (lambda: _mlm(seed=1.5), TypeError, r"^seed must be an int"),
    "MLMCollator epoch -1": (lambda: _mlm(epoch=-1), ValueError, r"^epoch must be >= 0"),
    "MLMCollator whole_word_mask without table": (
        lambda: _mlm(whole_word_mask=True),
        ValueError, r"^whole_word_mask=True needs continuation_table"),
    "MLMCollator continuation_table of wrong size": (
        lambda: _mlm(whole_word_mask=True, continuation_table=np.zeros(5, bool)),
        ValueError, r"^continuation_table has 5 entries"),
    "collate id negative": (lambda: collate([[1, -5, 2]]), ValueError, r"^input_ids\[0\]\[1\]=-5 is negative"),
    "collate id >= 2^63 (uint64 array)": (
        lambda: collate([np.array([2**63 + 5], dtype=np.uint64)]),
        ValueError, r"^input_ids\[0\] holds a value >= 2\^63"),
    "collate float array": (lambda: collate([np.array([1.0, 2.0])]), TypeError, r"^input_ids\[0\] must hold integers"),
    "collate ragged nested list": (
        lambda: collate([[[1, 2], [3]]]),
        TypeError, r"^input_ids\[0\]\[0\] must be an integer"),
    "collate empty batch": (lambda: collate([]), ValueError, r"^input_ids is an empty batch"),
    "collate input_ids not a list": (
        lambda: collate(5),
        TypeError, r"^input_ids must be a list of 1-D integer sequences"),
    "collate pad_token_id -1": (lambda: collate(GOOD, pad_token_id=-1), ValueError, r"^pad_token_id must be >= 0"),
    "collate pad_to_multiple_of 0": (
        lambda: collate(GOOD, pad_to_multiple_of=0),
        ValueError, r"^pad_to_multiple_of must be >= 1"),
    "collate token_type_ids count": (
        lambda: collate(GOOD, token_type_ids=[[0, 0, 0, 0]]),
        ValueError, r"^token_type_ids has 1 sequences, input_ids 2"),
    "mask_tokens uint64 >= 2^63": (
        lambda: mask_tokens(np.array([[2**63 + 5]], dtype=np.uint64), vocab_size=VOCAB, mask_token_id=3,
                            special_ids=[0]),
        ValueError, r"^input_ids holds a value >= 2\^63"),
}


@settings(SWEEP)
@given(value=st.one_of(st.integers(-2**63, -1), st.integers(VOCAB, INT64_MAX)), position=st.integers(0, 3),
       form=st.sampled_from(["list", "int64 array", "tensor"]), packed=st.booleans())
def _collator_ids_out_of_range_property(value, position, form, packed):
    seq = [1, 5, 6, 2]
    seq[position] = value
    example = {"list": seq, "int64 array": np.array(seq, dtype=np.int64), "tensor": torch.tensor(seq)}[form]
    _raises(lambda: _mlm([example, [1, 7, 2]], packed=packed), ValueError,
            rf"^input_ids\[0\]\[{position}\]=-?\d+ is outside")


@settings(SWEEP)
@given(dtype=st.sampled_from([np.float16, np.float32, np.float64, np.bool_, np.complex64]),
       length=st.integers(0, 5))
def _collator_non_integer_arrays_property(dtype, length):
    _raises(lambda: _mlm([np.zeros(length, dtype=dtype)]), TypeError, r"^input_ids\[0\] must hold integers")


@settings(SWEEP)
@given(p=st.one_of(st.floats(allow_nan=True).filter(lambda p: not 0.0 <= p <= 1.0), st.text(max_size=3), st.none(),
                   st.booleans()))
def _collator_mlm_probability_property(p):
    _raises(lambda: _mlm(mlm_probability=p), TE, r"^mlm_probability must be")


@settings(SWEEP)
@given(seqs=st.lists(st.lists(st.integers(0, VOCAB - 1), max_size=6), min_size=1, max_size=4), packed=st.booleans())
def _collator_valid_batches_property(seqs, packed):
    """Valid odd batches (empty sequences included) never raise, and hand back int64 tensors without NaN."""
    batch = _mlm(seqs, packed=packed)
    assert all(v.dtype in (torch.int64, torch.int32) for v in batch.values() if isinstance(v, torch.Tensor))


COLLATOR_PROPERTIES = {
    "ids out of range": _collator_ids_out_of_range_property,
    "non-integer arrays": _collator_non_integer_arrays_property,
    "mlm_probability outside [0, 1]": _collator_mlm_probability_property,
    "valid odd batches": _collator_valid_batches_property,
}


def _outcome(call) -> dict:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent process, judged there
        return dict(type=type(exc).__name__, message=str(exc))
    return dict(type=None, message="")


def run_collator_cases_here() -> None:
    """Subprocess body: one JSON line per case and property, flushed before the next one starts."""
    for name, (call, _, _) in COLLATOR_CASES.items():
        print(json.dumps(dict(name=name, **_outcome(call))), flush=True)
    for name, prop in COLLATOR_PROPERTIES.items():
        print(json.dumps(dict(name=name, **_outcome(prop))), flush=True)


@pytest.fixture(scope="module")
def collator_results():
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [tests, os.path.dirname(tests),
                                                                     os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", "import test_bad_inputs as t; t.run_collator_cases_here()"],
                          capture_output=True, text=True, env=env, timeout=300)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result.pop("name")] = result
    return results, proc


def _reported(name, collator_results) -> dict:
    results, proc = collator_results
    assert name in results, (f"the collator subprocess ended (exit code {proc.returncode}) before reporting "
                             f"{name!r}: a crash?\n{proc.stderr[-3000:]}")
    return results[name]


@pytest.mark.parametrize("case", COLLATOR_CASES)
def test_collator_bad_input(case, collator_results):
    _, exc, match = COLLATOR_CASES[case]
    got = _reported(case, collator_results)
    names = {e.__name__ for e in (exc if isinstance(exc, tuple) else (exc,))}
    assert got["type"] in names and re.search(match, got["message"]), f"got {got['type']}: {got['message']}"


@pytest.mark.parametrize("prop", COLLATOR_PROPERTIES)
def test_collator_property(prop, collator_results):
    got = _reported(prop, collator_results)
    assert got["type"] is None, f"{got['type']}: {got['message']}"


def test_collator_subprocess_exits_cleanly(collator_results):
    _, proc = collator_results
    assert proc.returncode == 0, proc.stderr[-3000:]
