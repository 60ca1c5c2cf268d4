# Two commands set up a fresh machine: `make run` and `make test` (both install into .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision must match (lmms-eval imports torchvision); these two are a CUDA build that also runs on
# the CPU. Any matching pair in the ranges of pyproject.toml works: make install TORCH="torch==2.9.1 torchvision==0.24.1"
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install run test reproduce-tables clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

run: install
	$(PY) -m redvtp_eval

test: install
	$(PY) -m pytest -q

reproduce-tables:
	@echo "make reproduce-tables (the paper grid, tables and figures) is the next issue; nothing to run yet." && exit 1

clean:
	rm -rf $(VENV) checkpoints/tiny-llada-v checkpoints/tiny-lavida-llada checkpoints/tiny-lavida-dream tasks/data
