# diffusionlab — the two commands: `make demo` and `make test`.
# Installs into .venv: the CPU build of torch first (so pip never resolves a multi-GB CUDA build), then the
# project with its dev extra. A GPU user installs their own torch build into .venv before `make install`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
export TMPDIR := $(CURDIR)/.cache/tmp
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	@mkdir -p $(TMPDIR)
	$(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/diffusionlab demo --out demo_out

test: install
	@mkdir -p $(TMPDIR)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .cache demo_out .pytest_cache
