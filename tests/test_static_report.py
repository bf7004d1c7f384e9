"""The static compile report's machinery (benchmarks/static_report.py, benchmarks/triton_static.py).

The SASS/loop/occupancy layer is tested on a hand-written SASS listing; the recorder and compiler end to end on one
variant (the BERT-base packed attention forward and its FA2 peer) compiled for sm_90 with the ptxas Triton ships:
no GPU needed. That part runs in a subprocess without TRITON_INTERPRET, because the recorder needs real
JITFunctions and this test session defines the kernels in the interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import triton_static as ts  # noqa: E402

# entry; an outer loop (header 0x30) holding an inner MMA loop (header 0x50) whose wait spin lives out of line after
# EXIT (0xb0, a self-loop) and branches back into the inner loop; a dead self-branch at the end.
_SASS = """
        /*0000*/                   S2R R0, SR_TID.X ;                /* 0x0 */
        /*0010*/                   STL [R1], R0 ;                    /* 0x0 */
        /*0020*/                   STL.64 [R1+0x8], R2 ;             /* 0x0 */
        /*0030*/                   IMAD R4, R0, 0x2, RZ ;            /* 0x0 */
        /*0040*/                   LDL R5, [R1] ;                    /* 0x0 */
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;  /* 0x0 */
        /*0060*/              @!P0 BRA 0xb0 ;                        /* 0x0 */
        /*0070*/                   NOP ;                             /* 0x0 */
        /*0080*/                   BRA.U !UP0, 0x50 ;                /* 0x0 */
        /*0090*/               @P1 BRA 0x30 ;                        /* 0x0 */
        /*00a0*/                   EXIT ;                            /* 0x0 */
        /*00b0*/              @!P0 BRA 0xb0 ;                        /* 0x0 */
        /*00c0*/                   BRA 0x70 ;                        /* 0x0 */
        /*00d0*/                   BRA 0xd0;                         /* 0x0 */
"""


def test_sass_loops_spills_and_occupancy():
    instrs = ts.parse_sass(_SASS)
    assert len(instrs) == 14 and instrs[6].guarded and instrs[6].base == "BRA"
    assert ts.spill_bytes(instrs) == (12, 4)
    loops = {hex(lp.header): lp for lp in ts.find_loops(instrs)}
    assert set(loops) == {"0x30", "0x50", "0xb0"}  # the unreachable self-branch at 0xd0 is no loop
    inner = loops["0x50"]
    assert (inner.instrs, inner.tensor_core) == (5, 1)  # 0x50-0x80 without the NOP, plus the out-of-line 0xb0, 0xc0
    assert loops["0x30"].instrs == 8 and loops["0xb0"].instrs == 1
    assert ts.main_loop(list(loops.values())) is inner
    # sm_90: 128 registers x 4 warps -> 16 warps by registers; 64 KB (+1 KB reserved) shared -> 3 blocks
    occ = ts.occupancy(90, regs=128, num_warps=4, smem_bytes=64 * 1024)
    assert (occ["blocks"], occ["warps"], occ["limiter"]) == (3, 12, "shared memory")
    assert ts.occupancy(90, regs=255, num_warps=4, smem_bytes=0)["warps"] == 8
    assert ts.occupancy(86, regs=32, num_warps=4, smem_bytes=200 * 1024)["warps"] == 0  # over the per-block limit


_ONE_VARIANT = r"""
import json
from benchmarks import static_report as sr, triton_static as ts
case = sr.attention_case(64, "bf16", "packed", 0.0)
recorded = sr.record_case(case, 90)
fwd = recorded[0][1]
peer = sr.record_peer(fwd, "bf16", 64, case.params["heads"])
print(json.dumps({"phases": [p for p, _ in recorded], "spec": fwd.specialization(), "warps": fwd.num_warps,
                  "fwd": ts.compile_and_analyze(fwd), "peer": ts.compile_and_analyze(peer)}))
