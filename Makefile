# The project's commands. Each runs the one-time setup first (tools/setup_env.sh; a no-op when done).
PY := .venv/bin/python

.PHONY: setup test test-compat demo demo-seg study bench gpu-check lint
.DEFAULT_GOAL := test

setup:
	@bash tools/setup_env.sh

# pytest exits 5 when it collected no test: that is a failure here, the suite must hold real tests.
test: setup
	@$(PY) -m pytest tests -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'make test: pytest collected no tests' >&2; fi; exit $$rc

# The torch-only core's tests on an older torch: Debian's python3-torch (1.13) in .venv-compat,
# with no OpenMMLab package (so it also checks that doconv_mm imports with torch alone).
test-compat:
	@bash tools/setup_compat_env.sh
	@PYTHONPATH=$(CURDIR) .venv-compat/bin/python -m pytest tests/core -q -p no:cacheprovider

demo: setup
	$(PY) tools/demo.py --task det

demo-seg: setup
	$(PY) tools/demo.py --task seg

# Pretrain a plain backbone, fine-tune stock / DO-Conv head / DO-Conv all over the sized study's
# seeds (19 det, 6 seg), paired comparison (toy data; docs/study.md), each run on 512 new
# validation images, int8 of DO-Conv all vs stock per seed (docs/quantization.md). Reports from
# the committed records (experiments/records/) and trains only what they lack (about 7.5 hours
# on 2 CPU threads from nothing).
study: setup
	$(PY) tools/study.py --noise --int8

bench: setup
	$(PY) tools/benchmark.py --json work_dirs/benchmark.json

# DO-Conv on a CUDA machine: the core's tests on every device and the device benchmark, torch only
# (no setup needed: the machine's python3 with torch and torchvision; files under $$OUT or
# work_dirs/gpu_check/)
gpu-check:
	@bash tools/gpu_check.sh

lint: setup
	$(PY) -m flake8 doconv_mm tools tests benchmarks experiments
