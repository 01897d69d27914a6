# The README's two commands: `make demo` (the MAE -> WSP pipeline on Fashion-MNIST, CPU, local MLflow store)
# and `make test` (the test suite). Each installs what it needs into .venv; torch==2.13.0 goes first because a
# plain `torch` requirement would pull the CUDA build and GBs of nvidia-* wheels on a CPU machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
FASHION_MNIST := /usr/share/datasets/fashion-mnist
DEMO_DATA := data/fmnist-mosaic
MAWS := $(VENV)/bin/maws-scale
PYTEST_ARGS ?=
# pytest-xdist workers: whole files go to each (heaviest first, tests/conftest.py), so a file's module fixtures and
# in-order tests stay on one worker. On the 2-core CI machine 3 workers keep both cores busy while a worker waits on
# the ranks it launched; `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 3
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: demo test test-fast lint fashion-mnist clean gpu-wheels

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PIP) torch==2.13.0
	touch $@

# The package and its extras go in with uv (pinned in constraints.txt): it unpacks and byte-compiles in parallel, 21-22 s
# where pip took 73 s on the 2-core CI machine (uv's cache cold, pip's warm). uv does not read pip's configuration (index,
# find-links), so torch, the one package that needs it here (a local CPU wheel), goes in with pip first; uv sees it
# installed and keeps it. Behind a mirror that only pip is configured for, or without uv: make demo INSTALLER=pip
# (or UV_INDEX_URL=...).
INSTALLER ?= uv
ifeq ($(INSTALLER),uv)
INSTALL = $(PIP) -c constraints.txt uv && $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY)
else ifeq ($(INSTALLER),pip)
INSTALL = $(PIP)
else
$(error INSTALLER is '$(INSTALLER)'; use uv or pip)
endif

$(VENV)/.demo: setup.py constraints.txt $(VENV)/.torch
	$(INSTALL) -c constraints.txt -e '.[track,data]'
	touch $@

$(VENV)/.test: setup.py constraints.txt $(VENV)/.torch
	$(INSTALL) -c constraints.txt -e '.[track,tp,data,xformers,jobs,bench,dev]'
	touch $@

fashion-mnist:
	@test -d $(FASHION_MNIST) || [ "$$(id -u)" = 0 ] || { echo "$(FASHION_MNIST) is missing and installing \
	dataset-fashion-mnist needs root: put the four Fashion-MNIST .gz files in a folder and run \
	make demo FASHION_MNIST=/that/folder" >&2; exit 1; }
	@test -d $(FASHION_MNIST) || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

# The demo data set, built once: 20k noisy 2x2 mosaics with 20 % label noise (pretraining) and clean single images
# for the frozen-feature probes (probe-train: 4k of the train split, probe-test: 2.5k of the test split).
$(DEMO_DATA)/.built: | $(VENV)/.demo fashion-mnist
	$(MAWS) data build --source fashion-mnist --input $(FASHION_MNIST) --output $(DEMO_DATA)/train \
		--split train --variant mosaic --noise 0.2 --limit 20000 --workers 2
	$(MAWS) data vocab $(DEMO_DATA)/train --min-count 1
	$(MAWS) data build --source fashion-mnist --input $(FASHION_MNIST) --output $(DEMO_DATA)/probe-train \
		--split train --variant single --limit 4000
	$(MAWS) data build --source fashion-mnist --input $(FASHION_MNIST) --output $(DEMO_DATA)/probe-test \
		--split test --variant single --limit 2500
	touch $@

demo: $(VENV)/.demo fashion-mnist $(DEMO_DATA)/.built
	$(MAWS) pipeline configs/demo.yaml

test: $(VENV)/.test fashion-mnist
	$(PYTEST) $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The inner loop: everything but the multi-process (dist) and slow tests; `make test` (and CI) still runs all of them.
test-fast: $(VENV)/.test fashion-mnist
	$(PYTEST) -m "not dist and not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The wheels the lent GPU machine lacks (its python3 has torch, numpy, pyarrow, ... but no deepspeed, pydantic,
# megatron-core, torchao, pytest): downloaded for CPython $(GPU_WHEELS_PY) manylinux x86_64, deepspeed built here as a
# pure-Python wheel (ops left to JIT). benchmarks/gpu_check.sh installs them with pip --no-index --no-deps --target.
# A CPU stand-in passes its own interpreter's version: make gpu-wheels GPU_WHEELS_PY=3.11
GPU_WHEELS_PY ?= 3.12
GPU_WHEELS ?= benchmarks/gpu_wheels/py$(GPU_WHEELS_PY)
GPU_WHEELS_PKGS := hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5 torchao==0.18.0 megatron-core==0.16.1 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
GPU_WHEELS_DEEPSPEED := deepspeed==0.19.8

$(GPU_WHEELS)/.built: Makefile $(VENV)/.torch
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version $(GPU_WHEELS_PY) --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
		--dest $(GPU_WHEELS) $(GPU_WHEELS_PKGS)
	DS_BUILD_OPS=0 $(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
		--no-binary deepspeed --wheel-dir $(GPU_WHEELS) $(GPU_WHEELS_DEEPSPEED)
	@du -ch $(GPU_WHEELS)/*.whl | tail -1 | sed 's|total|in $(GPU_WHEELS)|'
	touch $@

gpu-wheels: $(GPU_WHEELS)/.built

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
