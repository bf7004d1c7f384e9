"""Every GPU-marked test is accounted for in gpu_only.py: a reason it needs real hardware and CPU counterparts that
exist (they run here, through Triton's interpreter)."""
import ast
import os

from gpu_only import GPU_ONLY

HERE = os.path.dirname(os.path.abspath(__file__))


def _tests_in(path: str) -> dict[str, bool]:
    """{test function name: has @pytest.mark.gpu} of one test file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            out[node.name] = any("mark.gpu" in ast.unparse(d) for d in node.decorator_list)
    return out


def test_every_gpu_test_is_listed_with_a_reason_and_real_cpu_counterparts():
    tests = {}
    for name in sorted(os.listdir(HERE)):
        if name.startswith("test_") and name.endswith(".py"):
            tests.update({f"{name}::{fn}": gpu for fn, gpu in _tests_in(os.path.join(HERE, name)).items()})
    gpu_tests = {k for k, gpu in tests.items() if gpu}
    assert gpu_tests == set(GPU_ONLY), (sorted(gpu_tests - set(GPU_ONLY)), sorted(set(GPU_ONLY) - gpu_tests))
    for key, entry in GPU_ONLY.items():
        assert entry["reason"] and entry["cpu"], key
        for counterpart in entry["cpu"]:
            assert counterpart in tests and not tests[counterpart], f"{key}: CPU counterpart {counterpart} not found"
