"""Build script for fastbert's C++ extension ``fastbert._C`` (data side of pretraining).

The extension links only pybind11 and the C++ standard library (no libtorch, no CUDA), so it builds under
pip's default build isolation with nothing but setuptools and pybind11. Package metadata lives in pyproject.toml.
"""
import glob
import os

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

# Compile the csrc/*.cpp translation units in parallel (one per core; FASTBERT_MAX_JOBS overrides).
ParallelCompile("FASTBERT_MAX_JOBS", default=0).install()

SOURCES = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
if not SOURCES:
    raise RuntimeError("csrc/*.cpp not found: run the build from the repository root")
# The headers: a change to one rebuilds the extension. MANIFEST.in puts them in the sdist.
HEADERS = sorted(glob.glob(os.path.join("csrc", "*.h")))

ext_modules = [
    Pybind11Extension(
        "fastbert._C",
        SOURCES,
        include_dirs=["csrc"],
        depends=HEADERS,
        cxx_std=17,
        extra_compile_args=["-O3", "-pthread"],
        extra_link_args=["-pthread"],
    )
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
