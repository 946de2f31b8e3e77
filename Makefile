# The two set-up commands of the README. Each creates .venv (once) from constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test processes (pytest-xdist); 2 matches the CI machine's cores and halves the suite's time.
PYTEST_WORKERS ?= 2

.PHONY: demo test clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	# aeon only for the UCR/UEA files bundled in its wheel (never imported); its dependencies
	# (numba, pandas<3.1) are not needed and conflict with the pins.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt aeon
	touch $@

# The demo sweep: 6 small ResNets on the offline digits (no network), then the summary table and
# plots in runs/demo_sweep/plots; ~2-4.5 min on a 2-core CPU. Re-running skips finished runs.
demo: $(VENV)/.installed
	$(PY) -m experiments.sweep --config experiments/configs/sweeps/demo.py \
	    --workdir runs/demo_sweep --report

# The whole test suite (slow-marked checks excluded; `make test PYTEST_ARGS="-m slow"` runs them).
test: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs *.egg-info
