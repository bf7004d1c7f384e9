"""fastbert.ops.bias_gelu: fused bias + GELU (exact erf by default, tanh on request) against the PyTorch reference.

CPU runs the Triton kernels through the interpreter (fp32/fp16); the GPU-marked tests cover bf16, BERT's
[tokens, 3072] shapes, autocast and inductor.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

from fastbert.ops import bias_gelu
from fastbert.ops.fused_gelu import BiasGeluFn
from fastbert.ops.reference import bias_gelu_ref
from helpers import FLOOR, K_GRAD, K_OUT, assert_runs_identical, maxerr

CPU_DTYPES = [torch.float32, torch.float16]


def _grads(y, tensors, dy):
    live = [t for t in tensors if t is not None]
    got = iter(torch.autograd.grad(y, live, dy))
    return [None if t is None else next(got) for t in tensors]


def _check(ours, ref32, reflp, *, grad, name, reduced=False):
    """Three-way rule; the floor of the row-summed dbias scales with its magnitude (fp32 summation order)."""
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    assert ours.shape == ref32.shape and ours.dtype == reflp.dtype, f"{name}: {ours.shape}/{ours.dtype}"
    floor = FLOOR[ours.dtype] * (max(1.0, ref32.abs().max().item()) if reduced else 1.0)
    err, base = maxerr(ours, ref32), maxerr(reflp, ref32)
    bound = (K_GRAD if grad else K_OUT) * base + floor
    assert err <= bound, f"{name}: maxerr {err:.3e} > bound {bound:.3e} (reference in own dtype: {base:.3e})"


def _compare(rows, n, dtype, device, approximate, bias=True, lead=(), scale=3.0):
    shape = lead + (rows, n)
    x = (scale * torch.randn(shape, device=device)).to(dtype).requires_grad_()
    b = torch.randn(n, device=device).to(dtype).requires_grad_() if bias else None
    y = bias_gelu(x, b, approximate)
    assert y.dtype == dtype and y.shape == x.shape
    dy = torch.randn_like(y)
    got = _grads(y, [x, b], dy)

    x32 = x.detach().float().requires_grad_()
    b32 = b.detach().float().requires_grad_() if bias else None
    y32 = bias_gelu_ref(x32, b32, approximate)
    ref32 = _grads(y32, [x32, b32], dy.float())
    xlp = x.detach().clone().requires_grad_()
    blp = b.detach().clone().requires_grad_() if bias else None
    ylp = bias_gelu_ref(xlp, blp, approximate, upcast=False)
    reflp = _grads(ylp, [xlp, blp], dy)

    _check(y, y32, ylp, grad=False, name="y")
    _check(got[0], ref32[0], reflp[0], grad=True, name="dx")
    if bias:
        _check(got[1], ref32[1], reflp[1], grad=True, name="dbias", reduced=True)


# ---------------------------------------------------------------------------------------------------------------
# numerics vs the reference (interpreter on CPU)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("n", [384, 768, 1023, 3072])
@pytest.mark.parametrize("rows", [1, 7, 67])
def test_bias_gelu(rows, n, dtype, approximate, device):
    _compare(rows, n, dtype, device, approximate)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_no_bias(approximate, device):
    _compare(7, 1023, torch.float32, device, approximate, bias=False)


def test_rows_4097_fp32(device):
    _compare(4097, 128, torch.float32, device, "none")


def test_leading_dims_and_row_strided_views(device):
    base = torch.randn(2, 5, 3100, device=device)
    x = base[..., :3072].detach().requires_grad_()  # row stride 3100
    b = torch.randn(3072, device=device, requires_grad=True)
    y = bias_gelu(x, b)
    assert y.shape == (2, 5, 3072)
    dy = torch.randn(3072, 2, 5, device=device).permute(1, 2, 0)  # non-contiguous gradient
    y.backward(dy)
    x32, b32 = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    yr = F.gelu(x32 + b32)
    yr.backward(dy)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x32.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.grad, b32.grad, atol=1e-4, rtol=1e-5)


def test_extreme_inputs_stay_finite(device):
    """Large |z| (tanh's exp would overflow a naive formula) give gelu(z) = max(z, 0) and gradients 0 or 1."""
    z = torch.tensor([[-1e4, -200.0, -30.0, -5.0, 0.0, 5.0, 30.0, 200.0, 1e4] + [0.0] * 7], device=device)
    for approximate in ("none", "tanh"):
        x = z.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # the interpreter reports numpy overflow as a warning
            y = bias_gelu(x, None, approximate)
            y.sum().backward()
        torch.testing.assert_close(y, F.gelu(z, approximate=approximate), atol=1e-5, rtol=1e-6)
        zr = z.clone().requires_grad_()
        expected = torch.autograd.grad(F.gelu(zr, approximate=approximate).sum(), zr)[0]
        torch.testing.assert_close(x.grad, expected, atol=1e-5, rtol=1e-5)


def test_mixed_dtypes_like_autocast(device):
    """fp16 activations with an fp32 bias (autocast's layout): y and dx in fp16, dbias in fp32."""
    x = torch.randn(7, 768, device=device, dtype=torch.float16, requires_grad=True)
    b = torch.randn(768, device=device, requires_grad=True)
    y = bias_gelu(x, b)
    assert y.dtype == torch.float16
    y.backward(torch.ones_like(y))
    assert x.grad.dtype == torch.float16 and b.grad.dtype == torch.float32
    torch.testing.assert_close(y, bias_gelu_ref(x.detach(), b.detach()), atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(b.grad, x.grad.float().sum(0), atol=1e-2, rtol=1e-3)


def test_partial_requires_grad(device):
    x = torch.randn(7, 384, device=device, requires_grad=True)
    b = torch.randn(384, device=device)  # frozen bias
    bias_gelu(x, b).sum().backward()
    assert x.grad is not None and b.grad is None
    x2 = x.detach()
    b2 = b.clone().requires_grad_()
    bias_gelu(x2, b2).sum().backward()
    torch.testing.assert_close(b2.grad, x.grad.sum(0), atol=1e-5, rtol=1e-5)


def test_empty_rows(device):
    x = torch.randn(0, 768, device=device, requires_grad=True)
    b = torch.randn(768, device=device, requires_grad=True)
    y = bias_gelu(x, b)
    y.sum().backward()
    assert y.shape == (0, 768) and torch.equal(b.grad, torch.zeros_like(b))


def test_backward_is_deterministic(device):
    x = torch.randn(67, 3072, device=device, requires_grad=True)
    b = torch.randn(3072, device=device, requires_grad=True)
    dy = torch.randn(67, 3072, device=device)
    runs = [torch.autograd.grad(BiasGeluFn.apply(x, b, False), [x, b], dy) for _ in range(2)]
    for a, c in zip(*runs):
        assert torch.equal(a, c)


# ---------------------------------------------------------------------------------------------------------------
# exact vs tanh: never confused
# ---------------------------------------------------------------------------------------------------------------
def test_erf_and_tanh_are_not_substituted(device):
    """On z in [-4, 4] the two GELUs differ by > 1e-4 somewhere; each mode matches its own reference far more
    closely than the other's."""
    z = torch.linspace(-4, 4, 1024, device=device)[None, :]
    exact, approx = F.gelu(z), F.gelu(z, approximate="tanh")
    gap = (exact - approx).abs().max().item()
    assert gap > 1e-4
    ours_default = bias_gelu(z, None)
    ours_exact = bias_gelu(z, None, "none")
    ours_tanh = bias_gelu(z, None, "tanh")
    assert torch.equal(ours_default, ours_exact)
    assert maxerr(ours_exact, exact) < gap / 20 and maxerr(ours_exact, approx) > gap / 2
    assert maxerr(ours_tanh, approx) < gap / 20 and maxerr(ours_tanh, exact) > gap / 2
    # and the gradients too
    zr = z.clone().requires_grad_()
    g_exact = torch.autograd.grad(F.gelu(zr).sum(), zr)[0]
    g_tanh = torch.autograd.grad(F.gelu(zr, approximate="tanh").sum(), zr)[0]
    zo = z.clone().requires_grad_()
    g_ours = torch.autograd.grad(bias_gelu(zo, None).sum(), zo)[0]
    assert maxerr(g_ours, g_exact) < maxerr(g_exact, g_tanh) / 20


@pytest.mark.parametrize("approximate", ["erf", "gelu", "exact", "Tanh", "tanh ", "", None, True])
def test_invalid_approximate_raises(approximate, device):
    with pytest.raises(ValueError, match="approximate"):
        bias_gelu(torch.randn(2, 8, device=device), None, approximate)


@pytest.mark.parametrize(
    "case, match",
    [("bias_shape", "bias"), ("bias_2d", "bias"), ("int_x", "x must be a floating"), ("int_bias", "bias must be a floating")],
)
def test_bad_input_raises_value_error(case, match, device):
    x, b = torch.randn(3, 16, device=device), torch.randn(16, device=device)
    if case == "bias_shape":
        b = torch.randn(17, device=device)
    elif case == "bias_2d":
        b = torch.randn(1, 16, device=device)
    elif case == "int_x":
        x = torch.ones(3, 16, dtype=torch.int32, device=device)
    elif case == "int_bias":
        b = torch.ones(16, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match=match):
        bias_gelu(x, b)


# ---------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------
def test_torch_compile_fullgraph(device):
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    x = torch.randn(2, 3, 64, device=device, requires_grad=True)
    b = torch.randn(64, device=device, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x_, b_: bias_gelu(x_, b_, "tanh"), fullgraph=True, backend=backend)
    y = compiled(x, b)
    gc = torch.autograd.grad(y, [x, b], torch.ones_like(y))
    ye = bias_gelu(x, b, "tanh")
    ge = torch.autograd.grad(ye, [x, b], torch.ones_like(ye))
    torch.testing.assert_close(y, ye, atol=1e-6, rtol=1e-6)
    for a, c in zip(gc, ge):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# GPU only
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [128, 384, 768, 1023, 3072, 4096])
@pytest.mark.parametrize("rows", [1, 7, 4097])
def test_gpu_grid(rows, n, dtype, approximate, device):
    _compare(rows, n, dtype, device, approximate)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_bert_intermediate_shape(dtype, device):
    _compare(512, 3072, dtype, device, "none", lead=(32,))


@pytest.mark.gpu
def test_gpu_many_rows(device):
    _compare(70000, 128, torch.bfloat16, device, "none")


@pytest.mark.gpu
def test_gpu_autocast_bf16(device):
    """BertIntermediate's fused path under autocast: x = F.linear(h, W) in bf16, fp32 bias."""
    dense = torch.nn.Linear(768, 3072, device=device)
    h = torch.randn(8, 128, 768, device=device, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = bias_gelu(F.linear(h, dense.weight), dense.bias)
        ref = F.gelu(dense(h))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert dense.bias.grad.dtype == torch.float32 and h.grad is not None
    torch.testing.assert_close(y.float(), ref.float(), atol=3e-2, rtol=2e-2)


@pytest.mark.gpu
def test_gpu_backward_deterministic_large(device):
    x = torch.randn(16384, 3072, device=device, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(3072, device=device, requires_grad=True)
    dy = torch.randn_like(x)
    runs = [torch.autograd.grad(BiasGeluFn.apply(x, b, False), [x, b], dy) for _ in range(3)]
    assert_runs_identical(runs)


# ---------------------------------------------------------------------------------------------------------------
# the kernels compile for real GPUs (the interpreter accepts code the compiler rejects)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the other tests compile the kernels for real")
@pytest.mark.parametrize("tanh", [False, True], ids=["erf", "tanh"])
def test_kernels_compile_for_cuda(tanh):
    from helpers import aot_compile_cuda

    pointers = {"X": "bf16", "Y": "bf16", "DY": "bf16", "DX": "bf16", "B": "fp32", "DB_PARTIAL": "fp32"}
    aot_compile_cuda("fastbert.ops.fused_gelu", "_bias_gelu_fwd_kernel", pointers,
                     dict(HAS_BIAS=True, TANH=tanh, BLOCK_M=4, BLOCK_N=1024), num_warps=8)
    aot_compile_cuda("fastbert.ops.fused_gelu", "_bias_gelu_bwd_kernel", pointers,
                     dict(HAS_BIAS=True, COMPUTE_DB=True, TANH=tanh, BLOCK_M=2, BLOCK_N=1024), num_warps=8)
