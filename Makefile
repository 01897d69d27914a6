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

.PHONY: demo test test-fast lint fashion-mnist clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PIP) torch==2.13.0
	touch $@

$(VENV)/.demo: setup.py constraints.txt $(VENV)/.torch
	$(PIP) -c constraints.txt -e '.[track,data]'
	touch $@

$(VENV)/.test: setup.py constraints.txt $(VENV)/.torch
	$(PIP) -c constraints.txt -e '.[track,tp,data,xformers,jobs,bench,dev]'
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
	$(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The inner loop: everything but the multi-process (dist) and slow tests; `make test` (and CI) still runs all of them.
test-fast: $(VENV)/.test fashion-mnist
	$(PY) -m pytest -m "not dist and not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
