# The two commands of the README:
#   make demo   the main job: synthetic data -> teacher -> compressed student -> ONNX ->
#               the node on a replayed bag -> report (runs/demo/)
#   make test   the test suite (what .ci/run calls)
# Both create or refresh the virtual environment first (scripts/bootstrap.sh, idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo test benchmark clean default-model bench-data-free

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

# The bundled default model: the compress_default run (about 75 min on 2 CPU cores), then its
# pruned FP32 stage and INT8 stage copied into models/ with the run's report.
default-model: env
	$(VENV)/bin/evit compress training/configs/compress_default.yaml
	cp runs/compress_default/finetune/model.onnx models/evit_student_default.onnx
	cp runs/compress_default/quantize/model_int8.onnx models/evit_student_default_int8.onnx
	cp runs/compress_default/report.json models/evit_student_default.json
	cp runs/compress_default/report.md models/evit_student_default.md
	cp runs/compress_default/report.png models/evit_student_default.png

# Data-free KD benchmark (four arms, digits and synthetic detection; about 25 min on 2 cores).
bench-data-free: env
	nice -n 10 $(PY) benchmarks/data_free_kd.py
