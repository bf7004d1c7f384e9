"""fastbert.ops.layer_norm: fused dropout + residual + LayerNorm against the PyTorch reference.

CPU runs the Triton kernels through the interpreter (fp32/fp16, small row counts); the GPU-marked tests cover bf16,
4097+ rows, hidden up to 4096 and more, autocast and inductor.
"""
import pytest
import torch
import torch.nn.functional as F

from fastbert.ops import layer_norm
from fastbert.ops._common import draw_seed, effective_dropout_p
from fastbert.ops.fused_layer_norm import MAX_HIDDEN, LayerNormFn
from fastbert.ops.reference import layer_norm_ref
from helpers import (FLOOR, K_GRAD, K_OUT, assert_runs_identical, keep_mask, layer_norm_with_keep_mask, maxerr,
                     seed_of_next_op)


def dropout_mask(seed, rows, cols, p):
    return keep_mask(seed, 1, rows, cols, p)[0]

CPU_DTYPES = [torch.float32, torch.float16]


def _inputs(rows, hidden, dtype, device, residual=True, bias=True, lead=()):
    shape = lead + (rows, hidden) if lead else (rows, hidden)
    x = torch.randn(shape, device=device).to(dtype).requires_grad_()
    r = (2.0 * torch.randn(shape, device=device) + 1.0).to(dtype).requires_grad_() if residual else None
    w = (1.0 + 0.2 * torch.randn(hidden, device=device)).to(dtype).requires_grad_()
    b = (0.2 * torch.randn(hidden, device=device)).to(dtype).requires_grad_() if bias else None
    return x, r, w, b


def _detached32(t):
    return None if t is None else t.detach().float().requires_grad_()


def _detached(t):
    return None if t is None else t.detach().clone().requires_grad_()


def _grads(y, tensors, dy):
    live = [t for t in tensors if t is not None]
    got = iter(torch.autograd.grad(y, live, dy))
    return [None if t is None else next(got) for t in tensors]


def _check(ours, ref32, reflp, *, grad, name, reduced=False):
    """Three-way rule (helpers.assert_three_way); for row-summed gradients (dweight, dbias) the floor scales with
    the magnitude of the sum, since fp32 summation order alone moves it by ~eps * |sum|."""
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    assert ours.shape == ref32.shape and ours.dtype == reflp.dtype, f"{name}: {ours.shape}/{ours.dtype}"
    floor = FLOOR[ours.dtype] * (max(1.0, ref32.abs().max().item()) if reduced else 1.0)
    err, base = maxerr(ours, ref32), maxerr(reflp, ref32)
    bound = (K_GRAD if grad else K_OUT) * base + floor
    assert err <= bound, f"{name}: maxerr {err:.3e} > bound {bound:.3e} (reference in own dtype: {base:.3e})"


def _compare(rows, hidden, dtype, device, residual, dropout_p, bias=True, eps=1e-12, lead=()):
    x, r, w, b = _inputs(rows, hidden, dtype, device, residual, bias, lead)
    y, mask = layer_norm_with_keep_mask(x, w, b, eps, r, dropout_p)
    assert y.dtype == dtype and y.shape == x.shape
    dy = torch.randn_like(y)
    got = _grads(y, [x, r, w, b], dy)

    ref_in = [_detached32(t) for t in (x, r, w, b)]
    p_eff = effective_dropout_p(dropout_p)  # the kernels round p to a multiple of 1/256 (ops/_common.py)
    y32 = layer_norm_ref(ref_in[0], ref_in[2], ref_in[3], eps, ref_in[1], p_eff, dropout_mask=mask)
    ref32 = _grads(y32, ref_in, dy.float())
    lp_in = [_detached(t) for t in (x, r, w, b)]
    ylp = layer_norm_ref(lp_in[0], lp_in[2], lp_in[3], eps, lp_in[1], p_eff, dropout_mask=mask, upcast=False)
    reflp = _grads(ylp, lp_in, dy)

    _check(y, y32, ylp, grad=False, name="y")
    for name, g, g32, glp in zip(("dx", "dresidual", "dweight", "dbias"), got, ref32, reflp):
        if g32 is None:
            assert g is None
            continue
        _check(g, g32, glp, grad=True, name=name, reduced=name in ("dweight", "dbias"))
    return mask


