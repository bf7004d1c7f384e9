"""Static compile report: what the fused kernels compile to on each NVIDIA target, without a GPU.

    python benchmarks/static_report.py [--targets 80,86,89,90,100,120] [--quick] [--only attention,layer_norm,bias_gelu]
                                       [--jobs 2] [--out PATH]

For every target it runs the public functionals (``fastbert.ops.attention``, ``layer_norm``, ``bias_gelu``) forward
and backward on model-shaped CPU tensors under :class:`triton_static.LaunchRecorder`, which records each Triton
launch the launchers make (kernel, constexprs, warps, stages and the JIT's specialization of these very arguments)
instead of running it. The functionals are forced onto their Triton path by answering
``fastbert._backend.why_not_triton`` with None, and ``fastbert.ops._common.device_capability`` (when it exists) and
``torch.cuda.get_device_capability`` answer the target's capability, so each target records the launches its own
config table picks. Identical launches are de-duplicated; each is compiled for its target
(``triton.compile``, in a pool of ``--jobs`` processes) and analyzed from the cubin: registers, spill bytes,
static + dynamic shared memory, theoretical occupancy, tensor-core instructions, and the static instruction count
of the main loop (see ``triton_static.main_loop``).

Each attention forward is set beside the floor it is measured against: ``fa2_peer._fa2_fwd_kernel``, a minimal
unmasked FlashAttention-2 forward compiled with the same head_dim, dtype, blocks, warps and stages for the same
target; ``vs peer`` is fastbert's main-loop instruction count over the peer's.

Model-shaped inputs: batch 8, IMDb-like lengths (``harness.imdb_like_lengths``) up to 512; q, k, v are strided views
of one fused QKV projection output (``[batch, seqlen, 3, heads, head_dim]`` padded with the HF int64 mask, or
``[tokens, 3, heads, head_dim]`` packed with cu_seqlens); activations bf16 or fp16; LayerNorm (with residual) and
bias+GELU take bf16 activations with fp32 parameters, as under autocast. Dropout p = 0.1 (BERT's).

Prints a markdown table (one row per variant and target) and a summary; writes
``benchmarks/results/static-report-<date>.json``. Runs on any machine: it never touches a GPU.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime as _dt
import json
import multiprocessing
import os
import platform
import sys
import time
import warnings
from typing import Any, Callable

# The recorder needs real JITFunctions: kernels defined under TRITON_INTERPRET=1 are interpreter objects.
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks import fa2_peer, harness, triton_static  # noqa: E402
from benchmarks.triton_static import Launch, LaunchRecorder  # noqa: E402

ALL_TARGETS = (80, 86, 89, 90, 100, 120)
OPS = ("attention", "layer_norm", "bias_gelu")
BATCH, MAX_LEN, DROPOUT = 8, 512, 0.1
# head_dim -> heads of a model with that head size: MiniLM-L12-H384, BERT-base, a 1024-wide model with 8 heads
ATTN_HEADS = {32: 12, 64: 12, 128: 8}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------------------------
# workloads: the public functionals on model-shaped inputs, forward then backward
# ----------------------------------------------------------------------------------------------------------------
class Case:
    """One model-shaped call of a public functional; ``forward()`` returns the output to back-propagate through."""

    def __init__(self, op: str, label: str, params: dict[str, Any], forward: Callable[[], torch.Tensor]):
        self.op, self.label, self.params, self.forward = op, label, params, forward


def _lengths() -> torch.Tensor:
    return harness.imdb_like_lengths(BATCH, MAX_LEN, seed=0)


def attention_case(head_dim: int, dtype: str, layout: str, dropout_p: float) -> Case:
    from fastbert import ops

    heads = ATTN_HEADS[head_dim]
    dt = DTYPES[dtype]

    def forward():
        lengths = _lengths()
        if layout == "padded":
            qkv = torch.empty(BATCH, MAX_LEN, 3, heads, head_dim, dtype=dt, requires_grad=True)  # fused projection
            q, k, v = qkv.unbind(2)  # [batch, seqlen, heads, head_dim] strided views
            mask = harness.lengths_to_mask(lengths, MAX_LEN)  # HF int64 0/1 mask
            return ops.attention(q, k, v, attention_mask=mask, dropout_p=dropout_p)
        cu_seqlens = torch.zeros(BATCH + 1, dtype=torch.int32)
        cu_seqlens[1:] = lengths.cumsum(0)
        qkv = torch.empty(int(lengths.sum()), 3, heads, head_dim, dtype=dt, requires_grad=True)
        q, k, v = qkv.unbind(1)  # [tokens, heads, head_dim] strided views
        return ops.attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=int(lengths.max()), dropout_p=dropout_p)

    label = f"{dtype} d{head_dim} {layout}{' drop' if dropout_p else ''}"
    params = dict(head_dim=head_dim, heads=heads, dtype=dtype, layout=layout, dropout_p=dropout_p)
    return Case("attention", label, params, forward)


def layer_norm_case(hidden: int, dropout_p: float) -> Case:
    from fastbert import ops

    def forward():
        x = torch.empty(BATCH, 128, hidden, dtype=torch.bfloat16, requires_grad=True)  # dense output
        residual = torch.empty(BATCH, 128, hidden, dtype=torch.bfloat16, requires_grad=True)
        weight = torch.ones(hidden, requires_grad=True)  # fp32 parameters (autocast)
        bias = torch.zeros(hidden, requires_grad=True)
        return ops.layer_norm(x, weight, bias, 1e-12, residual=residual, dropout_p=dropout_p)

    label = f"bf16/fp32 N{hidden} residual{' drop' if dropout_p else ''}"
    return Case("layer_norm", label, dict(hidden=hidden, dropout_p=dropout_p), forward)


def bias_gelu_case(features: int, approximate: str) -> Case:
    from fastbert import ops

    def forward():
        x = torch.empty(BATCH, 128, features, dtype=torch.bfloat16, requires_grad=True)  # intermediate dense output
        bias = torch.zeros(features, requires_grad=True)  # fp32 bias (autocast)
        return ops.bias_gelu(x, bias, approximate)

    label = f"bf16/fp32 N{features} {'erf' if approximate == 'none' else 'tanh'}"
    return Case("bias_gelu", label, dict(features=features, approximate=approximate), forward)


def cases(quick: bool, only: tuple[str, ...] = OPS) -> list[Case]:
    """BERT-base only when quick; else head_dim 32/64/128, bf16/fp16, padded/packed, with/without dropout, LayerNorm
    widths 384/768/1024 (MiniLM, base, large), GELU widths 1536/3072 (MiniLM, base; erf and tanh)."""
    out = []
    if "attention" in only:
        for hd in (64,) if quick else (32, 64, 128):
            for dt in ("bf16",) if quick else ("bf16", "fp16"):
                for layout in ("padded", "packed"):
                    for p in (0.0, DROPOUT):
                        out.append(attention_case(hd, dt, layout, p))
    if "layer_norm" in only:
        for n in (768,) if quick else (384, 768, 1024):
            for p in (0.0, DROPOUT):
                out.append(layer_norm_case(n, p))
    if "bias_gelu" in only:
        for n in (3072,) if quick else (1536, 3072):
            for approx in ("none",) if quick else ("none", "tanh"):
                out.append(bias_gelu_case(n, approx))
    return out


# ----------------------------------------------------------------------------------------------------------------
# recording: the functionals on the Triton path for one target
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fastbert_on_target(capability: int):
    """Record launches for ``capability``: Triton path forced on CPU tensors, the target's capability reported."""
    import fastbert._backend as backend
    import fastbert.ops  # noqa: F401 - defines the kernels

    with LaunchRecorder(capability) as rec, contextlib.ExitStack() as stack:
        stack.enter_context(_patched(backend, "why_not_triton", lambda *tensors: None))
        common = sys.modules.get("fastbert.ops._common")
        if common is None:
            with contextlib.suppress(ImportError):
                import fastbert.ops._common as common
        original = getattr(common, "device_capability", None) if common is not None else None
        if original is not None:
            fake = lambda *args, **kwargs: divmod(capability, 10)  # noqa: E731
            # patch the definition and every fastbert module that imported it by name
            for name, mod in list(sys.modules.items()):
                if name.startswith("fastbert") and getattr(mod, "device_capability", None) is original:
                    stack.enter_context(_patched(mod, "device_capability", fake))
        yield rec


