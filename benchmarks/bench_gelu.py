"""Fused bias + GELU benchmark: GB/s against torch and the device's own copy bandwidth.

Workload: BertIntermediate after its bias-free GEMM, x ``[tokens, 3072]`` and bias ``[3072]``; exact erf GELU
(BERT's "gelu"), plus the tanh form at the BERT shape. Modes: ``fwd`` (no grad), ``bwd`` (backward alone, graph
kept), ``fwd+bwd``.

GB/s counts the bytes the ideal fused op moves, for every provider alike: fwd reads x and writes y; bwd reads dy
and x and writes dx (bias and dbias are added, negligible). ``pct_of_copy`` divides by the ``copy`` row,
``torch.Tensor.copy_`` of a tensor of x's size and dtype counted read + write, timed in the same run.

Providers (one that cannot run here gets a row with the reason in ``note``):

* ``fastbert``: ``fastbert.ops.bias_gelu(x, b, approximate)`` (Triton);
* ``eager``: ``F.gelu(x + b)``, two torch kernels (what HF's Linear-with-bias + GELU does after the GEMM);
* ``torch-compile``: the same under ``torch.compile`` (CUDA only).

CUDA: bf16, 16384 x {3072, 4096} (quick: 16384 x 3072). CPU: fp32 2048 x 3072, torch providers only.
Target (issue #5, H100): bias+GELU >= 85% of copy bandwidth.
"""
from __future__ import annotations

import importlib
import itertools

import torch
import torch.nn.functional as F

try:
    from . import harness
except ImportError:  # run as a script or collected by pytest from this folder
    import harness

COLUMNS = ["provider", "approximate", "mode", "shape", "ms", "ms_p20", "ms_p80", "gbps", "pct_of_copy",
           "speedup_vs_eager", "note"]
PROVIDERS = ["fastbert", "eager", "torch-compile"]


class Unavailable(RuntimeError):
    """A provider that cannot run on this device (reported in the row's note)."""


def _cases(cuda: bool, quick: bool) -> list[tuple[int, int, str]]:
    if not cuda:
        return [(2048, 3072, "none")]
    if quick:
        return [(16384, 3072, "none")]
    return [(16384, 3072, "none"), (16384, 3072, "tanh"), (16384, 4096, "none")]


def _inputs(rows: int, n: int, dtype: torch.dtype, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, n, generator=g).to(device, dtype).requires_grad_()
    b = (0.1 * torch.randn(n, generator=g)).to(device, dtype).requires_grad_()
    return x, b


def ideal_bytes(rows: int, n: int, elem: int, mode: str) -> int:
    act = rows * n * elem
    fwd = 2 * act + n * elem  # x, bias -> y
    bwd = 3 * act + 2 * n * elem  # dy, x, bias -> dx, dbias
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _eager(x, b, approximate):
    return F.gelu(x + b, approximate=approximate)


_compiled = {}


def _make_provider(provider: str, x, b, approximate: str, device: torch.device):
    cuda = device.type == "cuda"
    if provider == "fastbert":
        if not cuda:
            raise Unavailable("needs CUDA (Triton kernels; the interpreter is not a speed path)")
        from fastbert.ops import bias_gelu

        return lambda: bias_gelu(x, b, approximate)
    if provider == "eager":
        return lambda: _eager(x, b, approximate)
    if provider == "torch-compile":
        if not cuda:
            raise Unavailable("CUDA only (Inductor on CPU is not the comparison that matters)")
        if "fn" not in _compiled:
            _compiled["fn"] = torch.compile(_eager, dynamic=False)
        return lambda: _compiled["fn"](x, b, approximate)
    raise ValueError(provider)


