"""fastbert.ops.linear: the CPU GEMM choice (oneDNN or PyTorch's), its eligibility rule, the activation post-ops,
and the modules that use it (fastbert's own models, patched transformers models)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastbert.ops import linear as L


@pytest.fixture
def onednn(monkeypatch):
    monkeypatch.setenv("FASTBERT_CPU_GEMM", "onednn")
    if L.cpu_gemm()[0] != "onednn":
        pytest.fail(f"oneDNN's linear op is unusable in this PyTorch build: {L.cpu_gemm()[1]}")
    calls = []
    real = L._onednn_op()
    monkeypatch.setattr(L, "_onednn_op", lambda: lambda *a: calls.append(a[3:]) or real(*a))
    return calls


@pytest.mark.parametrize("act", [None, "gelu", "gelu_new", "gelu_pytorch_tanh", "relu"])
@pytest.mark.parametrize("shape", [(16, 40), (3, 7, 40), (2, 5, 3, 40)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_torch(onednn, act, shape, bias):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(*shape, generator=g), torch.randn(24, 40, generator=g) / 6
    b = torch.randn(24, generator=g) if bias else None
    with torch.no_grad():
        got = L.linear(x, w, b, act)
        y = F.linear(x.double(), w.double(), None if b is None else b.double())
        ref = y if act is None else L.activation(act, y)
    assert onednn == [("none" if act is None else "relu" if act == "relu" else "gelu", ) + onednn[0][1:]]
    assert got.shape == shape[:-1] + (24,) and got.dtype == torch.float32
    # fp32 GEMM summed in another order: within a few fp32 roundings of the fp64 result
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_onednn_linear_takes_strided_inputs(onednn):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 33, generator=g).t()  # [33, 40], transposed
    w = torch.randn(40, 24, generator=g).t()  # [24, 40], transposed
    with torch.no_grad():
        torch.testing.assert_close(L.linear(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)
    assert len(onednn) == 1


@pytest.mark.parametrize("case", ["autocast", "float64", "bfloat16", "few rows", "1-d", "subclass", "torch setting"])
def test_ineligible_calls_run_f_linear(onednn, monkeypatch, case):
    """Each rule of the eligibility list: CPU autocast, another dtype, fewer than MIN_ROWS rows, 1-D input, a tensor
    subclass, FASTBERT_CPU_GEMM=torch -> F.linear."""
    x, w, b = torch.randn(L.MIN_ROWS, 8), torch.randn(4, 8), torch.randn(4)
    if case == "autocast":
        monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: True)
    elif case in ("float64", "bfloat16"):
        dtype = getattr(torch, case)
        x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
    elif case == "few rows":
        x = x[: L.MIN_ROWS - 1]
    elif case == "1-d":
        x = x[0]
    elif case == "subclass":
        x = x.as_subclass(type("Sub", (torch.Tensor,), {}))
    else:
        monkeypatch.setenv("FASTBERT_CPU_GEMM", "torch")
    assert L._onednn_mode(x, w, b) is None
    y = L.linear(x, w, b, "gelu")
    assert not onednn
    torch.testing.assert_close(y.as_subclass(torch.Tensor), F.gelu(F.linear(x, w, b)).as_subclass(torch.Tensor))


def test_autocast_still_runs_bf16(onednn):
    layer = L.Linear(8, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(L.MIN_ROWS, 8)).dtype == torch.bfloat16
    assert not onednn


@pytest.mark.parametrize("grads", ["all", "frozen weight", "weights only"])
@pytest.mark.parametrize("shape", [(L.MIN_ROWS, 40), (3, 7, 40)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_gradients(onednn, grads, shape, bias):
    """Training: forward and the backward GEMMs needed on oneDNN; outputs and gradients match the fp64 reference to
    fp32 rounding, also with a stride-0 incoming gradient (the backward of a sum)."""
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(24, 40, generator=g, dtype=torch.float64)
    b = torch.randn(24, generator=g, dtype=torch.float64) if bias else None
    wants = {"x": grads != "weights only", "w": grads != "frozen weight"}
    ours = [t.float().requires_grad_(want) for t, want in ((x, wants["x"]), (w, wants["w"]))]
    ours.append(b.float().requires_grad_(wants["w"]) if bias else None)
    ref = [t.clone().requires_grad_(want) for t, want in ((x, wants["x"]), (w, wants["w"]))]
    ref.append(b.clone().requires_grad_(wants["w"]) if bias else None)
    y = L.linear(*ours, "gelu")
    y.sum().backward()  # stride-0 gradient
    yr = F.gelu(F.linear(*ref))
    yr.sum().backward()
    torch.testing.assert_close(y.double(), yr.detach(), atol=1e-5, rtol=1e-5)
    assert len(onednn) == 1 + sum(wants.values())
    for a, r in zip(ours, ref):
        if r is not None and r.requires_grad:
            torch.testing.assert_close(a.grad.double(), r.grad, atol=1e-4, rtol=1e-5)
        elif a is not None:
            assert a.grad is None


def test_eligible_under_no_grad_with_trainable_weights(onednn):
    layer = L.Linear(8, 4)  # parameters require grad
    x = torch.randn(L.MIN_ROWS, 8)
    with torch.no_grad():
        layer(x)
    with torch.inference_mode():
        layer(x)
    assert len(onednn) == 2
    layer(x).sum().backward()  # grad mode: forward and the weight's gradient (x needs none)
    assert len(onednn) == 4 and layer.weight.grad is not None
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|twice"):
        y = layer(x.requires_grad_(True)).square().sum()
        gx, = torch.autograd.grad(y, x, create_graph=True)
        gx.sum().backward()


def test_cpu_gemm_setting(monkeypatch):
    monkeypatch.setenv("FASTBERT_CPU_GEMM", "mkl")
    with pytest.raises(ValueError, match="FASTBERT_CPU_GEMM must be one of"):
        L.cpu_gemm()
    monkeypatch.setenv("FASTBERT_CPU_GEMM", "torch")
    assert L.cpu_gemm() == ("torch", "FASTBERT_CPU_GEMM=torch")
    monkeypatch.delenv("FASTBERT_CPU_GEMM")
    for vendor, gemm in (("AuthenticAMD", "onednn"), ("GenuineIntel", "torch"), ("", "torch")):
        monkeypatch.setattr(L, "_cpu_vendor", lambda v=vendor: v)  # auto: a fixed rule on the CPU vendor
        L._choose.cache_clear()
        assert L.cpu_gemm()[0] == gemm, vendor
    L._choose.cache_clear()


def test_cpu_vendor_reads_this_machine():
    import os
    import platform

    vendor = L._cpu_vendor()
    assert vendor == "" or vendor.isalnum(), vendor
    if platform.machine() == "x86_64" and os.path.exists("/proc/cpuinfo"):
        for name in ("AuthenticAMD", "GenuineIntel"):
            if name in open("/proc/cpuinfo").read():
                assert vendor == name


def test_dense_keeps_hooks_and_subclasses(onednn):
    """dense() goes around the module call only for a plain linear layer without hooks: hooks see the output, and a
    subclass with its own forward keeps it."""
    x = torch.randn(L.MIN_ROWS, 8)
    plain = nn.Linear(8, 4)
    seen = []
    with torch.no_grad():
        L.dense(x, plain, "gelu")
        assert len(onednn) == 1 and onednn[0][0] == "gelu"
        handle = plain.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
        out = L.dense(x, plain, "gelu")
        handle.remove()
        assert len(seen) == 1 and torch.allclose(out, F.gelu(seen[0]))

        class Doubled(nn.Linear):
            def forward(self, input):
                return 2 * super().forward(input)

        doubled = Doubled(8, 4)
        torch.testing.assert_close(L.dense(x, doubled), 2 * F.linear(x, doubled.weight, doubled.bias))


def test_fastbert_model_uses_it_and_keeps_state_dict_keys(onednn, tiny_config, monkeypatch):
    import fastbert

    config = tiny_config()
    model = fastbert.BertForMaskedLM(config).eval()
    assert all(type(m) is L.Linear for m in model.modules() if isinstance(m, nn.Linear))
    ids = torch.randint(5, config.vocab_size, (2, 12))
    with torch.no_grad():
        out = model(input_ids=ids).logits
    layers = config.num_hidden_layers
    assert len(onednn) == 6 * layers + 2 and sum(c[0] == "gelu" for c in onednn) == layers + 1
    plain = fastbert.BertForMaskedLM(config).eval()
    assert plain.state_dict().keys() == model.state_dict().keys()
    plain.load_state_dict(model.state_dict())
    monkeypatch.setenv("FASTBERT_CPU_GEMM", "torch")
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, out, atol=1e-5, rtol=1e-5)
    assert len(onednn) == 6 * layers + 2  # the second model ran PyTorch's GEMM


def test_info_reports_the_choice(monkeypatch):
    from fastbert import info

    monkeypatch.setenv("FASTBERT_CPU_GEMM", "torch")
    assert info.collect()["CPU fp32 dense layers"].startswith("PyTorch's GEMM (MKL) (FASTBERT_CPU_GEMM=torch")


@pytest.mark.parametrize("setting", ["auto", "onednn"])
def test_choosing_leaves_the_global_generator_alone(monkeypatch, setting):
    """The choice is made on the first eligible call, in the middle of a training run: it must not move torch's
    global random stream (dropout masks would then depend on when it happened, and a resumed run would differ)."""
    monkeypatch.setenv("FASTBERT_CPU_GEMM", setting)
    L._choose.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    L.cpu_gemm()
    assert torch.equal(torch.rand(4), expected)
