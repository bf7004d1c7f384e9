# fastbert: `make test` and `make bench` do all set-up on a fresh machine (virtualenv .venv, dependencies, the C++
# extension), then run. Override PYTHON, VENV or TORCH_SPEC on the command line if needed.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python

# Without a CUDA GPU, pin torch so pip takes the CPU build (a plain `torch` pulls the multi-GB CUDA build). On a
# machine with nvidia-smi, the default CUDA build. Elsewhere add e.g.
#   PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_CUDA),1)
TORCH_SPEC ?= torch
else
TORCH_SPEC ?= torch==2.13.0
endif
PIP_EXTRA ?=

STAMP := $(VENV)/.fastbert-installed
PYTEST_ARGS ?=

.PHONY: test bench bench-quick static compat asan install info clean gpu-build gpu-test gpu-bench gpu-check

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Re-run the install when packaging or C++ sources change (pip install -e rebuilds fastbert._C).
$(STAMP): setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h) | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(PIP_EXTRA) "$(TORCH_SPEC)" "setuptools>=64" "pybind11>=2.12" ninja wheel
	$(VPY) -m pip install -q $(PIP_EXTRA) --no-build-isolation -e ".[test]"
	touch $@

install: $(STAMP)

# -n auto: one pytest worker per core (pytest-xdist); the interpreter-run kernel tests are single-threaded Python
test: $(STAMP)
	$(VPY) -m pytest -q -n auto tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(VPY) benchmarks/run.py
	$(VPY) benchmarks/static_report.py

bench-quick: $(STAMP)
	$(VPY) benchmarks/run.py --quick
	$(VPY) benchmarks/static_report.py --quick

# Static compile report (no GPU needed): registers, spills, shared memory, occupancy, tensor-core and main-loop
# instruction counts of every kernel variant for sm_80..sm_120. STATIC_ARGS e.g. "--targets 80,90 --quick".
STATIC_ARGS ?=
static: $(STAMP)
	$(VPY) benchmarks/static_report.py $(STATIC_ARGS)

# The version floor (pyproject's torch>=2.11, triton>=3.6): the CPU test suite in a second virtualenv with the oldest
# supported pair. PyPI has no CPU build of torch 2.11, so this installs its CUDA build with the NVIDIA libraries
# (about 4 GB; the tests still run on the CPU). Triton 3.6's interpreter needs numpy < 2.3.
COMPAT_VENV ?= .venv-compat
COMPAT_SPEC ?= torch==2.11.0 triton==3.6.0 numpy<2.3
COMPAT_STAMP := $(COMPAT_VENV)/.fastbert-installed
$(COMPAT_STAMP): setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h)
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q $(PIP_EXTRA) $(foreach s,$(COMPAT_SPEC),"$(s)") "setuptools>=64" "pybind11>=2.12" ninja wheel
	$(COMPAT_VENV)/bin/python -m pip install -q $(PIP_EXTRA) --no-build-isolation -e ".[test]" $(foreach s,$(COMPAT_SPEC),"$(s)")
	touch $@

compat: $(COMPAT_STAMP)
	$(COMPAT_VENV)/bin/python -c "import torch, triton, fastbert._C; print('compat: torch', torch.__version__, 'triton', triton.__version__)"
	$(COMPAT_VENV)/bin/python -m pytest -q -n auto tests -p no:cacheprovider $(PYTEST_ARGS)

asan:
	bash csrc/tests/asan.sh

info: $(STAMP)
	$(VPY) -m fastbert.info

# On a GPU machine whose python3 already has torch + triton + pybind11 and no package registry (the lent device):
# build fastbert._C in place (no venv, no downloads), then the GPU-marked tests and/or the benchmark suite.
# gpu-check runs both (the benchmarks run even when a test fails; the exit status is the tests').
GPU_PY ?= python3
GPU_TEST_ARGS ?=
gpu-build:
	$(GPU_PY) setup.py -q build_ext --inplace
	PYTHONPATH=. $(GPU_PY) -m fastbert.info

gpu-test: gpu-build
	PYTHONPATH=. $(GPU_PY) -m pytest -q -m gpu tests -p no:cacheprovider -rf $(GPU_TEST_ARGS)

gpu-bench: gpu-build
	PYTHONPATH=. $(GPU_PY) benchmarks/run.py

gpu-check: gpu-build
	PYTHONPATH=. $(GPU_PY) -m pytest -q -m gpu tests -p no:cacheprovider -rf $(GPU_TEST_ARGS); rc=$$?; \
	PYTHONPATH=. $(GPU_PY) benchmarks/run.py && exit $$rc

clean:
	rm -rf build *.egg-info .venv-compat fastbert/*.so csrc/tests/build
