# Two commands do all the set-up on a fresh machine:
#   make lab    -> installs the workbench (no test, benchmark or cluster package) into .venv and opens it in JupyterLab
#   make test   -> installs everything (and Debian's Chromium and PostgreSQL for the browser and room-ledger tests)
#                  and runs the whole test suite
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

.PHONY: lab app test check browser postgres hub

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

# The server's root is the checkout (README, data, notebooks) and the URL it prints opens the workbench itself.
lab: $(LAB_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --port=$(PORT) $(ROOTFLAG) \
	  --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks/workbench.ipynb --config=workbench/ui/lab_config.py

app: $(LAB_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/voila notebooks/workbench.ipynb --Voila.ip=127.0.0.1 --port=$(PORT)

# Debian's Chromium for the real-browser test (never `playwright install`: it downloads a browser).
browser:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

# Debian's PostgreSQL server programs for the room-ledger tests (tests/room/test_room_ledger.py), which start
# their own throwaway server; no system service is started: a policy-rc.d answering 101 ("not allowed", the
# Debian way) is put in place for the install when the machine has none, and taken away after.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  made=; if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; \
	    chmod +x /usr/sbin/policy-rc.d; made=1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; status=$$?; \
	  [ -z "$$made" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; fi

# CI's command (.ci/run): the whole suite.
test: $(ALL_STAMP) browser postgres
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

check: $(ALL_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not browser" tests

# The workshop room (docs/workshop-room.md): JupyterHub on 127.0.0.1:8000 from deploy/jupyterhub_config.py,
# the room's run queue on a Ray head started here (stopped with the hub; its log in deploy/state/ray-head.log),
# the proxy from npm.
#   WORKBENCH_WORKSHOP_CODE=<code> make hub      (WORKBENCH_INSTRUCTOR=<name>, HUB_CPUS=<runs at once>)
HUB_CPUS  ?= $(shell nproc)
# The head through workbench/room/ray_head.py: every agent port fixed (6380-6383), so its raylet does not wait
# its fixed 15 s for the dashboard agent, which a busy machine misses (ray-project/ray#65983).
CHP       := deploy/node_modules/.bin/configurable-http-proxy
ROOM_STAMP := $(VENV)/.installed-room

$(ROOM_STAMP): pyproject.toml setup.py | $(BIN)/python
	$(PIP) -e ".[lab,room]"
	touch $@

$(CHP):
	npm install --prefix deploy --no-save --no-audit --no-fund --loglevel=error configurable-http-proxy@5

hub: $(ROOM_STAMP) $(CHP)
	@test -n "$$WORKBENCH_WORKSHOP_CODE" || { echo "set the workshop code: WORKBENCH_WORKSHOP_CODE=<code> make hub"; exit 2; }
	mkdir -p $${WORKBENCH_HUB_STATE:-deploy/state}
	$(BIN)/python -m workbench.room.ray_head --port 6379 --cpus 1 --agent-ports 6380 \
	  >$${WORKBENCH_HUB_STATE:-deploy/state}/ray-head.log 2>&1 & \
	  trap "kill $$! 2>/dev/null" EXIT INT TERM; \
	  WORKBENCH_RAY_ADDRESS=127.0.0.1:6379 WORKBENCH_ROOM_LIMIT=$(HUB_CPUS) HF_HUB_OFFLINE=1 \
	  PATH="$(CURDIR)/$(BIN):$$PATH" \
	  $(BIN)/jupyterhub -f deploy/jupyterhub_config.py
