"""``make bench``: every benchmark on the default device (CUDA when present, else CPU), one table per benchmark,
results in benchmarks/results/<device>-<date>.json and a PNG plot of speed-ups vs sequence length beside it.

    python benchmarks/run.py [--quick] [--only bert,attention,...]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402

BENCHES = ["bert", "hf", "attention", "layer_norm", "gelu", "data"]


def plot(benches: dict[str, list[dict]], path: str, device_label: str) -> str | None:
    """Speed-up vs sequence length per provider (forward+backward), one panel per benchmark that has a length axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for name, rows in benches.items():
        keyed = [r for r in rows if r.get("max_len") is not None and r.get("mode") == "fwd+bwd"]
        speed_keys = sorted({k for r in keyed for k in r if k.startswith("speedup_vs_") and r[k] is not None})
        if keyed and speed_keys:
            panels.append((name, keyed, speed_keys[0]))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (name, rows, key) in zip(axes[0], panels):
        by_provider: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r.get(key) is not None:
                by_provider.setdefault(r["provider"], []).append((r["max_len"], r[key]))
        for provider, points in sorted(by_provider.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=provider)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("max sequence length")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_title(f"{name}: forward+backward")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=8)
    fig.suptitle(device_label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="fastbert benchmark suite")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (smoke run)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {BENCHES}")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<device>-<date>.json)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or BENCHES
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHES}")

    device = harness.default_device()
    label = harness.device_label(device)
    print(f"fastbert benchmarks on {label}  ({'quick' if args.quick else 'full'} run)", flush=True)
    results: dict[str, list[dict]] = {}
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        t0 = time.perf_counter()
        rows = module.run(device=device, quick=args.quick)
        results[name] = rows
        print(f"\n== {name}  ({time.perf_counter() - t0:.0f} s, {label})")
        print(harness.format_table(rows, module.COLUMNS), flush=True)
    path = harness.write_results(device, results, args.out)
    print(f"\nresults: {os.path.relpath(path)}")
    png = plot(results, os.path.splitext(path)[0] + ".png", label)
    if png:
        print(f"plot:    {os.path.relpath(png)}")


if __name__ == "__main__":
    main()
