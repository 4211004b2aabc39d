# rankhouse: `make demo` runs the flagship search on the embedded default; `make test` runs the tests.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rankhouse-installed

.PHONY: setup demo test test-fast base clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m platform.tune search_spaces/techhouse.yaml --json runs/techhouse/summary.json

test: $(STAMP)
	bash scripts/test_packages.sh
	$(PY) -m pytest -q --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

base: $(STAMP)
	$(PY) -m platform.base

clean:
	rm -rf runs mlruns .pytest_cache
