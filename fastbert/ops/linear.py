"""Dense layers on the CPU: which GEMM a linear layer runs there (the third decision, beside the path policy of
``dispatch`` and the Triton-or-reference rule of ``fastbert._backend``).

PyTorch's CPU ``F.linear`` calls MKL's sgemm. On some x86 CPUs MKL does not pick its fastest code: on the AMD EPYC
(AVX-512) of the 2-core benchmark machine it ran the BERT shapes at 143-182 GFLOP/s where oneDNN, which ships inside
every x86 PyTorch build, ran the same fp32 GEMMs at 256-422 GFLOP/s (``benchmarks/bench_hf.py``, README). So a dense
layer here runs oneDNN's fp32 GEMM (``torch.ops.mkldnn._linear_pointwise``, the op Inductor's CPU backend emits,
same IEEE fp32 arithmetic, summed in another order) when all of these hold, else ``F.linear``:

* CPU fp32 tensors of plain ``torch.Tensor`` type, not under ``torch.compile``/export tracing, ``torch.jit``,
  ``torch.func`` transforms or CPU autocast (which would run the layer in bf16);
* at least :data:`MIN_ROWS` rows (a handful of tokens: the primitive's set-up cost more than MKL's GEMM);
* :func:`cpu_gemm` is "onednn": ``FASTBERT_CPU_GEMM`` = "onednn" / "torch", or "auto" (default) = oneDNN on AMD
  x86 CPUs (``vendor_id`` AuthenticAMD), where MKL's sgemm was measured at half of oneDNN's speed, and PyTorch's
  own GEMM everywhere else (MKL on Intel CPUs is Intel's tuned path; other CPUs were not measured). A fixed rule, not
  a timing: a measurement taken while the machine is busy can come out either way, and two processes that chose
  differently would sum differently (a resumed training run would not repeat its losses bit for bit).

When no gradient flows, an activation after the GEMM (GELU, exact or tanh, and ReLU) is applied by oneDNN as a
post-op, in the GEMM's output tile: the [tokens, 4*hidden] activation pass of the feed-forward block goes away. When
gradients flow (training), :class:`_OneDNNLinear` runs the forward and both backward GEMMs on oneDNN (the op has no
autograd formula of its own) and the activation stays torch's.
"""
from __future__ import annotations

import functools
import os
import platform
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GELU_APPROXIMATE

MIN_ROWS = 16
CHOICES = ("auto", "onednn", "torch")
_ONEDNN_ACT = {"relu": ("relu", ""), **{name: ("gelu", approx) for name, approx in GELU_APPROXIMATE.items()}}


def _onednn_op():
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


@functools.lru_cache(maxsize=None)
def _choose(setting: str) -> tuple[str, str]:
    if setting not in CHOICES:
        raise ValueError(f"FASTBERT_CPU_GEMM must be one of {CHOICES}, got {setting!r}")
    if setting == "torch":
        return "torch", "FASTBERT_CPU_GEMM=torch"
    op = _onednn_op()
    if op is None or not torch.backends.mkldnn.is_available():
        return "torch", "oneDNN is not part of this PyTorch build"
    try:  # the op is Inductor's: check it still computes a linear layer before trusting it
        gen = torch.Generator().manual_seed(0)  # not the global generator: choosing must not move its stream
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((MIN_ROWS, 8), (4, 8), (4,)))
        if not torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5, rtol=1e-5):
            return "torch", "oneDNN's linear op disagrees with F.linear"
    except Exception as exc:  # noqa: BLE001 - another signature in another PyTorch
        return "torch", f"oneDNN's linear op is not callable here ({type(exc).__name__})"
    if setting == "onednn":
        return "onednn", "FASTBERT_CPU_GEMM=onednn"
    vendor = _cpu_vendor()
    if vendor == "AuthenticAMD":
        return "onednn", "AMD CPU: MKL's sgemm runs at about half of oneDNN's speed there"
    return "torch", f"{vendor or 'unknown'} CPU: PyTorch's GEMM (oneDNN is chosen on AMD CPUs)"


