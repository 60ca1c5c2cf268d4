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

# The paper's grid (LLaDA-V and LaViDa x ratios x six benchmarks), then results/tables and results/figures. SMOKE=1: the same
# pipeline on the toy model and the offline toy tasks (CPU, minutes). ARGS: Hydra overrides for every job.
reproduce-tables: install
	$(PY) -m redvtp_eval.reproduce $(if $(SMOKE),--smoke) $(ARGS)

clean:
	rm -rf $(VENV) checkpoints/tiny-llada-v checkpoints/tiny-lavida-llada checkpoints/tiny-lavida-dream tasks/data
