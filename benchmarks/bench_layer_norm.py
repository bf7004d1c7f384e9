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

* ``fastbert``: ``fastbert.ops.layer_norm(x, w, b, eps, residual=r, dropout_p=p)`` (Triton);
* ``eager``: HF's unfused sequence ``F.layer_norm(F.dropout(x, p) + r)`` as separate torch ops, the 1.5x target;
* ``torch-compile``: the same sequence under ``torch.compile`` (Inductor fuses it; CUDA only);
* ``torch-layer_norm``: ``F.layer_norm`` alone on the precomputed sum (LayerNorm without the add), with its own
  byte count (read s, write y; bwd read dy and s, write ds).

CUDA: bf16, 16384 x {384, 768, 1024} (quick: 16384 x 768). CPU: fp32 4096 x 768, torch providers only.
Targets (issue #5, H100, 16384 x 768 bf16): fastbert fwd+bwd >= 85% of copy and >= 1.5x eager.

    python benchmarks/bench_layer_norm.py [--quick] [--sweep]   # --sweep (CUDA): retune the launch heuristics
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

COLUMNS = ["provider", "case", "mode", "shape", "ms", "ms_p20", "ms_p80", "gbps", "pct_of_copy", "speedup_vs_eager", "note"]
PROVIDERS = ["fastbert", "eager", "torch-compile", "torch-layer_norm"]
EPS = 1e-12
DROPOUT_P = 0.1


class Unavailable(RuntimeError):
    """A provider that cannot run on this device (reported in the row's note)."""


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


_compiled = {}


def _make_provider(provider: str, x, r, w, b, p: float, device: torch.device):
    """-> (fn() -> output, tensors to differentiate)."""
    cuda = device.type == "cuda"
    if provider == "fastbert":
        if not cuda:
            raise Unavailable("needs CUDA (Triton kernels; the interpreter is not a speed path)")
        from fastbert.ops import layer_norm

        return (lambda: layer_norm(x, w, b, EPS, residual=r, dropout_p=p)), (x, r, w, b)
    if provider == "eager":
        return (lambda: _eager(x, r, w, b, p)), (x, r, w, b)
    if provider == "torch-compile":
        if not cuda:
            raise Unavailable("CUDA only (Inductor on CPU is not the comparison that matters)")
        if "fn" not in _compiled:
            _compiled["fn"] = torch.compile(_eager, dynamic=False)
        return (lambda: _compiled["fn"](x, r, w, b, p)), (x, r, w, b)
    if provider == "torch-layer_norm":
        s = (x.detach() + r.detach()).requires_grad_()
        return (lambda: F.layer_norm(s, (s.shape[-1],), w, b, EPS)), (s, w, b)
    raise ValueError(provider)


def _eager(x, r, w, b, p):
    """HF BertSelfOutput after its Linear: dropout, residual add, LayerNorm (three kernels)."""
    return F.layer_norm(F.dropout(x, p, training=p > 0.0) + r, (x.shape[-1],), w, b, EPS)


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
        out = fn()
        dy = torch.randn_like(out)

        def step():
            torch.autograd.grad(fn(), inputs, dy)
    else:  # backward alone: keep one graph and replay its backward
        out = fn()
        dy = torch.randn_like(out)

        def step():
            torch.autograd.grad(out, inputs, dy, retain_graph=True)
    step()
    return harness.bench_fn(step, device, **opts)


def _copy_row(rows: int, hidden: int, dtype: torch.dtype, device: torch.device, case: str) -> dict:
    src = torch.randn(rows, hidden, device=device).to(dtype)
    dst = torch.empty_like(src)
    t = harness.bench_fn(lambda: dst.copy_(src), device, warmup_ms=50 if device.type == "cuda" else 0,
                         rep_ms=300 if device.type == "cuda" else 150)
    row = {"bench": "layer_norm", "provider": "copy", "case": case, "mode": "copy", "shape": f"{rows}x{hidden}",
           "dtype": str(dtype).replace("torch.", ""), **t}
    row["gbps"] = 2 * src.numel() * src.element_size() / (t["ms"] * 1e-3) / 1e9
    return row


def run(device: torch.device | None = None, quick: bool = False) -> list[dict]:
    device = torch.device(device or harness.default_device())
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    out: list[dict] = []
    for rows, hidden in _shapes(cuda, quick):
        x, r, w, b = _inputs(rows, hidden, dtype, device)
        for case, p in (("residual", 0.0), ("residual+dropout", DROPOUT_P)):
            copy = _copy_row(rows, hidden, dtype, device, case)
            case_rows = [copy]
            for provider in PROVIDERS:
                if provider == "torch-layer_norm" and p > 0.0:
                    continue  # LayerNorm alone has no dropout: one row per shape is enough
                for mode in ("fwd", "bwd", "fwd+bwd"):
                    row = {"bench": "layer_norm", "provider": provider, "case": case, "mode": mode,
                           "shape": f"{rows}x{hidden}", "dtype": str(dtype).replace("torch.", ""), "dropout_p": p}
                    case_rows.append(row)
                    try:
                        fn, inputs = _make_provider(provider, x, r, w, b, p, device)
                        row.update(_time(fn, inputs, mode, device))
                        nbytes = ideal_bytes(rows, hidden, x.element_size(), mode, p > 0.0, provider)
                        row["gbps"] = nbytes / (row["ms"] * 1e-3) / 1e9
                    except Unavailable as exc:
                        row["note"] = str(exc)
                    except Exception as exc:  # report, keep benchmarking the others
                        row["note"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:70]}"
            for row in case_rows:
                if row.get("gbps") is not None and row["provider"] != "copy":
                    row["pct_of_copy"] = 100.0 * row["gbps"] / copy["gbps"]
            if cuda:
                torch.cuda.empty_cache()
            out.extend(case_rows)
    harness.add_speedups(out, "eager", group=("shape", "case", "mode"))
    for row in out:
        if row["provider"] in ("torch-layer_norm", "copy"):
            row["speedup_vs_eager"] = None  # different work: not a speed-up over the same computation
    return out


