"""Packaging: the sdist carries everything needed to compile fastbert._C, and a wheel built from the *unpacked
sdist* (not from the checkout) holds the extension and the package, and no tests/ or csrc/.

Builds run through setuptools' PEP 517 backend in a subprocess, with the installed setuptools and pybind11 (no
build isolation, no downloads). The sdist is built from a copy of the checkout, so the setuptools outputs
(fastbert.egg-info, build/, dist/) land in pytest's tmp folder, never in the repository, and an editable install
running there at the same time is not disturbed. The C++ compile happens once per module (fixture below).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDIST_NEEDS = ("setup.py", "pyproject.toml", "README.md")
# Not copied into the build folder: version control, virtualenvs and outputs of earlier builds. In-place built
# fastbert/_C*.so files *are* copied, so the sdist check below proves MANIFEST.in keeps them out.
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis", ".benchmarks", ".whl", ".gl")

pytestmark = pytest.mark.slow


def _backend(hook: str, cwd: Path, out_dir: Path) -> Path:
    """Run setuptools.build_meta.<hook>(out_dir) in a fresh interpreter in cwd; return the built file."""
    code = ("import sys\nfrom setuptools import build_meta\n"
            f"name = build_meta.{hook}(sys.argv[1])\nprint('BUILT:' + name)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # build only from cwd's sources
    proc = subprocess.run([sys.executable, "-c", code, str(out_dir)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{hook} failed in {cwd}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    built = [line[len("BUILT:"):] for line in proc.stdout.splitlines() if line.startswith("BUILT:")]
    assert len(built) == 1, proc.stdout
    return out_dir / built[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist path, sdist member names relative to its top folder, wheel path, wheel member names)."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "checkout"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    sdist = _backend("build_sdist", src, tmp / "dist")

    with tarfile.open(sdist) as tar:
        top = sdist.name[: -len(".tar.gz")]
        names = tar.getnames()
        assert all(n == top or n.startswith(top + "/") for n in names), names
        sdist_names = {n[len(top) + 1:] for n in names if n != top}
        extract_kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp / "unpacked", **extract_kw)

    # The wheel is compiled from the unpacked sdist alone: a missing header or source fails here.
    wheel = _backend("build_wheel", tmp / "unpacked" / top, tmp / "wheel")
    with zipfile.ZipFile(wheel) as zf:
        wheel_names = set(zf.namelist())
        zf.extractall(tmp / "wheel_unpacked")
    return sdist, sdist_names, wheel, wheel_names, tmp / "wheel_unpacked"


def test_sdist_has_every_source_and_header(built):
    _, names, _, _, _ = built
    repo_csrc = sorted(p.relative_to(ROOT).as_posix()
                       for pattern in ("csrc/*.cpp", "csrc/*.h") for p in ROOT.glob(pattern))
    assert any(n.endswith(".h") for n in repo_csrc) and any(n.endswith(".cpp") for n in repo_csrc)
    missing = [n for n in [*SDIST_NEEDS, *repo_csrc] if n not in names]
    assert not missing, f"not in the sdist: {missing}"
    # The whole Python package and the whole test suite (conftest.py and helpers.py included).
    for folder in ("fastbert", "tests"):
        expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py")
                    if "__pycache__" not in p.parts}
        assert expected <= names, f"not in the sdist: {sorted(expected - names)}"


def test_sdist_has_no_build_outputs_or_checkout_only_parts(built):
    _, names, _, _, _ = built
    unwanted = [n for n in names
                if n.endswith((".so", ".pyc", ".o")) or "__pycache__" in n
                or n.startswith(("csrc/tests", "benchmarks", "build/", "dist/"))]
    assert not unwanted, f"should not be in the sdist: {unwanted}"


def test_wheel_has_extension_and_package_only(built):
    _, _, _, names, _ = built
    ext = [n for n in names if n.startswith("fastbert/_C.") and n.endswith((".so", ".pyd"))]
    assert len(ext) == 1, sorted(names)
    assert "fastbert/__init__.py" in names
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fastbert").rglob("*.py")
                if "__pycache__" not in p.parts}
    assert expected <= names, f"not in the wheel: {sorted(expected - names)}"
    stray = [n for n in names if {"tests", "csrc", "benchmarks"} & set(n.split("/")[:-1])]
    assert not stray, f"should not be in the wheel: {stray}"
    tops = {n.split("/")[0] for n in names} - {"fastbert"}
    assert len(tops) == 1 and tops.pop().endswith(".dist-info"), sorted(names)


def test_wheel_extension_loads(built):
    """Load fastbert._C straight from the unpacked wheel (the .so alone, without importing torch via
    fastbert/__init__.py) and call it."""
    _, _, _, names, unpacked = built
    (so,) = [n for n in names if n.startswith("fastbert/_C.")]
    code = ("import importlib.machinery, importlib.util, sys\n"
            "loader = importlib.machinery.ExtensionFileLoader('fastbert._C', sys.argv[1])\n"
            "spec = importlib.util.spec_from_file_location('fastbert._C', sys.argv[1], loader=loader)\n"
            "m = importlib.util.module_from_spec(spec); loader.exec_module(m)\n"
            "assert all(callable(getattr(m, f)) for f in ('mask_tokens', 'collate', 'build_nsp_pairs'))\n"
            "assert m.derive_seed(1, 2) == m.derive_seed(1, 2) != m.derive_seed(1, 3)\n"
            "print(m.__file__)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(unpacked / so)], cwd=unpacked,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == unpacked / so
