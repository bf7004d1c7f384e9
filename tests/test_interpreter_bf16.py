"""tests/interpreter_bf16.py: the interpreter's bf16 tl.dot is wrong without it and exact (fp32 accumulation) with it.

Interpreter-only: with CUDA the kernels are compiled, the interpreter is not used and conftest installs nothing.
"""
import os

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

import interpreter_bf16

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), reason="tests the Triton interpreter (TRITON_INTERPRET=1)"
)


@triton.jit
def _dot_kernel(A, B, C, ACC, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
                TRANS_B: tl.constexpr, HAS_ACC: tl.constexpr, PRECISION: tl.constexpr):
    """C = A @ B (+ ACC) for one tile; A [M, K]; B [K, N], or [N, K] read and transposed in-kernel when TRANS_B."""
    m = tl.arange(0, M)
    n = tl.arange(0, N)
    k = tl.arange(0, K)
    a = tl.load(A + m[:, None] * K + k[None, :])
    if TRANS_B:
        b = tl.trans(tl.load(B + n[:, None] * K + k[None, :]))
    else:
        b = tl.load(B + k[:, None] * N + n[None, :])
    if HAS_ACC:
        acc = tl.load(ACC + m[:, None] * N + n[None, :])
        c = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        c = tl.dot(a, b, input_precision=PRECISION)
    tl.store(C + m[:, None] * N + n[None, :], c)


def _run(m, n, k, trans_b=False, has_acc=False, precision="tf32"):
    """(kernel result fp32, exact result fp64, |a| @ |b| + |acc| in fp64) for random bf16 operands."""
    a = torch.randn(m, k).bfloat16()
    b = torch.randn(n, k).bfloat16() if trans_b else torch.randn(k, n).bfloat16()
    b_kn = b.t() if trans_b else b
    acc = torch.randn(m, n) if has_acc else torch.zeros(m, n)
    c = torch.empty(m, n)
    _dot_kernel[(1,)](a, b, c, acc, M=m, N=n, K=k, TRANS_B=trans_b, HAS_ACC=has_acc, PRECISION=precision)
    exact = a.double() @ b_kn.double() + acc.double()  # bf16 products and these short sums are exact in fp64
    scale = a.double().abs() @ b_kn.double().abs() + acc.double().abs()
    return c, exact, scale, (a, b_kn, acc)


def test_bf16_bits_to_fp32_is_exact_for_every_bf16():
    """All 65536 bit patterns (zeros, subnormals, inf, NaN) widen to the value torch gives the same bf16."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    x = bits.view(torch.bfloat16)
    widened = interpreter_bf16.bf16_bits_to_fp32(bits.numpy().view(np.uint16))
    np.testing.assert_array_equal(widened.view(np.uint32), x.float().numpy().view(np.uint32))


def test_patch_is_needed():
    """Without the patch the interpreter multiplies bf16 bit patterns as integers: the dot is nowhere near the
    product. (If this fails, Triton fixed issue 11584 and tests/interpreter_bf16.py can go.)"""
    with interpreter_bf16.original_dot():
        c, exact, scale, _ = _run(16, 16, 32)
    assert (c.double() - exact).abs().max() > 1e3 * scale.max()
    assert interpreter_bf16.is_installed()  # restored after the block


@pytest.mark.parametrize("precision", ["ieee", "tf32"])
@pytest.mark.parametrize(
    "m, n, k, trans_b, has_acc",
    [(16, 16, 16, False, False), (32, 16, 64, False, True), (16, 32, 32, True, False), (32, 32, 128, True, True)],
    ids=["16x16x16", "32x16x64-acc", "16x32x32-transB", "32x32x128-transB-acc"],
)
def test_patched_dot_is_exact_fp32_accumulation(m, n, k, trans_b, has_acc, precision):
    """With the patch: the fp32 product of the bf16 operands up to fp32 summation error (k * eps32 * |a||b|),
    whatever input_precision (bf16 values are exact in tf32; the products are exact in fp32)."""
    assert interpreter_bf16.is_installed()
    c, exact, scale, (a, b_kn, acc) = _run(m, n, k, trans_b, has_acc, precision)
    assert c.dtype == torch.float32
    bound = (k + 1) * torch.finfo(torch.float32).eps * scale
    assert ((c.double() - exact).abs() <= bound).all()
    torch.testing.assert_close(c, a.float() @ b_kn.float() + acc, rtol=1e-5, atol=1e-5)


def test_install_refuses_an_unchecked_triton_version(monkeypatch):
    """The version guard: another Triton version is an error at install time, never a silent no-op."""
    with interpreter_bf16.original_dot():
        monkeypatch.setattr(triton, "__version__", "3.7.0")
        with pytest.raises(RuntimeError, match="not a version this patch was checked against"):
            interpreter_bf16.install()
        assert not interpreter_bf16.is_installed()
        monkeypatch.undo()
    assert interpreter_bf16.is_installed()


@triton.jit
def _round_kernel(X, Y, Z, N: tl.constexpr):
    """Y = X.to(bf16) (an explicit cast); Z = X stored through a bf16 pointer (an implicit one)."""
    offs = tl.arange(0, N)
    x = tl.load(X + offs)
    tl.store(Y + offs, x.to(tl.bfloat16))
    tl.store(Z + offs, x)


def test_fp32_to_bf16_rounds_to_nearest_even_like_a_gpu():
    """Explicit and implicit fp32 -> bf16 casts match torch's (round to nearest even), ties and NaN included; the
    interpreter's own casts truncate (the patch is needed)."""
    base = torch.tensor([1.0, -1.0, 3.0, 1e-3, 6.5e4, 1e-40], dtype=torch.float32)
    ulp_fraction = torch.tensor([0.25, 0.5, 0.75, 0.999], dtype=torch.float64)
    bits = base.view(torch.int32)[:, None].long() + (ulp_fraction * 2**16).long()[None, :]  # within one bf16 ulp
    x = bits.flatten().to(torch.int32).view(torch.float32)
    x = torch.cat([x, torch.randn(62 - x.numel()), torch.tensor([float("inf"), float("nan")])])
    y = torch.empty(64, dtype=torch.bfloat16)
    z = torch.empty(64, dtype=torch.bfloat16)
    _round_kernel[(1,)](x, y, z, N=64)
    expected = x.to(torch.bfloat16)
    for got in (y, z):
        assert torch.equal(got.view(torch.int16)[:-1], expected.view(torch.int16)[:-1])
        assert torch.isnan(got[-1].float())
    with interpreter_bf16.original_dot():
        _round_kernel[(1,)](x, y, z, N=64)
    assert not torch.equal(y.view(torch.int16), expected.view(torch.int16))  # truncation differs somewhere
