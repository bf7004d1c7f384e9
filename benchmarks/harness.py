"""The one benchmark harness: timing, memory, workloads, tables and result files.

Timing: on CUDA ``triton.testing.do_bench`` (CUDA events, warm-up, median with 20/80% quantiles); on CPU a
perf_counter loop with the same statistics. Every ratio a benchmark reports is between providers timed in the same
run by these functions.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import time
from typing import Any, Callable, Iterable

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

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
             min_reps: int = 3) -> dict[str, float]:
    """Median and 20/80% quantiles of ``fn``'s run time in milliseconds."""
    device = torch.device(device)
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return {"ms": med, "ms_p20": p20, "ms_p80": p80}
    fn()  # warm-up (first-call allocations, lazy init)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start) * 1e3 < rep_ms:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * (len(times) - 1) + 0.5))]  # noqa: E731
    return {"ms": statistics.median(times), "ms_p20": q(0.2), "ms_p80": q(0.8)}


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
        parser.add_argument("--sweep", action="store_true", help="CUDA: time launch-config overrides")
    args = parser.parse_args()
    device = default_device()
    if getattr(args, "sweep", False):
        if device.type != "cuda":
            parser.error("--sweep needs CUDA")
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
