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
