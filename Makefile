# Two commands set up a fresh machine: `make run` and `make test` (both install into .venv first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The default torch is the CPU build this workplace keeps on disk; on a GPU machine use e.g. TORCH=torch==2.13.0
# from PyPI (a CUDA build) or any torch in the range pyproject.toml allows.
TORCH ?= torch==2.13.0
TINY := checkpoints/tiny-llada-v

.PHONY: install run test reproduce-tables clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

$(TINY)/config.json: $(VENV)/.installed
	$(PY) -m redvtp_eval.models.make_tiny $(TINY)

run: install $(TINY)/config.json
	$(PY) -m redvtp_eval.generate --model $(TINY) --ratio 0.5

test: install
	$(PY) -m pytest -q

reproduce-tables:
	@echo "make reproduce-tables arrives with the harness and tables issues; nothing to run yet." && exit 1

clean:
	rm -rf $(VENV) $(TINY)