"""


@pytest.fixture(scope="module")
def one_variant():
    """The BERT-base packed bf16 attention (forward, dQ, dK/dV) recorded and its forward + FA2 peer compiled for
    sm_90, now, in a subprocess without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", _ONE_VARIANT], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_variant_compiles_for_sm90(one_variant):
    out = one_variant
    assert out["phases"] == ["fwd", "bwd", "bwd"]  # forward, then dQ and dK/dV
    spec = out["spec"]
    assert spec["pointers"]["Q"] == "bf16" and spec["pointers"]["CU_SEQLENS"] == "i32"
    assert "stride_qs" in spec["divisible_by_16"]  # fused-QKV row stride 3 * heads * head_dim
    for name in ("fwd", "peer"):
        r = out[name]
        assert "error" not in r, r
        assert 0 < r["registers"] <= 255
        assert set(r["tensor_core"]) & {"HGMMA", "HMMA"}
        assert r["main_loop_instrs"] > 0 and r["main_loop_tensor_core"] > 0
        assert r["occupancy"] is not None and r["warps"] >= out["warps"]
        if "ptxas" in r:  # this process ran ptxas (no cache hit): the SASS-derived spills agree with ptxas -v
            assert (r["spill_store_bytes"], r["spill_load_bytes"]) == (r["ptxas"]["spill_stores"], r["ptxas"]["spill_loads"])


_LENGTHS = r"""
import json, torch
from benchmarks import static_report as sr
import fastbert
from fastbert.ops.padding import seqlens_to_cu_seqlens

def keys(batch_lengths, padded):
    with sr.fastbert_on_target(90) as rec:
        heads, d = 12, 64
        for lengths in batch_lengths:
            total, longest = sum(lengths), max(lengths)
            if padded:
                q = torch.empty(len(lengths), longest, 3, heads, d, dtype=torch.bfloat16).unbind(2)
                mask = (torch.arange(longest)[None] < torch.tensor(lengths)[:, None]).long()
                fastbert.ops.attention(*q, attention_mask=mask, dropout_p=0.1)
            else:
                q = torch.empty(total, 3, heads, d, dtype=torch.bfloat16).unbind(1)
                cu = seqlens_to_cu_seqlens(torch.tensor(lengths))
                fastbert.ops.attention(*q, cu_seqlens=cu, max_seqlen=longest, dropout_p=0.1)
    return [l.key() for l in rec.launches if l.name == "_attn_fwd_kernel"]

out = {}
for padded in (True, False):
    k = keys([[100], [200, 3], [137, 301, 455], [333] * 16, [1, 17], [512] * 8], padded)
    out[str(padded)] = len(set(k))
print(json.dumps(out))
"""


