# Quick start: `make demo` (install + main job) and `make test` (install + tests).
PY ?= python3
OUT ?= runs

.PHONY: install demo test bench

install:
	bash scripts/setup.sh

demo: install
	granularity simulate --out $(OUT)/simulate
	granularity study fashion-mnist --out $(OUT)/study

test: install
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	granularity bench --out benchmarks/results