def _cpu_vendor() -> str:
    """The x86 ``vendor_id`` of this machine's CPU ("AuthenticAMD", "GenuineIntel", ...), or "" (not x86, unknown)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            found = re.search(r"^vendor_id\s*:\s*(\S+)", f.read(1 << 16), re.MULTILINE)
        return found.group(1) if found else ""
    except OSError:  # not Linux: Windows names the vendor in the processor string
        processor = platform.processor()
        return next((v for v in ("AuthenticAMD", "GenuineIntel") if v in processor), "")


def cpu_gemm() -> tuple[str, str]:
    """("onednn" or "torch", why): the GEMM eligible CPU fp32 linear layers run (``FASTBERT_CPU_GEMM``, default
    "auto")."""
    return _choose(os.environ.get("FASTBERT_CPU_GEMM", "auto"))


def describe() -> str:
    """The CPU GEMM choice in words, with its reason (``fastbert.info``, ``PatchReport.dense``)."""
    gemm, why = cpu_gemm()
    label = "oneDNN GEMM" if gemm == "onednn" else "PyTorch's GEMM (MKL)"
    return f"{label} ({why})"


def _onednn_mode(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """None (run F.linear), "inference" (oneDNN, no gradient) or "autograd" (oneDNN forward and backward)."""
    if type(x) is not torch.Tensor or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() < 2:
        return None
    if type(weight) not in (torch.Tensor, nn.Parameter) or weight.dtype != torch.float32 \
            or weight.device.type != "cpu" or (bias is not None and (bias.dtype != x.dtype or bias.dim() != 1)):
        return None
    if x.shape[-1] == 0 or x.numel() < MIN_ROWS * x.shape[-1] or torch.compiler.is_compiling() or torch.jit.is_scripting() \
            or torch.jit.is_tracing() or torch.is_autocast_enabled("cpu") or _functorch_active(x):
        return None
    if cpu_gemm()[0] != "onednn":
        return None
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    return "autograd" if grad else "inference"


def _functorch_active(x: torch.Tensor) -> bool:
    # under torch.func transforms (vmap, grad) the op has no batching rule: leave those calls to F.linear
    wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return bool(wrapped(x)) if wrapped is not None else False


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b on oneDNN; backward: dx = dy W and dW = dy^T x on oneDNN too (strided views, no copies of x or
    W), db = sum of dy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_op()(x, weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        op = _onednn_op()
        dy = dy.contiguous()  # e.g. the stride-0 gradient of a sum
        dy2 = dy.reshape(-1, dy.shape[-1])  # [tokens, out]
        dx = op(dy, weight.t(), None, "none", [], "") if ctx.needs_input_grad[0] else None
        dw = op(dy2.t(), x.reshape(-1, x.shape[-1]).t(), None, "none", [], "") if ctx.needs_input_grad[1] else None
        db = dy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def activation(name: str, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """A BERT ``hidden_act`` by name ("relu", or one of the GELU names of config.GELU_APPROXIMATE); ``in_place``
    overwrites ``x`` (only where no gradient flows through it)."""
    if name == "relu":
        return F.relu_(x) if in_place else F.relu(x)
    if in_place:
        return torch.ops.aten.gelu_(x, approximate=GELU_APPROXIMATE[name])
    return F.gelu(x, approximate=GELU_APPROXIMATE[name])


def _activate(y: torch.Tensor, act: str | None) -> torch.Tensor:
    # y is a dense layer's fresh output: overwritten when no gradient flows (one [tokens, features] allocation fewer)
    return y if act is None else activation(act, y, in_place=not y.requires_grad)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           act: str | None = None) -> torch.Tensor:
    """``activation(act, F.linear(x, weight, bias))`` (``act`` None: no activation), on oneDNN where this module's
    rule says so (the activation then as its post-op)."""
    mode = _onednn_mode(x, weight, bias)
    if mode == "inference":
        post, algorithm = _ONEDNN_ACT[act] if act is not None else ("none", "")
        return _onednn_op()(x, weight, bias, post, [], algorithm)
    return _activate(_OneDNNLinear.apply(x, weight, bias) if mode == "autograd" else F.linear(x, weight, bias), act)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state_dict keys) whose forward is :func:`linear`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Linear's argument name
        return linear(input, self.weight, self.bias)


_PLAIN_FORWARDS = (nn.Linear.forward, Linear.forward)


def _hooked(module: nn.Module) -> bool:
    """Forward hooks on ``module`` (or on every module): then it is called, so that they see its output."""
    from torch.nn.modules import module as module_globals

    return bool(module._forward_hooks or module._forward_pre_hooks or module_globals._global_forward_hooks
                or module_globals._global_forward_pre_hooks)


def dense(x: torch.Tensor, module: nn.Module, act: str | None = None) -> torch.Tensor:
    """``activation(act, module(x))`` for a dense layer (the sdpa/eager paths' ``dense_act`` entry): through
    :func:`linear` (oneDNN, activation as post-op, where the rule says so) when ``module`` computes a plain linear
    layer and has no forward hooks, else through its own call (a subclass such as a quantized or adapter layer keeps
    what it does; hooks see its output)."""
    if type(module).forward in _PLAIN_FORWARDS and not _hooked(module):
        return linear(x, module.weight, module.bias, act)
    return _activate(module(x), act)