def test_sequence_length_is_not_specialized():
    """Sequence lengths, batch sizes and token counts are runtime arguments: six batches of different shapes record
    one forward variant per layout (what a GPU would compile once and reuse). CPU counterpart of
    test_attention.py::test_gpu_no_recompile_across_lengths."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-c", _LENGTHS], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"True": 1, "False": 1}


# ---------------------------------------------------------------------------------------------------------------
# the committed report (benchmarks/results/static-report-<date>.json, the newest): it describes this code, and what
# it says holds for every variant on every target
# ---------------------------------------------------------------------------------------------------------------
TARGETS = ["sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"]
# the tensor-core instruction each architecture's attention loops must issue: mma.sync (HMMA), wgmma (HGMMA) on
# Hopper, tcgen05 (UTC*MMA) on datacenter Blackwell
TENSOR_CORE = {"sm_80": "HMMA", "sm_86": "HMMA", "sm_89": "HMMA", "sm_90": "HGMMA", "sm_100": "UTC", "sm_120": "HMMA"}


@pytest.fixture(scope="module")
def committed_report():
    import glob

    paths = sorted(glob.glob(os.path.join(REPO, "benchmarks", "results", "static-report-*.json")))
    assert paths, "no committed static report: run make static and commit benchmarks/results/static-report-<date>.json"
    with open(paths[-1], encoding="utf-8") as f:
        return json.load(f)


def test_committed_report_describes_this_code(committed_report):
    env = committed_report["environment"]
    assert env.get("kernel_sources") == ts.kernel_sources_hash(), (
        "the kernels, their launch configs or the FA2 peer changed after the committed static report was made: run "
        "make static and commit the new benchmarks/results/static-report-<date>.json")
    assert env["targets"] == TARGETS and not env["quick"] and env["ops"] == ["attention", "layer_norm", "bias_gelu"]


def test_committed_report_every_variant_compiles_fits_and_does_not_spill(committed_report):
    env, rows = committed_report["environment"], committed_report["variants"]
    ours = [r for r in rows if not r.get("is_peer")]
    for target in TARGETS:
        mine = [r for r in ours if f"sm_{r['target']}" == target]
        kernels = {r["kernel"] for r in mine}
        assert {"_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel", "_layer_norm_fwd_kernel",
                "_layer_norm_bwd_kernel", "_bias_gelu_fwd_kernel", "_bias_gelu_bwd_kernel"} <= kernels, target
        # every attention case: 3 head sizes x 2 dtypes x padded/packed x dropout or not, three kernels each
        cases = {(r["params"]["head_dim"], r["params"]["dtype"], r["params"]["layout"], r["params"]["dropout_p"] > 0)
                 for r in mine if r["op"] == "attention"}
        assert len(cases) == 24, (target, sorted(cases))
    limits = env["sm_limits"]
    for r in rows:
        where = f"sm_{r['target']} {r['kernel']} {r['case']} {r['cfg']}"
        assert "error" not in r, f"{where}: {r.get('error')}"
        assert r["smem_static"] + r["smem_dynamic"] <= limits[f"sm_{r['target']}"]["smem_block"], where
        assert 0 < r["registers"] <= 255, where
        if not r.get("is_peer"):
            assert r["spill_store_bytes"] == 0 and r["spill_load_bytes"] == 0, f"{where} spills"
            assert r["occupancy"] and r["occupancy"] > 0, where


def test_committed_report_attention_loops_use_tensor_cores(committed_report):
    for r in committed_report["variants"]:
        if r["op"] != "attention" or r["kernel"] == "_row_spans_kernel":  # the mask -> row-span pre-pass has no dot
            continue
        target = f"sm_{r['target']}"
        where = f"{target} {r['kernel']} {r['case']}"
        assert r["main_loop_tensor_core"] > 0, f"{where}: no tensor-core instruction in the main loop"
        assert any(kind.startswith(TENSOR_CORE[target]) for kind in r["tensor_core"]), (where, r["tensor_core"])
        if r["phase"] == "fwd" and not r.get("is_peer"):
            assert r["ratio_vs_peer"] is not None and r["peer_main_loop_instrs"] > 0, where


def test_live_compile_agrees_with_committed_report(committed_report, one_variant):
    """One variant compiled now (sm_90, BERT-base packed bf16 forward) gives the registers, spills and main-loop size
    the committed report holds for it: the report is what this Triton makes of this code."""
    import triton

    live = one_variant["fwd"]
    (row,) = [r for r in committed_report["variants"] if r["target"] == 90 and r["kernel"] == "_attn_fwd_kernel"
              and r["case"] == "bf16 d64 packed"]
    if triton.__version__ == committed_report["environment"]["triton"]:
        for key in ("registers", "spill_store_bytes", "spill_load_bytes", "main_loop_instrs", "main_loop_tensor_core"):
            assert live[key] == row[key], (key, live[key], row[key])
    else:  # another Triton (make compat) allocates registers its own way: the properties that matter still hold
        assert live["spill_store_bytes"] == live["spill_load_bytes"] == 0, live
        assert live["main_loop_tensor_core"] > 0, live
