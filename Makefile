# Quick start: `make demo` (install + main job) and `make test` (install + tests).
# `make doctor`: what this machine has and lacks; `make matrix`: the suite on each Python 3.10-3.13
# present, each in a fresh venv (scripts/matrix.sh; slow: installs torch per interpreter).
PY ?= python3
OUT ?= runs

.PHONY: install demo test bench doctor matrix

install:
	bash scripts/setup.sh

demo: install
	granularity simulate --out $(OUT)/simulate
	granularity study --dataset fashion-mnist --out $(OUT)/study
	granularity study --dataset fashion-mnist --design bridge --seeds 5 --out $(OUT)/bridge

# The tests also cover the optional extras (SLURM via submitit, TensorBoard, MLflow tracking).
TEST_EXTRAS ?= test,ray,inat,slurm,tensorboard,mlflow

test:
	GRANULARITY_EXTRAS=$(TEST_EXTRAS) bash scripts/setup.sh
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	granularity bench --out benchmarks/results

doctor:
	$(PY) -m granularity doctor

matrix:
	bash scripts/matrix.sh