# ---------------------------------------------------------------------------------------------------------------
# numerics vs the reference (interpreter on CPU)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [384, 768, 1023])
@pytest.mark.parametrize("rows", [1, 7, 257])
def test_residual_layer_norm(rows, hidden, dtype, device):
    _compare(rows, hidden, dtype, device, residual=True, dropout_p=0.0)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("rows, hidden", [(1, 768), (7, 1023), (257, 384)])
def test_plain_layer_norm(rows, hidden, dtype, device):
    _compare(rows, hidden, dtype, device, residual=False, dropout_p=0.0)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no_residual"])
@pytest.mark.parametrize("rows, hidden", [(1, 384), (7, 1023), (67, 768)])
def test_dropout_residual_layer_norm(rows, hidden, residual, dtype, device):
    mask = _compare(rows, hidden, dtype, device, residual=residual, dropout_p=0.1)
    assert mask is not None and mask.shape == (rows, hidden)


def test_rows_4097_fp32(device):
    """The issue's 4097-row case, once on CPU (fp32, narrow and without dropout: the interpreter is slow);
    the GPU tests cover 4097 rows at every width with dropout."""
    _compare(4097, 128, torch.float32, device, residual=True, dropout_p=0.0)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_no_bias_and_eps(bias, device):
    _compare(7, 128, torch.float32, device, residual=True, dropout_p=0.0, bias=bias, eps=1e-5)


def test_leading_dims_and_row_strided_views(device):
    """[batch, seqlen, hidden] inputs, x a column-slice view (row stride > hidden), dy non-contiguous."""
    base = torch.randn(3, 5, 800, device=device)
    x = base[..., :768].detach().requires_grad_()  # leaf with row stride 800: reshape keeps the view
    assert x.stride(1) == 800
    r = torch.randn(5, 3, 768, device=device).transpose(0, 1).requires_grad_()  # non-contiguous leading dims
    w = torch.randn(768, device=device, requires_grad=True)
    b = torch.randn(768, device=device, requires_grad=True)
    y = layer_norm(x, w, b, 1e-12, residual=r)
    assert y.shape == (3, 5, 768)
    dy = torch.randn(768, 3, 5, device=device).permute(1, 2, 0)  # non-contiguous gradient
    y.backward(dy)
    x32 = x.detach().clone().requires_grad_()
    r32 = r.detach().clone().requires_grad_()
    w32, b32 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    yr = F.layer_norm(x32 + r32, (768,), w32, b32, 1e-12)
    yr.backward(dy)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x32.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.grad, r32.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.grad, w32.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(b.grad, b32.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "needs", [(True, False, False, False), (False, True, False, False), (False, False, True, True), (True, True, False, False)]
)
def test_partial_requires_grad(needs, device):
    """Only the requested gradients are computed; each equals the full computation's."""
    x, r, w, b = _inputs(7, 384, torch.float32, device)
    full = _grads(layer_norm(x, w, b, 1e-12, residual=r), [x, r, w, b], torch.ones(7, 384, device=device))
    leaves = [t.detach().clone().requires_grad_(need) for t, need in zip((x, r, w, b), needs)]
    y = layer_norm(leaves[0], leaves[2], leaves[3], 1e-12, residual=leaves[1])
    y.backward(torch.ones_like(y))
    for t, need, ref in zip(leaves, needs, full):
        if need:
            torch.testing.assert_close(t.grad, ref, atol=1e-5, rtol=1e-5)
        else:
            assert t.grad is None