def _time(fn, inputs, mode: str, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    with torch.no_grad():
        fn()  # first call: compiles / warms up outside the timing
    opts = dict(warmup_ms=50 if cuda else 0, rep_ms=300 if cuda else 150)
    if mode == "fwd":
        def step():
            with torch.no_grad():
                fn()
    elif mode == "fwd+bwd":
        dy = torch.randn_like(fn())

        def step():
            torch.autograd.grad(fn(), inputs, dy)
    else:
        out = fn()
        dy = torch.randn_like(out)

        def step():
            torch.autograd.grad(out, inputs, dy, retain_graph=True)
    step()
    return harness.bench_fn(step, device, **opts)


def run(device: torch.device | None = None, quick: bool = False) -> list[dict]:
    device = torch.device(device or harness.default_device())
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    out: list[dict] = []
    for rows, n, approximate in _cases(cuda, quick):
        x, b = _inputs(rows, n, dtype, device)
        shape = f"{rows}x{n}"
        src, dst = x.detach().clone(), torch.empty_like(x)
        t = harness.bench_fn(lambda: dst.copy_(src), device, warmup_ms=50 if cuda else 0, rep_ms=300 if cuda else 150)
        copy = {"bench": "gelu", "provider": "copy", "approximate": approximate, "mode": "copy", "shape": shape,
                "dtype": str(dtype).replace("torch.", ""), **t,
                "gbps": 2 * x.numel() * x.element_size() / (t["ms"] * 1e-3) / 1e9}
        case_rows = [copy]
        for provider, mode in itertools.product(PROVIDERS, ("fwd", "bwd", "fwd+bwd")):
            row = {"bench": "gelu", "provider": provider, "approximate": approximate, "mode": mode, "shape": shape,
                   "dtype": str(dtype).replace("torch.", "")}
            case_rows.append(row)
            try:
                fn = _make_provider(provider, x, b, approximate, device)
                row.update(_time(fn, (x, b), mode, device))
                row["gbps"] = ideal_bytes(rows, n, x.element_size(), mode) / (row["ms"] * 1e-3) / 1e9
                row["pct_of_copy"] = 100.0 * row["gbps"] / copy["gbps"]
            except Unavailable as exc:
                row["note"] = str(exc)
            except Exception as exc:
                row["note"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:70]}"
        if cuda:
            torch.cuda.empty_cache()
        out.extend(case_rows)
    harness.add_speedups(out, "eager", group=("shape", "approximate", "mode"))
    for row in out:
        if row["provider"] == "copy":
            row["speedup_vs_eager"] = None
    return out


def sweep(device: torch.device, rows: int = 16384, n: int = 3072) -> None:
    """CUDA: fwd and bwd GB/s for overrides of fastbert.ops.fused_gelu's launch heuristics."""
    mod = importlib.import_module("fastbert.ops.fused_gelu")
    x, b = _inputs(rows, n, torch.bfloat16, device)
    for block_m, block_n, warps in itertools.product((1, 2, 4, 8, 16), (256, 512, 1024, 2048), (4, 8)):
        for per_sm in (2, 4, 8):
            mod._CONFIG_OVERRIDE.clear()
            mod._CONFIG_OVERRIDE.update(block_m=block_m, block_n=block_n, warps=warps, bwd_programs_per_sm=per_sm)
            line = f"block_m={block_m:2d} block_n={block_n:4d} warps={warps} per_sm={per_sm}:"
            for mode in ("fwd", "bwd"):
                if mode == "fwd" and per_sm != 2:
                    continue  # forward ignores per_sm
                t = _time(lambda: mod.bias_gelu(x, b), (x, b), mode, device)
                line += f"  {mode} {ideal_bytes(rows, n, 2, mode) / (t['ms'] * 1e-3) / 1e9:6.0f} GB/s"
            print(line, flush=True)
    mod._CONFIG_OVERRIDE.clear()


# ----------------------------------------------------------------------------------------------------------------
# pytest-benchmark entry points (small shapes on CPU; fastbert needs CUDA)
# ----------------------------------------------------------------------------------------------------------------
def _bench_case(benchmark, provider: str, mode: str):
    import pytest

    device = harness.default_device()
    cuda = device.type == "cuda"
    rows, n = (16384, 3072) if cuda else (512, 3072)
    x, b = _inputs(rows, n, torch.bfloat16 if cuda else torch.float32, device)
    try:
        fn = _make_provider(provider, x, b, "none", device)
    except Unavailable as exc:
        pytest.skip(str(exc))
    dy = torch.randn_like(fn())

    def step():
        if mode == "fwd":
            with torch.no_grad():
                fn()
        else:
            torch.autograd.grad(fn(), (x, b), dy)
        if cuda:
            torch.cuda.synchronize()

    benchmark(step)


def test_gelu_eager_fwd(benchmark):
    _bench_case(benchmark, "eager", "fwd")


def test_gelu_eager_fwd_bwd(benchmark):
    _bench_case(benchmark, "eager", "fwd+bwd")


def test_gelu_fastbert_fwd(benchmark):
    _bench_case(benchmark, "fastbert", "fwd")


def test_gelu_fastbert_fwd_bwd(benchmark):
    _bench_case(benchmark, "fastbert", "fwd+bwd")


def main() -> None:
    harness.script_main(run, COLUMNS, __doc__.splitlines()[0], sweep=sweep)


if __name__ == "__main__":
    main()
