"""fastbert.ops.attention against the PyTorch reference (three-way rule), plus dropout, errors, compile, checkpointing.

On CPU the Triton kernels run in Triton's interpreter (set up by conftest.py): small shapes, fp32/fp16. The ``gpu``
tests repeat the grid at real sizes with bf16 and run only where CUDA is present.
"""
import math

import pytest
import torch
from helpers import assert_three_way, attention_with_keep_mask, keep_mask, make_attention_mask, seed_of_next_op

import fastbert.ops.fused_attention as attn_mod
from fastbert.ops import _common, attention
from fastbert.ops.padding import packed_to_padded, padded_to_packed, seqlens_to_cu_seqlens
from fastbert.ops.reference import attention_ref, attention_torch

HAS_CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def _qkv(shape, dtype, device, requires_grad=True, scale=1.0):
    return [(torch.randn(shape, device=device) * scale).to(dtype).requires_grad_(requires_grad) for _ in range(3)]


def _grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


def _check_against_reference(q, k, v, *, attention_mask=None, cu_seqlens=None, max_seqlen=None, dropout_p=0.0,
                             dropout=False, requires_grad=True, window=None, name=""):
    """Run the fused op and both references on the same inputs (and dropout keep-mask); three-way compare."""
    kwargs = dict(attention_mask=attention_mask, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, window=window)
    if dropout:
        out, keep = attention_with_keep_mask(q, k, v, dropout_p=dropout_p, **kwargs)
    else:
        out, keep = attention(q, k, v, **kwargs), None
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    q32, k32, v32 = (t.detach().float().requires_grad_(requires_grad) for t in (q, k, v))
    qlp, klp, vlp = (t.detach().clone().requires_grad_(requires_grad) for t in (q, k, v))
    # the kernels apply p rounded to a multiple of 1/256 (fastbert/ops/_common.py): scale the reference alike
    ref_kwargs = dict(kwargs, dropout_p=_common.effective_dropout_p(dropout_p) if dropout else 0.0, dropout_mask=keep)
    ref32 = attention_ref(q32, k32, v32, upcast=True, **ref_kwargs)
    reflp = attention_ref(qlp, klp, vlp, upcast=False, **ref_kwargs)
    compare(out, ref32, reflp, grad=False, name=f"{name} out")
    if not requires_grad:
        assert not out.requires_grad
        return out
    dout = torch.randn_like(out)
    g = _grads(out, (q, k, v), dout)
    g32 = _grads(ref32, (q32, k32, v32), dout.float())
    glp = _grads(reflp, (qlp, klp, vlp), dout)
    for n, a, b, c in zip("qkv", g, g32, glp):
        compare(a, b, c, grad=True, name=f"{name} d{n}")
    return out