@contextlib.contextmanager
def _patched(owner, name, value):
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def record_case(case: Case, capability: int) -> list[tuple[str, Launch]]:
    """[(phase "fwd" | "bwd", launch)] for one case on one target."""
    with fastbert_on_target(capability) as rec:
        torch.manual_seed(0)
        out = case.forward()
        n_fwd = len(rec.launches)
        out.backward(torch.empty_like(out))
    return [("fwd" if i < n_fwd else "bwd", launch) for i, launch in enumerate(rec.launches)]


def record_peer(launch: Launch, dtype: str, head_dim: int, heads: int) -> Launch | None:
    """The FA2 peer launched like ``launch`` (a fastbert attention forward): same blocks, warps, stages, target."""
    block_m, block_n = launch.constexpr("BLOCK_M"), launch.constexpr("BLOCK_N")
    if not isinstance(block_m, int) or not isinstance(block_n, int):
        return None
    seqlen = MAX_LEN
    qkv = torch.empty(BATCH, seqlen, 3, heads, head_dim, dtype=DTYPES[dtype])
    q, k, v = qkv.unbind(2)
    with LaunchRecorder(launch.capability) as rec:
        fa2_peer.fa2_forward(q, k, v, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=launch.num_warps,
                             num_stages=launch.num_stages)
    return rec.launches[0]


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------
def _cfg(launch: Launch) -> str:
    c = launch.named_constexprs()
    blocks = "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N") if isinstance(c.get(k), int))
    return f"{blocks + ' ' if blocks else ''}w{launch.num_warps} s{launch.num_stages}"


