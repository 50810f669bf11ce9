# Two entry points: `make demo` (the main job) and `make test` (`make test-fast`: the quick tier). All create .venv if missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.clipforge-installed

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU torch wheel first: a bare torch requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# OMP_WAIT_POLICY=PASSIVE: waiting OpenMP threads sleep instead of spinning, so a program holding one
# of the two cores does not make them spin against it (it slowed the one-process, two-thread training
# ~1.5x instead of ~3x: benchmarks/results/demo_recipe_2026-12-01.md; training now runs in two
# processes of one thread, the evaluation still on two threads).
demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m clipforge demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast tier: unit and golden tests in one process (no subprocesses, servers or browsers), < 3 min.
test-fast: $(STAMP)
	CLIPFORGE_TEST_TIER=fast $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf runs build dist src/*.egg-info
