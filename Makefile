# Two commands do all the set-up on a fresh machine:
#   make lab    -> installs everything into .venv and opens the workbench in JupyterLab
#   make test   -> installs everything (and Debian's Chromium for the browser test) and runs the whole test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PORT    ?= 8888

.PHONY: lab app test browser

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check -q -e . --no-deps
	touch $(STAMP)

ROOTFLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

lab: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --port=$(PORT) $(ROOTFLAG) notebooks/workbench.ipynb

app: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/voila notebooks/workbench.ipynb --Voila.ip=127.0.0.1 --port=$(PORT)

# Debian's Chromium for the real-browser test (never `playwright install`: it downloads a browser).
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests
