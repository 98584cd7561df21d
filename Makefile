# Two entry points that set everything up on a fresh machine themselves:
#   make sweep   ->  python -m digit_bench.sweep ablations/backbones.yaml   (tiny profile, CPU)
#   make test    ->  python -m pytest
# Variables: PROFILE=smoke|tiny|paper, SWEEP=ablations/<file>.yaml, PYTHON=python3
PYTHON ?= python3
PROFILE ?= tiny
SWEEP ?= ablations/backbones.yaml
VENV := .venv
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: sweep test data
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist, when this is a Debian/Ubuntu machine and we are root.
data:
	@if [ -d $(FASHION) ] || [ -n "$$DIGIT_BENCH_DATA" ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or set DIGIT_BENCH_DATA=<folder with the 4 IDX files>"; fi

sweep: $(VENV)/.installed data
	$(PY) -m digit_bench.sweep $(SWEEP) --profile $(PROFILE)

test: $(VENV)/.installed data
	$(PY) -m pytest -q
