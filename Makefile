# RoadSeg. Every target depends on `setup`, which is idempotent and quick when nothing is missing.
PY := .venv/bin/python
DATA ?= ../shared/data/massachusetts-roads/train
QGIS_PROFILE ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default

.PHONY: setup lint test test-fast demo bench evaluate robustness adapt package install-plugin clean

setup:
	@bash scripts/setup.sh

lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

# Both print their wall time (and the 10 slowest tests). `make test` runs the fast tests, then the slow
# ones (two pytest runs: each time is one run of those tests). ARGS: more pytest arguments, e.g.
# ARGS="tests/core -x".
test: setup
	@bash scripts/test.sh all $(ARGS)

test-fast: setup
	@bash scripts/test.sh fast $(ARGS)

demo: setup
	$(PY) scripts/demo.py

# LARGE: side of the real-tile mosaic `bench large` segments (50000: about 40 min on 2 cores; 8000 for a quick check)
LARGE ?= 50000

bench: setup
	$(PY) -m bench
	$(PY) -m bench region
	$(PY) -m bench train
	$(PY) -m bench large --size $(LARGE)

evaluate: setup
	$(PY) -m training evaluate --data $(DATA) --json out.json

robustness: setup
	$(PY) -m training robustness --data $(DATA) --json robustness.json \
		--ood mass-extra=$(DATA)/../extra:1.0 --ood japan=$(DATA)/../../gsi-japan-roads:0.2 \
		--ood shanghai=$(DATA)/../../spacenet3-shanghai:0.76

# fine-tune on 8 digitised tiles of each out-of-domain set for 10 CPU minutes, score the rest (model card table)
adapt: setup
	$(PY) -m training adapt-bench --data ../shared/data --json adapt.json

package: setup
	$(PY) scripts/package.py

# the plugin into the profile, enabled, and the Python packages for QGIS's Python (/usr/bin/python3)
# into PROFILE/python/roadseg-packages/py3.X: PACKAGES=cpu (default), training or none
install-plugin: package
	$(PY) scripts/install_plugin.py --profile "$(QGIS_PROFILE)" --packages "$(or $(PACKAGES),cpu)"

clean:
	rm -rf dist build .pytest_cache demo_output

# The GPU check (docs/GPU.md), no `setup`: on the GPU machine `make gpu-check OUT=$OUT` with wheels/
# carried (scripts/gpu_wheels.sh fills it here); `make gpu-check OUT=DIR REHEARSAL=1` rehearses it on the CPU.
.PHONY: gpu-check
gpu-check:
	bash scripts/gpu_check.sh $(if $(REHEARSAL),--cpu-rehearsal) $(if $(SIZE),--size $(SIZE)) "$(or $(OUT),$(error make gpu-check OUT=DIR))"