def compare(ours, ref32, reflp, *, grad, name):
    """The three-way rule; for fp32 on CUDA, where reflp == ref32 and the rule degenerates to an absolute 1e-5, a
    relative bound instead (the kernel sums up to 1024 fp32 terms in another order than cuBLAS)."""
    if ours.dtype == torch.float32 and ours.is_cuda:
        torch.testing.assert_close(ours, ref32, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    else:
        assert_three_way(ours, ref32.to(ours.dtype), reflp, grad=grad, name=name)


def _random_lengths(batch, max_len, allow_zero=True, gen=None):
    lo = 0 if allow_zero else 1
    return torch.randint(lo, max_len + 1, (batch,), generator=gen)


# ----------------------------------------------------------------------------------------------------------------
# correctness grid (interpreter on CPU; the same code on GPU)
# ----------------------------------------------------------------------------------------------------------------
CPU_DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("padding", ["none", "random", "one_row_padded"])
@pytest.mark.parametrize("seqlen", [1, 7, 113])
@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_padded_matches_reference(device, dtype, head_dim, seqlen, padding):
    mask = make_attention_mask(2, seqlen, padding, device=device)
    q, k, v = _qkv((2, seqlen, 2, head_dim), dtype, device)
    _check_against_reference(q, k, v, attention_mask=mask, name=f"padded {padding}")


@pytest.mark.parametrize("lengths", [[1], [7, 0, 5], [113, 64, 3], [0, 0], [33, 31, 32, 0, 1]], ids=str)
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_packed_matches_reference(device, dtype, lengths):
    seqlens = torch.tensor(lengths)
    cu = seqlens_to_cu_seqlens(seqlens).to(device)
    total, max_len = int(seqlens.sum()), int(seqlens.max())
    q, k, v = _qkv((total, 2, 32), dtype, device)
    out = _check_against_reference(q, k, v, cu_seqlens=cu, max_seqlen=max_len, name="packed")
    assert out.shape == (total, 2, 32)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_packed_larger_max_seqlen_than_needed(device, dtype):
    """max_seqlen is an upper bound: a larger value changes nothing but the grid."""
    cu = torch.tensor([0, 5, 12], dtype=torch.int32, device=device)
    q, k, v = _qkv((12, 2, 32), dtype, device)
    _check_against_reference(q, k, v, cu_seqlens=cu, max_seqlen=40, name="packed max_seqlen=40")


@pytest.mark.parametrize("head_dim", [16, 128])
def test_other_head_dims(device, head_dim):
    mask = make_attention_mask(2, 37, "random", device=device)
    q, k, v = _qkv((2, 37, 2, head_dim), torch.float16, device)
    _check_against_reference(q, k, v, attention_mask=mask, name=f"head_dim {head_dim}")


@pytest.mark.parametrize("head_dim", [1, 8, 24, 48, 80, 96])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_any_head_dim(device, dtype, head_dim):
    """head_dim is any value up to 128: tiles padded to a power of two (>= 16), padding columns masked."""
    mask = make_attention_mask(3, 37, "one_row_padded", device=device)
    q, k, v = _qkv((3, 37, 2, head_dim), dtype, device)
    _check_against_reference(q, k, v, attention_mask=mask, name=f"head_dim {head_dim}")


@pytest.mark.parametrize("window", [0, 3, 40])
@pytest.mark.parametrize("layout", ["right", "holes", "packed"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sliding_window(device, dtype, layout, window):
    """Keys with |i - j| <= window (ModernBERT's local layers): windows narrower and wider than a block (the inner,
    unmasked blocks then exist inside the band), right padding, holes and packed sequences."""
    if layout == "packed":
        cu = torch.tensor([0, 100, 101, 150], dtype=torch.int32, device=device)
        q, k, v = _qkv((150, 2, 32), dtype, device)
        _check_against_reference(q, k, v, cu_seqlens=cu, max_seqlen=100, window=window, name=f"window {window}")
        return
    mask = torch.ones(2, 100, dtype=torch.long)
    mask[1, 70:] = 0
    if layout == "holes":
        mask[0, 10:15] = 0
        mask[1, ::7] = 0
    q, k, v = _qkv((2, 100, 2, 32), dtype, device)
    _check_against_reference(q, k, v, attention_mask=mask.to(device), window=window, name=f"window {window}")


def test_sliding_window_with_dropout(device):
    mask = make_attention_mask(2, 90, "random", device=device)
    q, k, v = _qkv((2, 90, 2, 32), torch.float16, device)
    _check_against_reference(q, k, v, attention_mask=mask, window=33, dropout_p=0.2, dropout=True, name="window+dropout")


@pytest.mark.parametrize("seqlen", [509, 512])
def test_long_sequence_small_heads(device, seqlen):
    """The convention's long lengths at one head (the interpreter is slow); GPU tests cover them at full size."""
    mask = make_attention_mask(1, seqlen, "none", device=device)
    mask[0, seqlen - 60:] = 0
    q, k, v = _qkv((1, seqlen, 1, 16), torch.float16, device)
    _check_against_reference(q, k, v, attention_mask=mask, name=f"seqlen {seqlen}")


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_no_grad_inputs(device, dtype):
    mask = make_attention_mask(2, 20, "random", device=device)
    q, k, v = _qkv((2, 20, 2, 32), dtype, device, requires_grad=False)
    _check_against_reference(q, k, v, attention_mask=mask, requires_grad=False, name="no grad")


def test_no_mask_same_as_all_ones(device):
    q, k, v = _qkv((2, 19, 2, 32), torch.float32, device, requires_grad=False)
    ones = torch.ones(2, 19, dtype=torch.long, device=device)
    torch.testing.assert_close(attention(q, k, v), attention(q, k, v, attention_mask=ones), rtol=0, atol=0)


@pytest.mark.parametrize("pattern", ["left", "holes", "bool", "int32"])
def test_arbitrary_masks(device, pattern):
    """Any 0/1 pattern works: left padding, holes (including a hole wider than a block), bool and int32 masks."""
    seqlen = 90
    mask = torch.ones(3, seqlen, dtype=torch.long)
    if pattern == "left":
        mask[0, :50] = 0
        mask[1, :89] = 0
        mask[2, :3] = 0
    else:
        mask[0, 5:80] = 0  # hole wider than a key block
        mask[1, ::3] = 0
        mask[2, 60:] = 0
        mask[2, :10] = 0
    mask = mask.to(device)
    if pattern == "bool":
        mask = mask.bool()
    elif pattern == "int32":
        mask = mask.int()
    q, k, v = _qkv((3, seqlen, 2, 32), torch.float16, device)
    _check_against_reference(q, k, v, attention_mask=mask, name=f"mask {pattern}")


def test_views_of_fused_qkv_and_noncontiguous(device):
    """q, k, v as strided views of one [B, S, 3, H, D] projection (what BertSelfAttention produces); gradients flow
    into the fused tensor. Also a non-contiguous grad_output and a mask view."""
    b, s, h, d = 2, 21, 2, 32
    qkv = torch.randn(b, s, 3, h, d, device=device, requires_grad=True)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    big_mask = make_attention_mask(b, 2 * s, "random", device=device)
    mask = big_mask[:, ::2]  # non-contiguous mask
    out = attention(q, k, v, attention_mask=mask)
    dout = torch.randn(b, s, d, h, device=device).transpose(-1, -2)  # non-contiguous, last dim strided
    out.backward(dout)
    ref_qkv = qkv.detach().clone().requires_grad_()
    rq, rk, rv = ref_qkv.unbind(2)
    ref = attention_ref(rq, rk, rv, attention_mask=mask)
    ref.backward(dout)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(qkv.grad, ref_qkv.grad, atol=1e-5, rtol=1e-5)


def test_packed_equals_padded(device):
    """The same sequences packed and right-padded give the same output, gradients and dropout mask."""
    seqlens = torch.tensor([9, 0, 20, 14])
    b, s, h, d = 4, 20, 2, 32
    mask = (torch.arange(s)[None, :] < seqlens[:, None]).long().to(device)
    q, k, v = _qkv((b, s, h, d), torch.float32, device)
    cu = seqlens_to_cu_seqlens(seqlens).to(device)
    qp, kp, vp = (padded_to_packed(t.detach(), mask).requires_grad_() for t in (q, k, v))
    out_pad, keep_pad = attention_with_keep_mask(q, k, v, attention_mask=mask, dropout_p=0.2)
    out_pack, keep_pack = attention_with_keep_mask(qp, kp, vp, cu_seqlens=cu, max_seqlen=s, dropout_p=0.2)
    assert torch.equal(keep_pad, keep_pack)
    torch.testing.assert_close(padded_to_packed(out_pad, mask), out_pack, atol=1e-6, rtol=1e-6)
    dout = torch.randn_like(out_pack)
    dout_pad, _ = packed_to_padded(dout, cu, s)
    g_pad = _grads(out_pad, (q, k, v), dout_pad)
    g_pack = _grads(out_pack, (qp, kp, vp), dout)
    for a, c in zip(g_pad, g_pack):
        torch.testing.assert_close(padded_to_packed(a, mask), c, atol=1e-5, rtol=1e-5)
        assert (a[~mask.bool()] == 0).all()


def test_padding_rows_are_zero_and_finite(device):
    mask = make_attention_mask(3, 40, "one_row_padded", device=device)
    q, k, v = _qkv((3, 40, 2, 32), torch.float16, device, scale=30.0)  # large logits
    out = attention(q, k, v, attention_mask=mask, dropout_p=0.5)
    assert torch.isfinite(out).all()
    assert (out[~mask.bool()] == 0).all()
    out.float().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert (t.grad[~mask.bool()] == 0).all()


def test_empty_inputs(device):
    q, k, v = _qkv((0, 5, 2, 32), torch.float32, device)
    assert attention(q, k, v).shape == (0, 5, 2, 32)
    cu = torch.zeros(1, dtype=torch.int32, device=device)
    q, k, v = _qkv((0, 2, 32), torch.float32, device)
    out = attention(q, k, v, cu_seqlens=cu, max_seqlen=0)
    out.sum().backward()
    assert out.shape == (0, 2, 32) and q.grad.shape == (0, 2, 32)


# ----------------------------------------------------------------------------------------------------------------
# dropout
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_dropout_matches_reference_with_mask(device, dtype, layout):
    if layout == "padded":
        mask = make_attention_mask(2, 70, "random", device=device)
        q, k, v = _qkv((2, 70, 2, 32), dtype, device)
        _check_against_reference(q, k, v, attention_mask=mask, dropout_p=0.3, dropout=True, name="dropout padded")
    else:
        cu = torch.tensor([0, 30, 30, 77], dtype=torch.int32, device=device)
        q, k, v = _qkv((77, 2, 32), dtype, device)
        _check_against_reference(q, k, v, cu_seqlens=cu, max_seqlen=47, dropout_p=0.1, dropout=True, name="dropout packed")


_GPU_CONFIGS = sorted({tuple(c.items()) for c in [*attn_mod._CONFIGS.values(),
                                                   *(c for arch in attn_mod._ARCH_CONFIGS.values() for c in arch.values())]})


@pytest.mark.parametrize("config", _GPU_CONFIGS, ids=lambda c: "m{}n{}w{}s{}".format(*dict(c).values()))
def test_every_gpu_launch_config_is_correct(device, monkeypatch, config):
    """The block sizes the GPUs launch (fused_attention._CONFIGS / _ARCH_CONFIGS), run through the interpreter on
    CPU in place of its small default: packed with dropout and a padded batch with holes, across block boundaries."""
    monkeypatch.setattr(attn_mod, "_INTERPRETER_CONFIG", dict(config))
    cu = torch.tensor([0, 140, 140, 163], dtype=torch.int32, device=device)
    q, k, v = _qkv((163, 1, 32), torch.float16, device)
    _check_against_reference(q, k, v, cu_seqlens=cu, max_seqlen=140, dropout_p=0.1, dropout=True, name="packed")
    mask = make_attention_mask(2, 131, "random", device=device)
    q, k, v = _qkv((2, 131, 1, 16), torch.float16, device)
    _check_against_reference(q, k, v, attention_mask=mask, name="padded")


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keep_statistics(device, p):
    """Fraction kept ~ 1 - p' (p' = p rounded to 1/256) within 4 binomial sigmas, per head and overall, and the
    rounding stays within 1/512 of p; heads and calls differ."""
    assert abs(_common.effective_dropout_p(p) - p) <= 1 / 512
    p = _common.effective_dropout_p(p)
    b, h, s = 2, 3, 64
    keep = keep_mask(seed_of_next_op(0, device), b * h, s, s, p).view(b, h, s, s)
    # neighbouring rows, and columns 8 apart (one thread's bytes of one Philox call), are not correlated either
    for a, c in ((keep[..., :-1, :], keep[..., 1:, :]), (keep[..., :-8], keep[..., 8:])):
        joint = (a & c).float().mean().item()
        assert abs(joint - (1 - p) ** 2) <= 8 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / a.numel())
    n = keep.numel()
    frac = keep.float().mean().item()
    assert abs(frac - (1 - p)) <= 4 * math.sqrt(p * (1 - p) / n), frac
    per_head = keep.float().mean(dim=(2, 3)).flatten()
    m = s * s
    assert ((per_head - (1 - p)).abs() <= 4 * math.sqrt(p * (1 - p) / m)).all(), per_head
    assert not torch.equal(keep[0, 0], keep[0, 1]) and not torch.equal(keep[0, 0], keep[1, 0])
    # neighbouring keys are not correlated (bytes of one Philox call): P(keep_j and keep_j+1) ~ (1 - p)^2
    both = (keep[..., :-1] & keep[..., 1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) <= 4 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / keep[..., 1:].numel()) * 2
    assert not torch.equal(keep, keep_mask(seed_of_next_op(1, device), b * h, s, s, p).view(b, h, s, s))


def test_dropout_follows_manual_seed(device):
    mask = make_attention_mask(2, 30, "random", device=device)
    q, k, v = _qkv((2, 30, 2, 32), torch.float32, device, requires_grad=False)
    torch.manual_seed(123)
    a = attention(q, k, v, attention_mask=mask, dropout_p=0.2)
    torch.manual_seed(123)
    b = attention(q, k, v, attention_mask=mask, dropout_p=0.2)
    c = attention(q, k, v, attention_mask=mask, dropout_p=0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_backward_is_deterministic(device):
    mask = make_attention_mask(2, 75, "random", device=device)
    q, k, v = _qkv((2, 75, 2, 32), torch.float16, device)
    torch.manual_seed(7)
    out = attention(q, k, v, attention_mask=mask, dropout_p=0.1)
    dout = torch.randn_like(out)
    g1 = _grads(out, (q, k, v), dout)
    torch.manual_seed(7)
    out2 = attention(q, k, v, attention_mask=mask, dropout_p=0.1)
    g2 = _grads(out2, (q, k, v), dout)
    assert torch.equal(out, out2)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_replays_dropout(device, use_reentrant):
    """torch.utils.checkpoint recomputes the forward with the restored RNG state: same mask, same gradients."""
    from torch.utils.checkpoint import checkpoint

    mask = make_attention_mask(2, 40, "random", device=device)
    q, k, v = _qkv((2, 40, 2, 32), torch.float32, device)
    w = torch.randn(32, 32, device=device)

    def block(q, k, v):
        return attention(q @ w, k, v, attention_mask=mask, dropout_p=0.3) @ w

    def run(fn):
        for t in (q, k, v):
            t.grad = None
        torch.manual_seed(5)
        out = fn()
        out.backward(dout)  # .backward(), not autograd.grad: reentrant checkpointing needs it
        return out, [t.grad.clone() for t in (q, k, v)]

    dout = torch.randn(2, 40, 2, 32, device=device)
    out, g_plain = run(lambda: block(q, k, v))
    out_ck, g_ck = run(lambda: checkpoint(block, q, k, v, use_reentrant=use_reentrant))
    assert torch.equal(out, out_ck)
    for a, b in zip(g_plain, g_ck):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# errors, dispatch, compile
# ----------------------------------------------------------------------------------------------------------------
def _err(match, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        attention(*args, **kwargs)


def test_errors(device):
    q, k, v = _qkv((2, 8, 2, 32), torch.float32, device, requires_grad=False)
    _err("share a dtype", q, k.half(), v)
    _err("same shape", q, k[:, :4], v)
    _err("head_dim 160", *(torch.zeros(2, 8, 2, 160, device=device) for _ in range(3)))
    _err("softmax_scale", q, k, v, softmax_scale=-0.5)
    _err("window", q, k, v, window=-1)
    _err("dtype torch.float64", *(t.double() for t in (q, k, v)))
    _err("4-D", q[0], k[0], v[0])
    _err("attention_mask must be the 2-D", q, k, v, attention_mask=torch.ones(2, 9, dtype=torch.long, device=device))
    _err("attention_mask must be the 2-D", q, k, v, attention_mask=torch.ones(2, 1, 1, 8, dtype=torch.long, device=device))
    _err("bool or integer", q, k, v, attention_mask=torch.ones(2, 8, device=device))
    for p in (-0.1, 1.0, 1.5, float("nan")):
        _err("dropout_p", q, k, v, dropout_p=p)
    _err("softmax_scale", q, k, v, softmax_scale=float("inf"))

    qp, kp, vp = (t.reshape(16, 2, 32) for t in (q, k, v))
    cu = torch.tensor([0, 8, 16], dtype=torch.int32, device=device)
    _err("3-D", q, k, v, cu_seqlens=cu, max_seqlen=8)
    _err("int32", qp, kp, vp, cu_seqlens=cu.long(), max_seqlen=8)
    _err("max_seqlen", qp, kp, vp, cu_seqlens=cu)
    _err("not both", qp, kp, vp, cu_seqlens=cu, max_seqlen=8, attention_mask=torch.ones(2, 8, device=device))
    _err("non-decreasing", qp, kp, vp, cu_seqlens=torch.tensor([0, 9, 8, 16], dtype=torch.int32, device=device), max_seqlen=9)
    _err(r"cu_seqlens\[0\] must be 0", qp, kp, vp, cu_seqlens=torch.tensor([1, 8, 16], dtype=torch.int32, device=device), max_seqlen=8)
    _err("number of tokens", qp, kp, vp, cu_seqlens=torch.tensor([0, 8, 15], dtype=torch.int32, device=device), max_seqlen=8)
    _err("smaller than the longest", qp, kp, vp, cu_seqlens=cu, max_seqlen=7)
    _err("max_seqlen is for the packed", q, k, v, max_seqlen=3)


@pytest.mark.parametrize("layout", ["padded", "packed", "window", "no-mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_fallback_path_matches_reference(device, monkeypatch, dtype, layout):
    """Where Triton cannot run, the functional is reference.attention_torch (torch SDPA): the same contract, checked
    against the oracle with the three-way rule, gradients included, fully padded rows and windows too."""
    monkeypatch.setattr(attn_mod._backend, "use_triton", lambda *t, op: False)
    if layout == "packed":
        cu = torch.tensor([0, 5, 5, 17], dtype=torch.int32, device=device)
        q, k, v = _qkv((17, 2, 32), dtype, device)
        _check_against_reference(q, k, v, cu_seqlens=cu, max_seqlen=12, name="fallback packed")
        return
    mask = None if layout == "no-mask" else make_attention_mask(3, 23, "one_row_padded", device=device)
    q, k, v = _qkv((3, 23, 2, 32), dtype, device)
    _check_against_reference(q, k, v, attention_mask=mask, window=4 if layout == "window" else None,
                             name=f"fallback {layout}")
    out = attention(q.detach(), k.detach(), v.detach(), attention_mask=mask)
    expected = attention_torch(q.detach(), k.detach(), v.detach(), attention_mask=mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_torch_compile_fullgraph(device, layout):
    """The op is an opaque torch.library custom op with fake kernels: dynamo traces it without graph breaks."""
    torch._dynamo.reset()
    if layout == "padded":
        mask = make_attention_mask(2, 17, "random", device=device)
        q, k, v = _qkv((2, 17, 2, 16), torch.float32, device)

        def fn(q, k, v):
            return attention(q, k, v, attention_mask=mask, dropout_p=0.0).sum(), attention(q, k, v, attention_mask=mask)
    else:
        cu = torch.tensor([0, 5, 5, 17], dtype=torch.int32, device=device)
        q, k, v = _qkv((17, 2, 16), torch.float32, device)

        def fn(q, k, v):
            return attention(q, k, v, cu_seqlens=cu, max_seqlen=12).sum(), attention(q, k, v, cu_seqlens=cu, max_seqlen=12)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    loss, out = compiled(q, k, v)
    g = torch.autograd.grad(loss, (q, k, v))
    eager_loss, eager_out = fn(q, k, v)
    g_eager = torch.autograd.grad(eager_loss, (q, k, v))
    torch.testing.assert_close(out, eager_out)
    for a, b in zip(g, g_eager):
        torch.testing.assert_close(a, b)


def test_torch_compile_with_dropout(device):
    torch._dynamo.reset()
    mask = make_attention_mask(2, 9, "random", device=device)
    q, k, v = _qkv((2, 9, 2, 16), torch.float32, device)
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, attention_mask=mask, dropout_p=0.25),
                             fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and (out[~mask.bool()] == 0).all()


def test_torch_library_opcheck(device):
    """torch.library.opcheck: schema, fake kernel and autograd registration agree with the real kernel."""
    mask = make_attention_mask(2, 9, "random", device=device)
    q, k, v = (t.detach() for t in _qkv((2, 9, 2, 16), torch.float32, device))
    torch.library.opcheck(
        torch.ops.fastbert.attention_fwd.default, (q, k, v, mask, None, None, 9, -1, 0.0, 0.25),
        test_utils=("test_schema", "test_faketensor"),
    )


# ----------------------------------------------------------------------------------------------------------------
# GPU: the full grid at real sizes (bf16 included); skipped without CUDA
# ----------------------------------------------------------------------------------------------------------------
GPU_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("padding", ["none", "random", "one_row_padded"])
@pytest.mark.parametrize("seqlen", [1, 7, 113, 509, 512, 1024])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_padded(dtype, head_dim, seqlen, padding):
    device = torch.device("cuda")
    mask = make_attention_mask(4, seqlen, padding, device=device)
    q, k, v = _qkv((4, seqlen, 12 if head_dim == 64 else 4, head_dim), dtype, device)
    _check_against_reference(q, k, v, attention_mask=mask, name=f"gpu padded {padding}")


@pytest.mark.gpu
@pytest.mark.parametrize("max_len", [1, 7, 113, 509, 512, 1024])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_packed(dtype, head_dim, max_len):
    device = torch.device("cuda")
    seqlens = _random_lengths(6, max_len)
    seqlens[0] = max_len
    seqlens[1] = 0
    cu = seqlens_to_cu_seqlens(seqlens).to(device)
    q, k, v = _qkv((int(seqlens.sum()), 4, head_dim), dtype, device)
    _check_against_reference(q, k, v, cu_seqlens=cu, max_seqlen=max_len, name="gpu packed")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("seqlen", [113, 512])
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
def test_gpu_dropout(dtype, head_dim, seqlen, layout):
    device = torch.device("cuda")
    if layout == "padded":
        mask = make_attention_mask(3, seqlen, "one_row_padded", device=device)
        q, k, v = _qkv((3, seqlen, 4, head_dim), dtype, device)
        _check_against_reference(q, k, v, attention_mask=mask, dropout_p=0.1, dropout=True, name="gpu dropout padded")
    else:
        seqlens = torch.tensor([seqlen, 0, seqlen // 2, 1])
        cu = seqlens_to_cu_seqlens(seqlens).to(device)
        q, k, v = _qkv((int(seqlens.sum()), 4, head_dim), dtype, device)
        _check_against_reference(q, k, v, cu_seqlens=cu, max_seqlen=seqlen, dropout_p=0.1, dropout=True, name="gpu dropout packed")


@pytest.mark.gpu
def test_gpu_dropout_statistics_bert_shape():
    device = torch.device("cuda")
    keep = keep_mask(_common.draw_seed(device), 32 * 12, 512, 512, 0.1)
    p = _common.effective_dropout_p(0.1)
    frac = keep.float().mean().item()
    assert abs(frac - (1 - p)) <= 4 * math.sqrt(p * (1 - p) / keep.numel())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_deterministic_and_race_free(dtype):
    """Ten backward passes at a BERT shape with dropout are bitwise identical (no atomics, no races)."""
    device = torch.device("cuda")
    mask = make_attention_mask(8, 509, "random", device=device)
    q, k, v = _qkv((8, 509, 12, 64), dtype, device)
    torch.manual_seed(3)
    out = attention(q, k, v, attention_mask=mask, dropout_p=0.1)
    dout = torch.randn_like(out)
    first = _grads(out, (q, k, v), dout)
    for _ in range(10):
        torch.manual_seed(3)
        again = _grads(attention(q, k, v, attention_mask=mask, dropout_p=0.1), (q, k, v), dout)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_bert_qkv_views_bf16():
    """BertModel's call: q, k, v views of the [B, S, 3, H, D] projection output, bf16, dropout 0.1."""
    device = torch.device("cuda")
    b, s, h, d = 8, 384, 12, 64
    qkv = torch.randn(b, s, 3, h, d, device=device, dtype=torch.bfloat16, requires_grad=True)
    mask = make_attention_mask(b, s, "random", device=device)
    q, k, v = qkv.unbind(2)
    out, keep = attention_with_keep_mask(q, k, v, attention_mask=mask, dropout_p=0.1)
    p = _common.effective_dropout_p(0.1)
    ref = attention_ref(*(t.float() for t in (q, k, v)), attention_mask=mask, dropout_p=p, dropout_mask=keep)
    reflp = attention_ref(q, k, v, attention_mask=mask, dropout_p=p, dropout_mask=keep, upcast=False)
    compare(out, ref, reflp, grad=False, name="bert qkv views")
    out.sum().backward()
    assert torch.isfinite(qkv.grad).all()


@pytest.mark.gpu
def test_gpu_no_recompile_across_lengths():
    """Sequence lengths are runtime arguments: new lengths reuse the compiled kernels."""
    device = torch.device("cuda")
    fwd = attn_mod._attn_fwd_kernel
    for s in (100, 200):
        q, k, v = _qkv((2, s, 4, 64), torch.float16, device, requires_grad=False)
        attention(q, k, v)
    def n_compiled():  # JITFunction.device_caches[device] = (kernel_cache, ...) in Triton 3.x
        if not hasattr(fwd, "device_caches"):
            return None
        return sum(len(c[0] if isinstance(c, tuple) else c) for c in fwd.device_caches.values())

    n_before = n_compiled()
    for s in (137, 301, 455, 333):
        q, k, v = _qkv((2, s, 4, 64), torch.float16, device, requires_grad=False)
        attention(q, k, v)
    if n_before is not None:
        n_after = n_compiled()
        assert n_after == n_before, (n_before, n_after)


@pytest.mark.gpu
def test_gpu_compile_inductor():
    device = torch.device("cuda")
    torch._dynamo.reset()
    mask = make_attention_mask(4, 128, "random", device=device)
    q, k, v = _qkv((4, 128, 12, 64), torch.bfloat16, device)
    compiled = torch.compile(lambda q, k, v: attention(q, k, v, attention_mask=mask), fullgraph=True)
    out = compiled(q, k, v)
    torch.testing.assert_close(out, attention(q, k, v, attention_mask=mask), atol=0, rtol=0)
    out.float().sum().backward()


# ----------------------------------------------------------------------------------------------------------------
# the CUDA compiler (the interpreter accepts code the compiler rejects): every kernel, for sm_90, with the launch
# parameters the launchers pick on a GPU, without a GPU (Triton ships ptxas)
# ----------------------------------------------------------------------------------------------------------------
_KERNEL_POINTERS = {
    "fwd": ("_attn_fwd_kernel", dict(Q="bf16", K="bf16", V="bf16", O="bf16", LSE="fp32", MASK="i64", SPANS="i32",
                                     CU_SEQLENS="i32", SEED="i64")),
    "dq": ("_attn_bwd_dq_kernel", dict(Q="bf16", K="bf16", V="bf16", O="bf16", DO="bf16", LSE="fp32",
                                       DELTA="fp32", DQ="bf16", MASK="i64", SPANS="i32", CU_SEQLENS="i32", SEED="i64")),
    "dkdv": ("_attn_bwd_dkdv_kernel", dict(Q="bf16", K="bf16", V="bf16", DO="bf16", LSE="fp32", DELTA="fp32",
                                           DK="bf16", DV="bf16", MASK="i64", SPANS="i32", CU_SEQLENS="i32", SEED="i64")),
}


@pytest.mark.parametrize("kind", ["fwd", "dq", "dkdv"])
@pytest.mark.parametrize("head_dim,packed,dropout,windowed", [(32, False, True, False), (64, True, False, True),
                                                              (128, False, False, False), (80, False, False, True)])
def test_kernels_compile_for_cuda(kind, head_dim, packed, dropout, windowed):
    from helpers import aot_compile_cuda

    kernel, pointers = _KERNEL_POINTERS[kind]
    launch = attn_mod._launch_config(kind, head_dim, torch.bfloat16, (9, 0), dropout)  # what an H100 launches
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=attn_mod._block_d(head_dim), BLOCK_M=launch["BLOCK_M"],
                      BLOCK_N=launch["BLOCK_N"], IS_PACKED=packed, HAS_MASK=not packed, WINDOWED=windowed,
                      HAS_DROPOUT=dropout, DOT_PRECISION="tf32")
    floats = ("qk_scale", "softmax_scale", "dropout_scale")
    aot_compile_cuda("fastbert.ops.fused_attention", kernel, pointers, constexprs, floats=floats,
                     num_warps=launch["num_warps"], num_stages=launch["num_stages"])