def test_mixed_dtypes_like_autocast(device):
    """fp16 activations with fp32 parameters (autocast's layout): y and dx in fp16, dweight/dbias in fp32."""
    x, r, w32, b32 = _inputs(7, 768, torch.float16, device)
    w = w32.detach().float().requires_grad_()
    b = b32.detach().float().requires_grad_()
    y = layer_norm(x, w, b, 1e-12, residual=r)
    assert y.dtype == torch.float16
    y.backward(torch.ones_like(y))
    assert x.grad.dtype == torch.float16 and r.grad.dtype == torch.float16
    assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    ref = layer_norm_ref(x.detach(), w.detach(), b.detach(), 1e-12, r.detach())
    torch.testing.assert_close(y, ref, atol=2e-3, rtol=2e-3)


def test_residual_of_another_dtype(device):
    """fp32 residual (e.g. from a non-fused LayerNorm under autocast) with fp16 x: dresidual comes back fp32."""
    x, _, w, b = _inputs(7, 384, torch.float16, device, residual=False)
    r = torch.randn(7, 384, device=device, requires_grad=True)
    y = layer_norm(x, w, b, 1e-12, residual=r)
    y.backward(torch.ones_like(y))
    assert r.grad.dtype == torch.float32 and x.grad.dtype == torch.float16
    torch.testing.assert_close(r.grad.half(), x.grad, atol=0, rtol=0)


def test_empty_rows(device):
    x, r, w, b = _inputs(0, 768, torch.float32, device)
    y = layer_norm(x, w, b, 1e-12, residual=r)
    assert y.shape == (0, 768)
    y.sum().backward()
    assert x.grad.shape == (0, 768) and torch.equal(w.grad, torch.zeros_like(w))


# ---------------------------------------------------------------------------------------------------------------
# dropout: statistics, reproducibility, replay
# ---------------------------------------------------------------------------------------------------------------
def test_keep_fraction_within_four_sigma(device):
    p, rows, cols = effective_dropout_p(0.1), 257, 1023
    mask = dropout_mask(seed_of_next_op(0, device), rows, cols, p)
    n = rows * cols
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(mask.float().mean().item() - (1 - p)) < 4 * sigma
    # no structure along rows or columns: every row and column keeps about 1 - p
    assert (mask.float().mean(1) - (1 - p)).abs().max() < 6 * (p * (1 - p) / cols) ** 0.5
    assert (mask.float().mean(0) - (1 - p)).abs().max() < 6 * (p * (1 - p) / rows) ** 0.5


def test_mask_depends_only_on_seed_row_col(device):
    seed = seed_of_next_op(0, device)
    big = dropout_mask(seed, 33, 1023, 0.3)
    assert torch.equal(dropout_mask(seed, 5, 1023, 0.3), big[:5])
    assert torch.equal(dropout_mask(seed, 33, 100, 0.3), big[:, :100])  # other block widths, same mapping
    assert not torch.equal(dropout_mask(seed_of_next_op(1, device), 33, 1023, 0.3), big)
    assert not torch.equal(big[0], big[1])


def test_dropout_extremes(device):
    """p close to 1 drops nearly everything and stays finite; p = 1 is refused like in every other op."""
    x, r, w, b = _inputs(7, 384, torch.float32, device)
    y, keep = layer_norm_with_keep_mask(x, w, b, 1e-12, r, 0.999)
    assert keep.float().mean() < 0.01 and torch.isfinite(y).all()
    torch.testing.assert_close(y, layer_norm_ref(x, w, b, 1e-12, r, effective_dropout_p(0.999), dropout_mask=keep),
                               atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"dropout_p must be a float in \[0, 1\)"):
        layer_norm(x, w, b, 1e-12, residual=r, dropout_p=1.0)


