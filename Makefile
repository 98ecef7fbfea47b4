# Two commands do all the set-up on a fresh machine:
#   make lab    -> installs the workbench (no test, benchmark or cluster package) into .venv and opens it in JupyterLab
#   make test   -> installs everything (and Debian's Chromium for the browser tests) and runs the whole test suite
# and, once set up:
#   make app    -> the workbench as a Voila app (the lab set)
#   make check  -> the everyday check: the suite without the slow and browser tests (a few minutes)
# Each set has its own stamp, so `make test` after `make lab` installs the rest.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
PIP       := $(BIN)/pip install --disable-pip-version-check -q
LAB_STAMP := $(VENV)/.installed-lab
ALL_STAMP := $(VENV)/.installed-all
PORT      ?= 8888

.PHONY: lab app test check browser

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The package with its own metadata: its dependencies plus the `lab` extra (pyproject.toml).
$(LAB_STAMP): pyproject.toml setup.py | $(BIN)/python
	$(PIP) -e ".[lab]"
	touch $@

# The full set for a checkout: requirements.txt (every extra), then the package itself.
$(ALL_STAMP): requirements.txt pyproject.toml setup.py | $(BIN)/python
	$(PIP) -r requirements.txt
	$(PIP) -e . --no-deps
	touch $@

ROOTFLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

lab: $(LAB_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --port=$(PORT) $(ROOTFLAG) notebooks/workbench.ipynb

app: $(LAB_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/voila notebooks/workbench.ipynb --Voila.ip=127.0.0.1 --port=$(PORT)

# Debian's Chromium for the real-browser test (never `playwright install`: it downloads a browser).
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

# CI's command (.ci/run): the whole suite.
test: $(ALL_STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

check: $(ALL_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not browser" tests
