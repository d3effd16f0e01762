# The project's commands. Each runs the one-time setup first (tools/setup_env.sh; a no-op when done).
PY := .venv/bin/python

.PHONY: setup test demo demo-seg bench lint
.DEFAULT_GOAL := test

setup:
	@bash tools/setup_env.sh

# pytest exits 5 when it collected no test: that is a failure here, the suite must hold real tests.
test: setup
	@$(PY) -m pytest tests -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'make test: pytest collected no tests' >&2; fi; exit $$rc

demo: setup
	$(PY) tools/demo.py --task det

demo-seg: setup
	$(PY) tools/demo.py --task seg

bench: setup
	$(PY) tools/benchmark.py --json work_dirs/benchmark.json

lint: setup
	$(PY) -m flake8 doconv_mm tools tests