def test_dropout_follows_torch_manual_seed(device):
    x, r, w, b = _inputs(7, 384, torch.float32, device)
    torch.manual_seed(123)
    y1 = layer_norm(x, w, b, 1e-12, residual=r, dropout_p=0.5)
    torch.manual_seed(123)
    y2 = layer_norm(x, w, b, 1e-12, residual=r, dropout_p=0.5)
    y3 = layer_norm(x, w, b, 1e-12, residual=r, dropout_p=0.5)
    assert torch.equal(y1, y2) and not torch.equal(y2, y3)


def test_activation_checkpoint_replays_dropout(device):
    """torch.utils.checkpoint restores the RNG state before recomputing, so the replayed mask is the same."""
    from torch.utils.checkpoint import checkpoint

    x, r, w, b = _inputs(7, 384, torch.float32, device)

    def block(x_, r_):
        return layer_norm(x_ * 2.0, w, b, 1e-12, residual=r_, dropout_p=0.3)

    dy = torch.randn(7, 384, device=device)
    torch.manual_seed(7)
    g_plain = torch.autograd.grad(block(x, r), [x, r, w], dy)
    torch.manual_seed(7)
    g_ckpt = torch.autograd.grad(checkpoint(block, x, r, use_reentrant=False), [x, r, w], dy)
    for a, c in zip(g_plain, g_ckpt):
        assert torch.equal(a, c)


def test_backward_is_deterministic(device):
    x, r, w, b = _inputs(67, 768, torch.float32, device)
    seed = draw_seed(device)
    dy = torch.randn(67, 768, device=device)
    runs = [
        torch.autograd.grad(LayerNormFn.apply(x, w, b, r, seed, 1e-12, 0.1), [x, r, w, b], dy) for _ in range(2)
    ]
    for a, c in zip(*runs):
        assert torch.equal(a, c)


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case, match",
    [
        ("weight_shape", "weight"),
        ("bias_shape", "bias"),
        ("residual_shape", "residual"),
        ("int_x", "x must be a floating"),
        ("int_weight", "weight must be a floating"),
        ("hidden_too_large", "too large"),
        ("dropout_p", "dropout_p"),
    ],
)
def test_bad_input_raises_value_error(case, match, device):
    n = 64
    x, w, b, r, p = torch.randn(3, n, device=device), torch.ones(n, device=device), torch.zeros(n, device=device), None, 0.0
    if case == "weight_shape":
        w = torch.ones(n + 1, device=device)
    elif case == "bias_shape":
        b = torch.zeros(1, n, device=device)
    elif case == "residual_shape":
        r = torch.randn(4, n, device=device)
    elif case == "int_x":
        x = torch.ones(3, n, dtype=torch.int64, device=device)
    elif case == "int_weight":
        w = torch.ones(n, dtype=torch.int32, device=device)
    elif case == "hidden_too_large":
        n = MAX_HIDDEN + 1
        x, w, b = torch.randn(1, n, device=device), torch.ones(n, device=device), torch.zeros(n, device=device)
    elif case == "dropout_p":
        p = 1.5
    with pytest.raises(ValueError, match=match):
        layer_norm(x, w, b, 1e-12, residual=r, dropout_p=p)


