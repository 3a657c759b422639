# The two commands of the README:
#   make demo   the main job: synthetic data -> teacher -> compressed student -> ONNX ->
#               the node on a replayed bag -> report (runs/demo/)
#   make test   the test suite (what .ci/run calls)
# Both create or refresh the virtual environment first (scripts/bootstrap.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo test benchmark clean

env:
	@bash scripts/bootstrap.sh

demo: env
	@$(VENV)/bin/evit demo --out runs/demo

test: env
	@bash scripts/run_tests.sh

benchmark: env
	@$(PY) scripts/benchmark_node.py

clean:
	rm -rf build runs .pytest_cache
