PY := .venv/bin/python
STAMP := .venv/.doconv_mm-setup

.PHONY: setup test demo lint
.DEFAULT_GOAL := test

setup:
	@bash tools/setup_env.sh

test: setup
	$(PY) -m pytest tests -q

demo: setup
	$(PY) tools/demo.py

lint: setup
	$(PY) -m flake8 doconv_mm tools tests configs
