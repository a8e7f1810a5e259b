# The two commands of the README: `make demo` (install + run the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch from PyPI is the CUDA build on Linux x86_64; `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# asks for the CPU-only build (rlscale trains and serves on the CPU)
TORCH_INDEX ?=

.PHONY: install demo test bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlscale demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(PY) benchmarks/perf/sim_throughput.py
	$(PY) benchmarks/perf/train_speed.py
	$(PY) benchmarks/perf/decide_latency.py
