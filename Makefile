# Two commands set up a fresh machine: `make run` and `make test` (both install into .venv first).
# What gets installed is requirements.lock: every package of the tested environment at an exact version, with
# hashes. pyproject.toml keeps the human ranges; `make lock` re-resolves them into the lock, on purpose only.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
# The torch/torchvision pair the lock is built around: a CUDA 13 build that also runs on the CPU.
TORCH_LOCKED := torch==2.14.1 torchvision==0.29.1
# Another matching pair (say for another CUDA version) replaces the locked one and what it alone needs
# (triton, nvidia-*, cuda-*); that part is then resolved outside the lock: make install TORCH="torch==2.9.1 torchvision==0.24.1"
TORCH ?=
TORCH_ONLY := ^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==
LOCK_VENV := .venv-lock
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--extra dev --strip-extras --no-emit-index-url --no-emit-find-links --constraint $(LOCK_VENV)/torch.txt pyproject.toml

.PHONY: install run test lock check-lock reproduce-tables clean

install: $(VENV)/.installed

# A new lock means a new environment: the venv is rebuilt, so nothing outside the lock survives in it.
$(VENV)/.installed: $(LOCK) pyproject.toml Makefile
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
ifeq ($(strip $(TORCH)),)
	$(PY) -m pip install --quiet --no-deps --require-hashes -r $(LOCK)
else
	awk '/^[a-z0-9]/ { skip = ($$1 ~ /$(TORCH_ONLY)/) } !skip' $(LOCK) > $(VENV)/without-torch.lock
	$(PY) -m pip install --quiet --no-deps --require-hashes -r $(VENV)/without-torch.lock
	$(PY) -m pip install --quiet $(TORCH)
endif
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

run: install
	$(PY) -m redvtp_eval

test: install
	$(PY) -m pytest -q

$(LOCK_VENV)/.installed:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet pip-tools==7.6.2
	touch $@

$(LOCK_VENV)/torch.txt: Makefile $(LOCK_VENV)/.installed
	printf '%s\n' $(TORCH_LOCKED) > $@

# Re-resolve pyproject.toml's ranges into the lock, keeping every pin that still satisfies them (pass
# UPGRADE=1 to take the newest releases instead). Review the diff and run the fresh-clone check before committing.
lock: $(LOCK_VENV)/torch.txt
	$(PIP_COMPILE) $(if $(UPGRADE),--upgrade) --output-file $(LOCK)

# Fails when pyproject.toml and the lock disagree: resolving again from the lock's own pins must give the lock.
check-lock: $(LOCK_VENV)/torch.txt
	cp $(LOCK) $(LOCK_VENV)/check.lock
	$(PIP_COMPILE) --output-file $(LOCK_VENV)/check.lock
	diff -u $(LOCK) $(LOCK_VENV)/check.lock && echo "$(LOCK) agrees with pyproject.toml"

# The paper's grid (LLaDA-V and LaViDa x ratios x six benchmarks) and the rivals grid (every pruner), then results/tables
# and results/figures. GRIDS=paper_tables (or rivals): one of them. SMOKE=1: the same
# pipeline on the toy model and the offline toy tasks (CPU, minutes). ARGS: Hydra overrides for every job.
reproduce-tables: install
	$(PY) -m redvtp_eval.report.reproduce $(if $(SMOKE),--smoke) $(if $(GRIDS),--grids $(GRIDS)) $(ARGS)

clean:
	rm -rf $(VENV) $(LOCK_VENV) checkpoints/tiny-llada-v checkpoints/tiny-lavida-llada checkpoints/tiny-lavida-dream tasks/data
