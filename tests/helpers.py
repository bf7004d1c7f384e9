"""Shared test utilities: tolerance rules and input factories (import as ``from helpers import ...``)."""
from __future__ import annotations

import torch

# flash-attention's three-way rule: maxerr(ours, ref32) <= k * maxerr(reflp, ref32) + floor, with
# floor = 2 * (rounding of ref32 to the kernel's dtype) + FLOOR[dtype] (see assert_three_way)
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
K_OUT, K_GRAD = 2.0, 3.0

# elementwise / row ops: dtype -> (atol, rtol)
ATOL_RTOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() if a.numel() else 0.0


def assert_three_way(ours: torch.Tensor, ref32: torch.Tensor, reflp: torch.Tensor, *, grad: bool = False, name: str = "") -> None:
    """Assert the kernel is at most k times as far from the fp32 reference as the reference in its own dtype.

    The floor is the convention's: 2 * (rounding of ref32 to ours.dtype) + FLOOR[ours.dtype]. Pass ref32 in fp32 to
    get the rounding term (it matters in bf16, whose half-ulp passes FLOOR for |values| >= 2); a ref32 already
    rounded to ours.dtype makes the term 0.
    """
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    assert ours.shape == ref32.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref32.shape)}"
    k = K_GRAD if grad else K_OUT
    err, base = maxerr(ours, ref32), maxerr(reflp, ref32)
    floor = 2 * maxerr(ref32.to(ours.dtype), ref32) + FLOOR[ours.dtype]
    bound = k * base + floor
    assert err <= bound, f"{name}: maxerr {err:.3e} > {k} * {base:.3e} + floor {floor:.3e} = {bound:.3e}"


def make_attention_mask(batch: int, seqlen: int, mode: str, device="cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """HF-style int64 0/1 mask [batch, seqlen]: "none" (all ones), "random" (random right-padding lengths >= 1),
    "one_row_padded" (random lengths with row 0 fully padded)."""
    if mode == "none":
        return torch.ones(batch, seqlen, dtype=torch.long, device=device)
    lengths = torch.randint(1, seqlen + 1, (batch,), generator=generator)
    if mode == "one_row_padded":
        lengths[0] = 0
    elif mode != "random":
        raise ValueError(f"unknown padding mode {mode!r}")
    return (torch.arange(seqlen)[None, :] < lengths[:, None]).long().to(device)


_AOT_SCRIPT = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = json.loads(sys.argv[1])
kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
signature = {}
for name in kernel.arg_names:
    if name in spec["constexprs"]:
        signature[name] = "constexpr"
    elif name in spec["pointers"]:
        signature[name] = "*" + spec["pointers"][name]
    else:
        signature[name] = "fp32" if name in spec["floats"] else "i32"
for cap in spec["capabilities"]:
    src = ASTSource(fn=kernel, signature=signature, constexprs=spec["constexprs"])
    triton.compile(src, target=GPUTarget("cuda", cap, 32),
                   options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
"""


def aot_compile_cuda(module: str, kernel: str, pointers: dict, constexprs: dict, *, floats=(), num_warps: int = 4,
                     num_stages: int = 3, capabilities=(90,)) -> None:
    """Compile a @triton.jit kernel for NVIDIA targets down to cubin without a GPU (Triton ships ptxas).

    The interpreter that runs kernels in CPU CI accepts code the compiler rejects (e.g. a plain-float global read
    inside a kernel), so this catches compile-only errors before a GPU machine does. Runs in a subprocess without
    TRITON_INTERPRET (the kernels must be real JITFunctions). ``pointers`` maps pointer arguments to Triton dtypes
    ("bf16", "fp32", "i64"); other non-constexpr arguments are i32, or fp32 when named in ``floats``.
    """
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH", "")) if p)
    spec = dict(module=module, kernel=kernel, pointers=pointers, constexprs=constexprs, floats=list(floats),
                num_warps=num_warps, num_stages=num_stages, capabilities=list(capabilities))
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, json.dumps(spec)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{module}.{kernel} does not compile for CUDA {capabilities}:\n{proc.stderr[-3000:]}"
