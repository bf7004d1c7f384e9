"""``python -m fastbert.info``: versions, whether the C++ extension is built, whether Triton/CUDA are usable and why,
which path "auto" picks on this machine, and how long ``import fastbert`` takes."""
from __future__ import annotations

import importlib
import platform
import subprocess
import sys


def import_seconds() -> float:
    """Wall time of ``import fastbert`` in a fresh interpreter (the package promises a cheap import)."""
    code = "import time; t = time.perf_counter(); import fastbert; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def collect() -> dict[str, str]:
    import torch

    import fastbert
    from fastbert.ops import choose_path

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
    from fastbert import _backend  # imports Triton (if installed): after the versions above

    cuda_ok, cuda_why = _backend.cuda_status()
    info["CUDA"] = ("usable: " if cuda_ok else "not usable: ") + cuda_why
    triton_ok, triton_why = _backend.triton_status()
    info["Triton"] = ("importable: " if triton_ok else "not usable: ") + triton_why
    device = "cuda" if cuda_ok else "cpu"
    path = choose_path("auto", device)
    unpad = (f"unpads batches with >= {path.unpad_min_padding:.0%} padding" if path.unpad_min_padding is not None
             else "keeps padded batches padded")
    info['attn_implementation="auto"'] = f"{path.name} on {device} ({unpad})"
    if triton_ok and cuda_ok:
        kernels = "Triton kernels on CUDA tensors"
    elif triton_ok and _backend.TRITON_INTERPRET:
        kernels = "Triton interpreter on CPU tensors (TRITON_INTERPRET=1)"
    elif triton_ok:
        kernels = "PyTorch reference path (no CUDA device; TRITON_INTERPRET=1 runs the kernels in Triton's interpreter)"
    else:
        kernels = "PyTorch reference path (" + triton_why + ")"
    info["fused ops run"] = kernels
    from fastbert.ops.linear import describe

    info["CPU fp32 dense layers"] = f"{describe()}; FASTBERT_CPU_GEMM=auto|onednn|torch"
    info["import fastbert"] = f"{import_seconds() * 1e3:.0f} ms (Triton and torch load on first use)"
    return info


def main() -> int:
    info = collect()
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key.ljust(width)}  {value}")
    return 0 if info["fastbert._C"] == "built" else 1


if __name__ == "__main__":
    sys.exit(main())
