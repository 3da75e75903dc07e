# diffusionlab — the two commands: `make demo` and `make test`.
# Installs into .venv: the CPU build of torch first (so pip never resolves a multi-GB CUDA build), then the
# project. A GPU user installs their own torch build into .venv first (see README); an installed torch is kept.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# Where plain PyPI would resolve a CUDA build: make TORCH_INDEX=https://download.pytorch.org/whl/cpu ...
TORCH_INDEX ?=
export TMPDIR := $(CURDIR)/.cache/tmp
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor

.PHONY: install install-dev demo test bench clean

$(VENV)/.installed: pyproject.toml
	@mkdir -p $(TMPDIR)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/diffusionlab demo --out demo_out

test: install-dev
	@mkdir -p $(TMPDIR)
	DIFFUSIONLAB_NO_SKIPS=1 $(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) .cache demo_out .pytest_cache
