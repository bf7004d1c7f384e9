"""The benchmark harness's shared plumbing, on tiny CPU tensors (no timing is asserted): the fwd / bwd / fwd+bwd
steps, the bandwidth rows, and that which fastbert path is timed, or why not, comes from fastbert itself."""
import os
import sys

import pytest
import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the benchmarks folder is not installed

from benchmarks import bench_gelu, harness  # noqa: E402
from fastbert import _backend  # noqa: E402
from fastbert.ops import choose_path  # noqa: E402


def _case():
    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)
    calls = []

    def fn():
        calls.append(torch.is_grad_enabled())
        return (x * w).sin()

    return harness.Case(fn, (x, w)), calls


@pytest.mark.parametrize("mode", harness.MODES)
def test_timed_step_runs_each_mode(mode):
    case, calls = _case()
    step = harness.timed_step(case, mode)
    assert calls[0] is False  # the untimed first call runs without grad
    del calls[:]
    step()
    step()  # "bwd" replays one kept graph: a second backward must work
    expected = {"fwd": [False, False], "fwd+bwd": [True, True], "bwd": []}[mode]
    assert calls == expected


def test_timed_step_rejects_unknown_mode():
    with pytest.raises(ValueError):
        harness.timed_step(_case()[0], "bwd+fwd")


def test_fastbert_path_is_choose_path():
    x = torch.zeros(2)
    for impl in ("auto", "eager", "sdpa"):
        assert harness.fastbert_path(impl, "cpu", x) == choose_path(impl, "cpu")
    with pytest.raises(harness.Unavailable):
        harness.fastbert_path("fused", "cpu", x)  # CPU: the reference (or the interpreter), not a speed path


def test_fused_skip_reason_is_the_backend_s(monkeypatch):
    monkeypatch.setattr(_backend, "why_not_triton", lambda *t: "no Triton here (test)")
    with pytest.raises(harness.Unavailable, match=r"^no Triton here \(test\)$"):
        harness.require_fused(torch.zeros(1))
    monkeypatch.setattr(_backend, "why_not_triton", lambda *t: None)  # the interpreter on CPU: correct, not timed
    with pytest.raises(harness.Unavailable, match="interpreter"):
        harness.require_fused(torch.zeros(1))


def test_noted_turns_failures_into_notes():
    row = {}
    with harness.noted(row):
        raise harness.Unavailable("why")
    assert row["note"] == "why"
    with harness.noted(row):
        raise RuntimeError("first line\nsecond line")
    assert row["note"] == "RuntimeError: first line"
    with pytest.raises(RuntimeError), harness.noted(row, failures=False):
        raise RuntimeError("not swallowed")


def test_bandwidth_rows_gelu_on_cpu():
    x, b = bench_gelu._inputs(16, 32, torch.float32, torch.device("cpu"))
    rows = harness.bandwidth_rows(
        {"bench": "gelu", "shape": "16x32"}, bench_gelu.PROVIDERS,
        lambda p: bench_gelu._make_case(p, x, b, "none", torch.device("cpu")),
        lambda p, mode: bench_gelu.ideal_bytes(16, 32, 4, mode), (16, 32), torch.float32, torch.device("cpu"),
        modes=("fwd",))
    by = {r["provider"]: r for r in rows}
    assert [r["provider"] for r in rows] == ["copy", "fastbert", "eager", "torch-compile"]
    assert by["copy"]["gbps"] > 0 and by["eager"]["pct_of_copy"] > 0
    assert "ms" not in by["fastbert"] and by["fastbert"]["note"]
    assert by["torch-compile"]["note"].startswith("needs CUDA")


def test_hf_bench_providers_compute_the_same(monkeypatch):
    """bench_hf times the same computation four ways: transformers' sdpa, fastbert's default model, transformers with
    attn_implementation="fastbert" and transformers after fastbert.patch give the same hidden states at the real
    tokens of a bench batch (the patched one with its layers padding-free)."""
    pytest.importorskip("transformers")
    from benchmarks import bench_hf

    monkeypatch.setitem(bench_hf.CONFIGS, "tiny", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                       intermediate_size=128))
    models = bench_hf._models("tiny", torch.device("cpu"), torch.float32)
    assert tuple(models) == bench_hf.PROVIDERS
    ids, mask, _ = bench_hf.imdb_batch(4, 512, seed=0)
    assert ids.shape == mask.shape and bool((mask.sum(1) > 0).all()) and 0 < float(mask.float().mean()) < 1
    with torch.inference_mode():
        outs = {name: m(input_ids=ids, attention_mask=mask)[0] for name, m in models.items()}
    real = mask.bool()
    for name in ("fastbert-default", "hf-fastbert", "hf-patched"):
        assert torch.allclose(outs[name][real], outs["hf-sdpa"][real], atol=1e-5, rtol=1e-5), name
    assert bench_hf._packed_calls(models["hf-patched"]) == 1 and bench_hf._packed_calls(models["hf-sdpa"]) == 0


def test_interleaved_timing_rotates_and_counts():
    """harness.bench_interleaved: every function warmed up once, then called in rounds whose order rotates, at least
    min_reps times each; statistics per function."""
    from benchmarks import harness

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    stats = harness.bench_interleaved(fns, torch.device("cpu"), cpu_rep_ms=0, min_reps=3)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert set(stats) == set("abc") and all(0 <= s["ms_p20"] <= s["ms"] <= s["ms_p80"] for s in stats.values())