# ---------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------
def test_torch_compile_fullgraph(device):
    """The custom ops trace without graph breaks (aot_eager on CPU keeps CI fast; inductor runs on the GPU)."""
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    x, r, w, b = _inputs(2 * 3, 64, torch.float32, device)

    def f(x_, r_):
        return layer_norm(x_, w, b, 1e-12, residual=r_, dropout_p=0.2)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    torch.manual_seed(3)
    y = compiled(x, r)
    gc = torch.autograd.grad(y, [x, r, w, b], torch.ones_like(y))
    if backend == "aot_eager":  # same RNG stream as eager, so same mask: identical results
        torch.manual_seed(3)
        ye = f(x, r)
        ge = torch.autograd.grad(ye, [x, r, w, b], torch.ones_like(ye))
        assert torch.equal(y, ye)
        for a, c in zip(gc, ge):
            assert torch.equal(a, c)
    # without dropout compiled and eager agree whatever the backend
    torch._dynamo.reset()
    g = torch.compile(lambda x_, r_: layer_norm(x_, w, b, 1e-12, residual=r_), fullgraph=True, backend=backend)
    torch.testing.assert_close(g(x, r), layer_norm(x, w, b, 1e-12, residual=r), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# GPU only: bf16, the full shape grid, large rows and widths, autocast
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hidden", [128, 384, 768, 1023, 1024, 4096])
@pytest.mark.parametrize("rows", [1, 7, 4097])
def test_gpu_grid(rows, hidden, dtype, dropout_p, device):
    _compare(rows, hidden, dtype, device, residual=True, dropout_p=dropout_p)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_bert_shape_no_residual(dtype, device):
    _compare(4097, 768, dtype, device, residual=False, dropout_p=0.1, lead=(4,))


@pytest.mark.gpu
@pytest.mark.parametrize("rows, hidden", [(70000, 128), (33, 8192), (9, 16384)])
def test_gpu_many_rows_and_wide(rows, hidden, device):
    """Rows above 65535 (grid-dimension bugs) and the widest supported rows."""
    _compare(rows, hidden, torch.bfloat16, device, residual=True, dropout_p=0.1)


@pytest.mark.gpu
def test_gpu_autocast_bf16(device):
    """Under autocast (fp32 parameters, bf16 activations from a Linear) the op runs and returns bf16."""
    lin = torch.nn.Linear(768, 768, device=device)
    ln = torch.nn.LayerNorm(768, eps=1e-12, device=device)
    h = torch.randn(8, 128, 768, device=device, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer_norm(lin(h), ln.weight, ln.bias, 1e-12, residual=h.bfloat16())
        ref = ln(lin(h).float() + h.bfloat16().float())
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert ln.weight.grad.dtype == torch.float32 and h.grad is not None
    torch.testing.assert_close(y.float(), ref.float(), atol=3e-2, rtol=2e-2)


@pytest.mark.gpu
def test_gpu_backward_deterministic_large(device):
    x, r, w, b = _inputs(16384, 768, torch.bfloat16, device)
    seed = draw_seed(device)
    dy = torch.randn(16384, 768, device=device, dtype=torch.bfloat16)
    runs = [torch.autograd.grad(LayerNormFn.apply(x, w, b, r, seed, 1e-12, 0.1), [x, r, w, b], dy) for _ in range(3)]
    assert_runs_identical(runs)


# ---------------------------------------------------------------------------------------------------------------
# the kernels compile for real GPUs (the interpreter accepts code the compiler rejects)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the other tests compile the kernels for real")
@pytest.mark.parametrize("dropout", [False, True], ids=["plain", "dropout"])
def test_kernels_compile_for_cuda(dropout):
    from helpers import aot_compile_cuda

    act = {name: "bf16" for name in ("X", "R", "Y", "DY", "DRES", "DX")}
    params = {"W": "fp32", "B": "fp32", "MEAN": "fp32", "RSTD": "fp32", "SEED": "i64", "DW_PARTIAL": "fp32",
              "DB_PARTIAL": "fp32"}
    floats = ("eps", "dropout_scale")
    aot_compile_cuda(
        "fastbert.ops.fused_layer_norm", "_layer_norm_fwd_kernel", {**act, **params},
        dict(HAS_RESIDUAL=True, HAS_BIAS=True, HAS_DROPOUT=dropout, BLOCK_M=4, BLOCK_N=1024), floats=floats, num_warps=8,
    )
    aot_compile_cuda(
        "fastbert.ops.fused_layer_norm", "_layer_norm_bwd_kernel", {**act, **params},
        dict(HAS_RESIDUAL=True, HAS_DROPOUT=dropout, STORE_DRES=dropout, STORE_DX=True, COMPUTE_DW=True,
             COMPUTE_DB=True, BLOCK_M=2, BLOCK_N=1024),
        floats=floats, num_warps=8,
    )
