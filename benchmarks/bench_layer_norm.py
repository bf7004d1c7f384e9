"""Fused dropout + residual + LayerNorm benchmark: GB/s against torch and the device's own copy bandwidth.

Workload: x, residual ``[rows, hidden]`` (BERT's BertSelfOutput/BertOutput: rows = batch * seqlen tokens), weight and
bias ``[hidden]``; cases "residual" (dropout 0, eval / no-dropout fine-tuning) and "residual+dropout" (p = 0.1,
training). Modes: ``fwd`` (no grad), ``bwd`` (backward alone, graph kept), ``fwd+bwd``.

GB/s counts the bytes the ideal fused op moves, for every provider alike (so GB/s compare like speed):
fwd reads x and residual and writes y; bwd reads dy, x and residual and writes dx, plus a separate dresidual
when dropout makes it differ from dx (without dropout one tensor serves both, as in autograd's AddBackward).
``pct_of_copy`` divides by the ``copy`` row: ``torch.Tensor.copy_`` of a [rows, hidden] tensor of the same dtype,
counted read + write, timed in the same run.

Providers (one that cannot run here gets a row with the reason in ``note``):

* ``fastbert``: ``fastbert.ops.layer_norm(x, w, b, eps, residual=r, dropout_p=p)``, timed where its Triton kernels
  run compiled; elsewhere the note is ``fastbert._backend.why_not_triton``'s reason (``harness.require_fused``);
* ``eager``: HF's unfused sequence LayerNorm(dropout(x) + r) as separate torch ops,
  ``fastbert.ops.reference.layer_norm_ref(..., upcast=False)`` (the 1.5x target's baseline);
* ``torch-compile``: the same reference under ``torch.compile`` (Inductor fuses it; CUDA only);
* ``torch-layer_norm``: ``F.layer_norm`` alone on the precomputed sum (LayerNorm without the add), with its own
  byte count (read s, write y; bwd read dy and s, write ds).

Timing, the copy yardstick, the steps and the launch-config sweep: ``benchmarks/harness.py``.
CUDA: bf16, 16384 x {384, 768, 1024} (quick: 16384 x 768). CPU: fp32 4096 x 768, torch providers only.
Targets (issue #5, H100, 16384 x 768 bf16): fastbert fwd+bwd >= 85% of copy and >= 1.5x eager.

    python benchmarks/bench_layer_norm.py [--quick] [--sweep]   # --sweep (CUDA): retune the launch heuristics
    pytest benchmarks/bench_layer_norm.py                         # pytest-benchmark, small shapes
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from fastbert.ops import reference

try:
    from . import harness
except ImportError:  # run as a script or collected by pytest from this folder
    import harness

COLUMNS = ["provider", "case", "mode", "shape", "ms", "ms_p20", "ms_p80", "gbps", "pct_of_copy", "speedup_vs_eager", "note"]
PROVIDERS = ["fastbert", "eager", "torch-compile", "torch-layer_norm"]
EPS = 1e-12
DROPOUT_P = 0.1


def _shapes(cuda: bool, quick: bool) -> list[tuple[int, int]]:
    if not cuda:
        return [(4096, 768)]
    return [(16384, 768)] if quick else [(16384, 384), (16384, 768), (16384, 1024)]


def _inputs(rows: int, hidden: int, dtype: torch.dtype, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, hidden, generator=g).to(device, dtype).requires_grad_()
    r = torch.randn(rows, hidden, generator=g).to(device, dtype).requires_grad_()
    w = (1.0 + 0.1 * torch.randn(hidden, generator=g)).to(device, dtype).requires_grad_()
    b = (0.1 * torch.randn(hidden, generator=g)).to(device, dtype).requires_grad_()
    return x, r, w, b


def ideal_bytes(rows: int, hidden: int, elem: int, mode: str, dropout: bool, provider: str = "fastbert") -> int:
    """Bytes the ideal op reads + writes (activations; the [hidden] parameters and their grads are added too)."""
    act = rows * hidden * elem
    params = 2 * hidden * elem
    if provider == "torch-layer_norm":  # LayerNorm alone on the precomputed sum
        fwd, bwd = 2 * act + params, 3 * act + 2 * params
    else:
        fwd = 3 * act + params  # x, residual -> y
        bwd = (4 + (1 if dropout else 0)) * act + 2 * params  # dy, x, residual -> dx (and dresidual)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _eager(x, r, w, b, p):
    """HF BertSelfOutput after its Linear: dropout, residual add, LayerNorm (three kernels)."""
    return reference.layer_norm_ref(x, w, b, EPS, residual=r, dropout_p=p, upcast=False)


_compiled = {}


def _make_case(provider: str, x, r, w, b, p: float, device: torch.device) -> harness.Case:
    if provider == "fastbert":
        harness.require_fused(x)
        from fastbert.ops import layer_norm

        return harness.Case(lambda: layer_norm(x, w, b, EPS, residual=r, dropout_p=p), (x, r, w, b))
    if provider == "eager":
        return harness.Case(lambda: _eager(x, r, w, b, p), (x, r, w, b))
    if provider == "torch-compile":
        harness.require_cuda(device, "Inductor on CPU is not the comparison that matters")
        if "fn" not in _compiled:
            _compiled["fn"] = torch.compile(_eager, dynamic=False)
        return harness.Case(lambda: _compiled["fn"](x, r, w, b, p), (x, r, w, b))
    if provider == "torch-layer_norm":
        s = (x.detach() + r.detach()).requires_grad_()
        return harness.Case(lambda: F.layer_norm(s, (s.shape[-1],), w, b, EPS), (s, w, b))
    raise ValueError(provider)


def run(device: torch.device | None = None, quick: bool = False) -> list[dict]:
    device = torch.device(device or harness.default_device())
    dtype = harness.bench_dtype(device)
    out: list[dict] = []
    for rows, hidden in _shapes(device.type == "cuda", quick):
        x, r, w, b = _inputs(rows, hidden, dtype, device)
        for case, p in (("residual", 0.0), ("residual+dropout", DROPOUT_P)):
            # LayerNorm alone has no dropout: one set of its rows per shape is enough
            providers = [pr for pr in PROVIDERS if not (pr == "torch-layer_norm" and p > 0.0)]
            case_rows = harness.bandwidth_rows(
                {"bench": "layer_norm", "case": case, "shape": f"{rows}x{hidden}"}, providers,
                lambda provider: _make_case(provider, x, r, w, b, p, device),
                lambda provider, mode: ideal_bytes(rows, hidden, x.element_size(), mode, p > 0.0, provider),
                (rows, hidden), dtype, device)
            for row in case_rows[1:]:  # the provider rows (the first is the copy)
                row["dropout_p"] = p
            out.extend(case_rows)
    harness.add_speedups(out, "eager", group=("shape", "case", "mode"))
    for row in out:
        if row["provider"] in ("torch-layer_norm", "copy"):
            row["speedup_vs_eager"] = None  # different work: not a speed-up over the same computation
    return out


def sweep(device: torch.device, rows: int = 16384, hiddens=(384, 768, 1024), p: float = 0.0) -> None:
    """CUDA: fwd and bwd time and GB/s for overrides of fastbert.ops.fused_layer_norm's launch configs."""
    from fastbert.ops import layer_norm

    for hidden in hiddens:
        x, r, w, b = _inputs(rows, hidden, torch.bfloat16, device)
        case = harness.Case(lambda: layer_norm(x, w, b, EPS, residual=r, dropout_p=p), (x, r, w, b))
        nbytes = functools.partial(ideal_bytes, rows, hidden, 2, dropout=p > 0)
        print(f"\nhidden {hidden}, rows {rows}, dropout {p}")
        harness.sweep_overrides("fused_layer_norm", {"fwd_block_m": (1, 2, 4, 8, 16), "fwd_warps": (2, 4, 8, 16)},
                                case, nbytes, device, {"fwd": None})
        harness.sweep_overrides("fused_layer_norm", {"bwd_block_m": (1, 2, 4, 8), "bwd_warps": (4, 8, 16),
                                                     "bwd_programs_per_sm": (1, 2, 4, 8)},
                                case, nbytes, device, {"bwd": None})


# ----------------------------------------------------------------------------------------------------------------
# pytest-benchmark entry points (small shapes on CPU; `pytest benchmarks/bench_layer_norm.py`)
# ----------------------------------------------------------------------------------------------------------------
def _small_case(provider: str, p: float, device: torch.device) -> harness.Case:
    rows, hidden = (16384, 768) if device.type == "cuda" else (1024, 768)
    x, r, w, b = _inputs(rows, hidden, harness.bench_dtype(device), device)
    return _make_case(provider, x, r, w, b, p, device)


pytest_generate_tests = harness.pytest_cases("provider, mode, p", [
    (provider, mode, p) for provider in ("eager", "fastbert")
    for mode, p in (("fwd", 0.0), ("fwd+bwd", 0.0), ("fwd+bwd", DROPOUT_P))])


def test_layer_norm(benchmark, provider, mode, p):
    harness.pytest_benchmark(benchmark, functools.partial(_small_case, provider, p), mode)


def main() -> None:
    harness.script_main(run, COLUMNS, __doc__.splitlines()[0], sweep=sweep)


if __name__ == "__main__":
    main()