def _short(name: str) -> str:
    name = name.strip("_")
    return name[:-len("_kernel")] if name.endswith("_kernel") else name


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}" if n % 1024 else str(n // 1024)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    cols = ["target", "kernel", "case", "cfg", "regs", "spill st/ld B", "smem KB st+dyn", "occupancy",
            "tensor core", "loop instrs", "vs peer", "boundary loop"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        if "error" in r:
            cells = [f"sm_{r['target']}", _short(r["kernel"]), r["case"], r["cfg"], "error: " + r["error"]] + [""] * 7
        else:
            occ = f"{r['warps']}w {r['occupancy']:.0%} ({r['limiter']})" if r.get("occupancy") is not None else "-"
            tc = ", ".join(f"{k}x{v}" for k, v in sorted(r["tensor_core"].items())) or "-"
            loop = r["main_loop_instrs"]
            if loop is not None and r.get("main_loop_tensor_core"):
                loop = f"{loop} ({r['main_loop_tensor_core']} TC)"
            cells = [
                f"sm_{r['target']}", _short(r["kernel"]), r["case"], r["cfg"], r["registers"],
                f"{r['spill_store_bytes']}/{r['spill_load_bytes']}",
                f"{_kb(r['smem_static'])}+{_kb(r['smem_dynamic'])}", occ, tc,
                "-" if loop is None else loop,
                "-" if r.get("ratio_vs_peer") is None else f"{r['ratio_vs_peer']:.2f}",
                "-" if r.get("boundary_loop_instrs") is None else r["boundary_loop_instrs"],
            ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]], targets: list[int]) -> str:
    lines = ["| target | variants | spilling | errors | attention fwd loop vs peer (min / median / max) |",
             "|---|---|---|---|---|"]
    for t in targets:
        rs = [r for r in rows if r["target"] == t and not r.get("is_peer")]
        spill = [r for r in rs if "error" not in r and (r["spill_store_bytes"] or r["spill_load_bytes"])]
        errors = [r for r in rs if "error" in r]
        ratios = sorted(r["ratio_vs_peer"] for r in rs if r.get("ratio_vs_peer") is not None)
        rtxt = f"{ratios[0]:.2f} / {ratios[len(ratios) // 2]:.2f} / {ratios[-1]:.2f}" if ratios else "-"
        lines.append(f"| sm_{t} | {len(rs)} | {len(spill)} | {len(errors)} | {rtxt} |")
    lines += ["", "BERT-base attention forward (head_dim 64, bf16): main-loop instructions per key block over the FA2 "
              "peer's", "", "| target | padded (HF mask) | packed | padded + dropout | packed + dropout |",
              "|---|---|---|---|---|"]
    for t in targets:
        cells = []
        for layout, drop in (("padded", False), ("packed", False), ("padded", True), ("packed", True)):
            match = [r for r in rows if r["target"] == t and r.get("ratio_vs_peer") is not None
                     and r["params"] == dict(r["params"], head_dim=64, dtype="bf16", layout=layout)
                     and (r["params"]["dropout_p"] > 0) == drop]
            cells.append(f"{match[0]['ratio_vs_peer']:.2f}x" if match else "-")
        lines.append(f"| sm_{t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tool_version(name: str) -> str | None:
    import subprocess

    try:
        out = subprocess.run([triton_static.nvidia_tool(name), "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    release = [ln.strip() for ln in out.splitlines() if "release" in ln]
    return release[0].split(", ", 1)[-1] if release else None


def build(targets: list[int], quick: bool, only: tuple[str, ...]) -> tuple[list[dict], list[Launch], list[str]]:
    """Record every case on every target; returns (row stubs in report order, unique launches to compile, the
    distinct argument specializations that rows refer to by index)."""
    unique: dict[str, int] = {}
    launches: list[Launch] = []
    rows: list[dict] = []
    specs: dict[str, int] = {}

    def spec(launch: Launch) -> int:
        return specs.setdefault(launch.signature_text(), len(specs))

    def add(launch: Launch) -> int:
        key = launch.key()
        if key not in unique:
            unique[key] = len(launches)
            launches.append(launch)
        return unique[key]

    all_cases = cases(quick, only)
    for t in targets:
        seen_rows: dict[int, dict] = {}
        for case in all_cases:
            for phase, launch in record_case(case, t):
                idx = add(launch)
                if idx in seen_rows:  # an identical variant already has a row: note the extra case
                    seen_rows[idx]["also"].append(case.label)
                    continue
                row = {"target": t, "op": case.op, "phase": phase, "kernel": launch.name, "case": case.label,
                       "params": case.params, "cfg": _cfg(launch), "also": [], "launch": idx,
                       "num_warps": launch.num_warps, "num_stages": launch.num_stages,
                       "constexprs": launch.named_constexprs(), "specialization": spec(launch)}
                if case.op == "attention" and phase == "fwd":
                    peer = record_peer(launch, case.params["dtype"], case.params["head_dim"], case.params["heads"])
                    row["peer_launch"] = add(peer) if peer is not None else None
                seen_rows[idx] = row
                rows.append(row)
        # peers get their own rows, once per target
        peer_ids = sorted({r["peer_launch"] for r in seen_rows.values() if r.get("peer_launch") is not None})
        for pid in peer_ids:
            p = launches[pid]
            rows.append({"target": t, "op": "attention", "phase": "fwd", "kernel": p.name, "is_peer": True,
                         "case": f"FA2 peer d{p.constexpr('HEAD_DIM')} {p.signature['Q'][1:]}", "cfg": _cfg(p),
                         "also": [], "launch": pid, "num_warps": p.num_warps, "num_stages": p.num_stages,
                         "constexprs": p.named_constexprs(), "specialization": spec(p)})
    if not launches:
        raise RuntimeError("no Triton launches were recorded: are the kernels real JITFunctions (TRITON_INTERPRET "
                           "unset before importing fastbert)?")
    return rows, launches, list(specs)


def compile_all(launches: list[Launch], jobs: int) -> list[dict]:
    """compile_and_analyze for each launch, in a spawn pool of ``jobs`` processes (inline when jobs == 1)."""
    # the biggest kernels first, so two workers finish together
    order = sorted(range(len(launches)), key=lambda i: ("attn" not in launches[i].name, -launches[i].num_warps))
    results: list[dict | None] = [None] * len(launches)
    if jobs <= 1:
        for i in order:
            results[i] = triton_static.compile_and_analyze(launches[i])
        return results
    with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(triton_static.compile_and_analyze, launches[i]): i for i in order}
        for fut in cf.as_completed(futures):
            results[futures[fut]] = fut.result()
    return results


def run(targets: list[int], quick: bool = False, only: tuple[str, ...] = OPS, jobs: int = 2) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows, launches, specs = build(targets, quick, only)
    t_record = time.perf_counter() - t0
    results = compile_all(launches, jobs)
    for r in rows:
        r.update(results[r["launch"]])
    for r in rows:
        pid = r.get("peer_launch")
        if pid is not None:
            peer = results[pid]
            mine, base = r.get("main_loop_instrs"), peer.get("main_loop_instrs")
            r["peer_main_loop_instrs"] = base
            r["ratio_vs_peer"] = mine / base if mine and base else None
    import fastbert
    import triton

    env = {
        "triton": triton.__version__, "torch": torch.__version__, "fastbert": fastbert.__version__,
        "python": platform.python_version(), "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "targets": [f"sm_{t}" for t in targets], "quick": quick, "ops": list(only), "jobs": jobs,
        "ptxas": _tool_version("ptxas"), "ptxas_blackwell": _tool_version("ptxas-blackwell"),
        "cuobjdump": _tool_version("cuobjdump"), "kernel_sources": triton_static.kernel_sources_hash(),
        "unique_variants": len(launches), "record_s": round(t_record, 1),
        "wall_s": round(time.perf_counter() - t0, 1), "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "sm_limits": {f"sm_{t}": vars(triton_static.SM_LIMITS[t]) for t in targets if t in triton_static.SM_LIMITS},
    }
    return {"environment": env, "specializations": specs, "variants": rows}


def write_json(report: dict[str, Any], path: str) -> None:
    """Indented header, one line per specialization and per variant (diff-friendly, a fraction of indent=1's size)."""
    dump = lambda obj: json.dumps(obj, default=str)  # noqa: E731
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"environment": ' + json.dumps(report["environment"], indent=1, default=str) + ',\n')
        f.write(' "specializations": [\n  ' + ',\n  '.join(map(dump, report["specializations"])) + '\n ],\n')
        f.write(' "variants": [\n  ' + ',\n  '.join(map(dump, report["variants"])) + '\n ]}\n')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fastbert static compile report (no GPU needed)")
    parser.add_argument("--targets", default=",".join(map(str, ALL_TARGETS)),
                        help="comma-separated compute capabilities, e.g. 80,90 (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="BERT-base shapes only (head_dim 64, bf16)")
    parser.add_argument("--only", default=",".join(OPS), help="comma-separated subset of %(default)s")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/static-report-<date>.json)")
    args = parser.parse_args(argv)
    targets = [int(t) for t in args.targets.split(",") if t]
    only = tuple(o for o in args.only.split(",") if o)
    bad = [t for t in targets if t not in triton_static.SM_LIMITS] + [o for o in only if o not in OPS]
    if bad:
        parser.error(f"unknown target(s)/op(s) {bad}; targets {sorted(triton_static.SM_LIMITS)}, ops {OPS}")
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")  # Triton 3.9's notice, not ours

    report = run(targets, quick=args.quick, only=only, jobs=args.jobs)
    env = report["environment"]
    print(f"# fastbert static compile report (triton {env['triton']}, {', '.join(env['targets'])})\n")
    print(markdown_table(report["variants"]))
    print()
    print(summary(report["variants"], targets))
    path = args.out or os.path.join(harness.RESULTS_DIR, f"static-report-{_dt.date.today().isoformat()}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(report, path)
    print(f"\n{env['unique_variants']} unique variants, {env['wall_s']} s (recording {env['record_s']} s, "
          f"{args.jobs} jobs); results: {os.path.relpath(path)}")
    return 1 if any("error" in r for r in report["variants"]) else 0


if __name__ == "__main__":
    sys.exit(main())
