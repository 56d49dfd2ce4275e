# Two commands on a fresh machine: `make serve` and `make test`. Both build .venv from the package registries.
PYTHON ?= python3
VENV ?= .venv
# torch is pinned through constraints.txt: an unpinned torch pulls several GB of CUDA packages.
PIP = $(VENV)/bin/pip install --quiet --constraint constraints.txt
# Strict editable: the venv sees exactly the files pyproject.toml packages (a link tree under build/), mapped as
# the wheel maps them, so a file left out of the package fails here first rather than in a user's install.
EDITABLE = --config-settings editable_mode=strict --editable
# A strict editable install sees edits to its files but not new or removed ones: it is redone when the list of
# packaged files changes (the list is rewritten only then, so its date says when).
PACKAGE_FILES := $(sort $(shell find src service training engines/cxr-default -type f -not -path '*/__pycache__/*' 2>/dev/null))

.PHONY: serve test lint screenshot train-default clean FORCE

$(VENV)/bin/pip:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.package-files: FORCE | $(VENV)/bin/pip
	@echo '$(PACKAGE_FILES)' | cmp -s - $@ || echo '$(PACKAGE_FILES)' > $@

# The serving install: no torch, no diffusers.
$(VENV)/.serve-installed: pyproject.toml constraints.txt $(VENV)/.package-files
	$(PIP) $(EDITABLE) .
	touch $@

# The test install adds the train, dev and ray extras (tests/service/test_batch_ray.py runs a local Ray instance).
$(VENV)/.test-installed: pyproject.toml constraints.txt $(VENV)/.package-files
	$(PIP) $(EDITABLE) '.[train,dev,ray]'
	touch $@ $(VENV)/.serve-installed

# Loopback by default; `XRAYSR_API_KEY=<key> make serve SERVE_ARGS="--host 0.0.0.0"` to accept other machines.
serve: $(VENV)/.serve-installed
	$(VENV)/bin/xraysr serve --engines-dir engines --model cxr-default --port 8000 $(SERVE_ARGS)

test: $(VENV)/.test-installed
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check src service training tests docs/scripts
	$(VENV)/bin/mypy -p xraysr.service

# The README's picture of the web page: the browser test saves it (needs Debian's chromium + chromium-driver).
screenshot: $(VENV)/.test-installed
	XRAYSR_SCREENSHOT=docs/images/web_page.png $(VENV)/bin/python -m pytest tests/service/test_web.py

# Reproduces the shipped model from the four training sources in ../shared/data (docs/RESULTS.md has the numbers).
SOURCES = $(foreach source,nih_starter nih cxr pediatric,--source $(source)=../shared/data/$(source))
train-default: $(VENV)/.test-installed
	$(VENV)/bin/xraysr prepare $(SOURCES) --views all --out runs/data/all --seed 0
	$(VENV)/bin/xraysr train-vae --config configs/vae_all.yaml
	$(VENV)/bin/xraysr train --config configs/sr_all.yaml
	$(VENV)/bin/xraysr train --config configs/sr_all_6k.yaml --resume runs/sr_all/checkpoints/step_0004000.pt
	$(VENV)/bin/xraysr export --checkpoint runs/sr_all_6k/checkpoints/step_0006000.pt --out runs/engines/v6k/cxr-default \
		--model cxr-default --version cxr-default-2.1.1 --final-timestep 400 --default-samples 4

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
