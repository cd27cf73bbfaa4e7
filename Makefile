# Two commands do all set-up on a fresh machine (see README):
#   make run    simulate a cohort, validate it, train, register and serve (the main job)
#   make test   the test suite (what CI runs)
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := True
UV := python3 -m uv

.PHONY: setup run test coverage bench lint

setup:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.9"
	@$(UV) sync --frozen --all-extras --compile-bytecode --quiet

run: setup
	$(UV) run --frozen ontrack demo

test: setup
	$(UV) run --frozen pytest -n 2 --durations=10

coverage: setup
	$(UV) run --frozen pytest -n 2 --cov --cov-report=term:skip-covered

bench: setup
	for b in benchmarks/bench_*.py; do $(UV) run --frozen python $$b || exit 1; done

lint: setup
	$(UV) run --frozen ruff check .
