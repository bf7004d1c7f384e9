"""``python -m fastbert.info``: versions, whether the C++ extension is built, whether Triton/CUDA are usable and why."""
from __future__ import annotations

import importlib
import platform
import sys


def collect() -> dict[str, str]:
    import torch

    import fastbert
    from fastbert import _backend

    info = {
        "fastbert": fastbert.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for name in ("triton", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError:
            info[name] = "not installed"
    try:
        importlib.import_module("fastbert.data._ext")
        info["fastbert._C"] = "built"
    except ImportError as exc:
        info["fastbert._C"] = f"MISSING: {exc}"
    cuda_ok, cuda_why = _backend.cuda_status()
    info["CUDA"] = ("usable: " if cuda_ok else "not usable: ") + cuda_why
    triton_ok, triton_why = _backend.triton_status()
    info["Triton"] = ("importable: " if triton_ok else "not usable: ") + triton_why
    if triton_ok and not cuda_ok and not _backend.TRITON_INTERPRET:
        kernels = "PyTorch reference path (no CUDA device; TRITON_INTERPRET=1 runs the kernels in Triton's interpreter)"
    elif triton_ok and cuda_ok:
        kernels = "Triton kernels on CUDA tensors"
    elif triton_ok:
        kernels = "Triton interpreter on CPU tensors (TRITON_INTERPRET=1)"
    else:
        kernels = "PyTorch reference path (" + triton_why + ")"
    info["fused ops run"] = kernels
    return info


def main() -> int:
    info = collect()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key.ljust(width)}  {value}")
    return 0 if info["fastbert._C"] == "built" else 1


if __name__ == "__main__":
    sys.exit(main())
