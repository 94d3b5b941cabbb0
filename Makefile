# Two commands on a fresh machine: `make demo` and `make test`. Both install first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DEB_PACKAGES := prometheus

.PHONY: install demo test bench bench-control bench-campaign bench-model model clean deb

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, from the local CPU wheel: a plain or newer torch would pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(MAKE) deb
	touch $(STAMP)

# Debian packages the tests need (a real Prometheus for the monitoring test). Idempotent.
deb:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The agent beside the recipe and SSC on a plant whose seed charge varies (control matters).
demo: install
	$(VENV)/bin/xtalpilot demo scenario=seed_mass_variation

test: install
	$(VENV)/bin/python -m pytest -q

bench: install
	$(VENV)/bin/xtalpilot bench plant

# Every controller on the scenario suite (5 paired seeds; the oracle cache is built on the
# first run and reused); JSON, figure and HTML page in runs/bench_control/.
bench-control: install
	$(VENV)/bin/xtalpilot bench control

# Batch-to-batch learning: 10 batches under a persistent seed-charge error, the campaign's
# recipe-level GP beside the agent alone; JSON and figure in runs/bench_campaign/.
bench-campaign: install
	$(VENV)/bin/xtalpilot bench campaign

# MS-GNN against the flat baselines (about 75 min on 2 cores); JSON also in runs/bench_model/.
bench-model: install
	$(VENV)/bin/xtalpilot bench model

# The default MS-GNN checkpoint (synthetic data, defaults of models/settings.py): a few
# minutes on 2 CPU cores; made once, kept in runs/model/.
MODEL := runs/model/msgnn.safetensors
model: $(MODEL)

$(MODEL): $(STAMP)
	$(VENV)/bin/xtalpilot train

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
