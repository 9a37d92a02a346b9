# The two commands of the README. Each one builds its own environment first (scripts/setup_env.sh, idempotent).
VENV ?= $(or $(HARNESS_VENV),.venv)
PY := $(VENV)/bin/python
OUT ?= runs/tiny

.PHONY: setup demo test lint bench
setup:
	HARNESS_VENV=$(VENV) bash scripts/setup_env.sh

demo: setup
	$(PY) -m harness run --preset tiny --out $(OUT)

test: setup
	$(PY) -m pytest -q -ra

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/mae_throughput.py