# ----------------------------------------------------------------------------------------------------------------
# launch-heuristic sweep (CUDA): prints fwd and bwd GB/s for each override of fastbert.ops.fused_layer_norm's configs
# ----------------------------------------------------------------------------------------------------------------
def sweep(device: torch.device, rows: int = 16384, hiddens=(384, 768, 1024), p: float = 0.0) -> None:
    mod = importlib.import_module("fastbert.ops.fused_layer_norm")
    for hidden in hiddens:
        x, r, w, b = _inputs(rows, hidden, torch.bfloat16, device)
        print(f"\nhidden {hidden}, rows {rows}, dropout {p}")
        for block_m, warps in itertools.product((1, 2, 4, 8, 16), (2, 4, 8, 16)):
            mod._CONFIG_OVERRIDE.clear()
            mod._CONFIG_OVERRIDE.update(fwd_block_m=block_m, fwd_warps=warps)
            try:
                t = _time(lambda: mod.layer_norm(x, w, b, EPS, residual=r, dropout_p=p), (x, r, w, b), "fwd", device)
                gbps = ideal_bytes(rows, hidden, 2, "fwd", p > 0) / (t["ms"] * 1e-3) / 1e9
                print(f"  fwd block_m={block_m:2d} warps={warps:2d}: {t['ms'] * 1e3:7.1f} us  {gbps:7.0f} GB/s")
            except Exception as exc:
                print(f"  fwd block_m={block_m:2d} warps={warps:2d}: {type(exc).__name__}")
        for block_m, warps, per_sm in itertools.product((1, 2, 4, 8), (4, 8, 16), (1, 2, 4, 8)):
            mod._CONFIG_OVERRIDE.clear()
            mod._CONFIG_OVERRIDE.update(bwd_block_m=block_m, bwd_warps=warps, bwd_programs_per_sm=per_sm)
            try:
                t = _time(lambda: mod.layer_norm(x, w, b, EPS, residual=r, dropout_p=p), (x, r, w, b), "bwd", device)
                gbps = ideal_bytes(rows, hidden, 2, "bwd", p > 0) / (t["ms"] * 1e-3) / 1e9
                print(f"  bwd block_m={block_m} warps={warps:2d} per_sm={per_sm}: {t['ms'] * 1e3:7.1f} us  {gbps:7.0f} GB/s")
            except Exception as exc:
                print(f"  bwd block_m={block_m} warps={warps:2d} per_sm={per_sm}: {type(exc).__name__}")
        mod._CONFIG_OVERRIDE.clear()


# ----------------------------------------------------------------------------------------------------------------
# pytest-benchmark entry points (small shapes on CPU; fastbert needs CUDA)
# ----------------------------------------------------------------------------------------------------------------
def _bench_case(benchmark, provider: str, mode: str, p: float = 0.0):
    import pytest

    device = harness.default_device()
    cuda = device.type == "cuda"
    rows, hidden = (16384, 768) if cuda else (1024, 768)
    x, r, w, b = _inputs(rows, hidden, torch.bfloat16 if cuda else torch.float32, device)
    try:
        fn, inputs = _make_provider(provider, x, r, w, b, p, device)
    except Unavailable as exc:
        pytest.skip(str(exc))
    dy = torch.randn_like(fn())

    def step():
        if mode == "fwd":
            with torch.no_grad():
                fn()
        else:
            torch.autograd.grad(fn(), inputs, dy)
        if cuda:
            torch.cuda.synchronize()

    benchmark(step)


def test_layer_norm_eager_fwd(benchmark):
    _bench_case(benchmark, "eager", "fwd")


def test_layer_norm_eager_fwd_bwd(benchmark):
    _bench_case(benchmark, "eager", "fwd+bwd")


def test_layer_norm_eager_dropout_fwd_bwd(benchmark):
    _bench_case(benchmark, "eager", "fwd+bwd", DROPOUT_P)


def test_layer_norm_fastbert_fwd(benchmark):
    _bench_case(benchmark, "fastbert", "fwd")


def test_layer_norm_fastbert_fwd_bwd(benchmark):
    _bench_case(benchmark, "fastbert", "fwd+bwd")


def test_layer_norm_fastbert_dropout_fwd_bwd(benchmark):
    _bench_case(benchmark, "fastbert", "fwd+bwd", DROPOUT_P)


def main() -> None:
    harness.script_main(run, COLUMNS, __doc__.splitlines()[0], sweep=sweep)


if __name__ == "__main__":
    main()
