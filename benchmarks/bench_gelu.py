"""Fused bias + GELU benchmark: GB/s against torch and the device's own copy bandwidth.

Workload: BertIntermediate after its bias-free GEMM, x ``[tokens, 3072]`` and bias ``[3072]``; exact erf GELU
(BERT's "gelu"), plus the tanh form at the BERT shape. Modes: ``fwd`` (no grad), ``bwd`` (backward alone, graph
kept), ``fwd+bwd``.

GB/s counts the bytes the ideal fused op moves, for every provider alike: fwd reads x and writes y; bwd reads dy
and x and writes dx (bias and dbias are added, negligible). ``pct_of_copy`` divides by the ``copy`` row,
``torch.Tensor.copy_`` of a tensor of x's size and dtype counted read + write, timed in the same run.

Providers (one that cannot run here gets a row with the reason in ``note``):

* ``fastbert``: ``fastbert.ops.bias_gelu(x, b, approximate)``, timed where its Triton kernels run compiled;
  elsewhere the note is ``fastbert._backend.why_not_triton``'s reason (``harness.require_fused``);
* ``eager``: GELU(x + b) as two torch kernels (what HF's Linear-with-bias + GELU does after the GEMM),
  ``fastbert.ops.reference.bias_gelu_ref(..., upcast=False)``;
* ``torch-compile``: the same reference under ``torch.compile`` (CUDA only).

Timing, the copy yardstick, the steps and the launch-config sweep: ``benchmarks/harness.py``.
CUDA: bf16, 16384 x {3072, 4096} (quick: 16384 x 3072). CPU: fp32 2048 x 3072, torch providers only.
Target (issue #5, H100): bias+GELU >= 85% of copy bandwidth.

    python benchmarks/bench_gelu.py [--quick] [--sweep]   # --sweep (CUDA): retune the launch heuristics
    pytest benchmarks/bench_gelu.py                         # pytest-benchmark, small shapes
"""
from __future__ import annotations

import functools

import torch
from fastbert.ops import reference

try:
    from . import harness
except ImportError:  # run as a script or collected by pytest from this folder
    import harness

COLUMNS = ["provider", "approximate", "mode", "shape", "ms", "ms_p20", "ms_p80", "gbps", "pct_of_copy",
           "speedup_vs_eager", "note"]
PROVIDERS = ["fastbert", "eager", "torch-compile"]


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
    return reference.bias_gelu_ref(x, b, approximate, upcast=False)


_compiled = {}


def _make_case(provider: str, x, b, approximate: str, device: torch.device) -> harness.Case:
    if provider == "fastbert":
        harness.require_fused(x)
        from fastbert.ops import bias_gelu

        return harness.Case(lambda: bias_gelu(x, b, approximate), (x, b))
    if provider == "eager":
        return harness.Case(lambda: _eager(x, b, approximate), (x, b))
    if provider == "torch-compile":
        harness.require_cuda(device, "Inductor on CPU is not the comparison that matters")
        if "fn" not in _compiled:
            _compiled["fn"] = torch.compile(_eager, dynamic=False)
        return harness.Case(lambda: _compiled["fn"](x, b, approximate), (x, b))
    raise ValueError(provider)


def run(device: torch.device | None = None, quick: bool = False) -> list[dict]:
    device = torch.device(device or harness.default_device())
    dtype = harness.bench_dtype(device)
    out: list[dict] = []
    for rows, n, approximate in _cases(device.type == "cuda", quick):
        x, b = _inputs(rows, n, dtype, device)
        out += harness.bandwidth_rows(
            {"bench": "gelu", "approximate": approximate, "shape": f"{rows}x{n}"}, PROVIDERS,
            lambda provider: _make_case(provider, x, b, approximate, device),
            lambda provider, mode: ideal_bytes(rows, n, x.element_size(), mode), (rows, n), dtype, device)
    harness.add_speedups(out, "eager", group=("shape", "approximate", "mode"))
    for row in out:
        if row["provider"] == "copy":
            row["speedup_vs_eager"] = None
    return out


def sweep(device: torch.device, rows: int = 16384, n: int = 3072) -> None:
    """CUDA: fwd and bwd time and GB/s for overrides of fastbert.ops.fused_gelu's launch heuristics."""
    from fastbert.ops import bias_gelu

    x, b = _inputs(rows, n, torch.bfloat16, device)
    harness.sweep_overrides(
        "fused_gelu", {"block_m": (1, 2, 4, 8, 16), "block_n": (256, 512, 1024, 2048), "warps": (4, 8),
                       "bwd_programs_per_sm": (2, 4, 8)},
        harness.Case(lambda: bias_gelu(x, b), (x, b)), functools.partial(ideal_bytes, rows, n, 2), device,
        {"fwd": ("block_m", "block_n", "warps"), "bwd": None})  # the forward ignores bwd_programs_per_sm


# ----------------------------------------------------------------------------------------------------------------
# pytest-benchmark entry points (small shapes on CPU; `pytest benchmarks/bench_gelu.py`)
# ----------------------------------------------------------------------------------------------------------------
def _small_case(provider: str, device: torch.device) -> harness.Case:
    rows, n = (16384, 3072) if device.type == "cuda" else (512, 3072)
    x, b = _inputs(rows, n, harness.bench_dtype(device), device)
    return _make_case(provider, x, b, "none", device)


pytest_generate_tests = harness.pytest_cases("provider, mode", [
    (provider, mode) for provider in ("eager", "fastbert") for mode in ("fwd", "fwd+bwd")])


def test_gelu(benchmark, provider, mode):
    harness.pytest_benchmark(benchmark, functools.partial(_small_case, provider), mode)


def main() -> None:
    harness.script_main(run, COLUMNS, __doc__.splitlines()[0], sweep=sweep)


if __name__ == "__main__":
    main()
