# The two set-up commands of the README. Each creates .venv (once) from constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

# Trains ResNet-20 on the offline digits dataset (no network), ~2-3 min on a 2-core CPU.
demo: $(VENV)/.installed
	$(PY) -m experiments.train --config experiments/configs/digits_resnet.py --workdir runs/demo

# The whole test suite (slow-marked checks excluded; `make test PYTEST_ARGS="-m slow"` runs them).
test: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs *.egg-info
