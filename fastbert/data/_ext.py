"""The compiled extension ``fastbert._C``; ``fastbert.data`` is the only Python that imports it.

There is deliberately no Python fallback (fastbert/data/reference.py is a test oracle, far too slow to train
with): a missing build fails here, with the fix in the message.
"""
try:
    from .. import _C
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "fastbert._C is not built: run `pip install -e .` (or `make test`) from the repository root, "
        "which compiles csrc/*.cpp with a C++17 compiler and pybind11. "
        f"Original error: {exc}"
    ) from exc

__all__ = ["_C"]
