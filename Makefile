# Set-up is automatic: every target creates or reuses the project-local virtualenv .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# TORCH_EXTRA=torch installs the tested torch pins; set TORCH_EXTRA= to keep your own CUDA build.
TORCH_EXTRA ?= torch
EXTRAS = dev,sweeps$(if $(TORCH_EXTRA),$(comma)$(TORCH_EXTRA))
comma := ,
DEMO_DIR ?= logs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)

.PHONY: install demo demo-control test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

## The main job end to end on the embedded data: clean SimCLR victim -> BadEncoder ->
## DeDe decoder -> evaluation (results table, results.json, results.md, plots in $(DEMO_DIR)).
demo: install
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/train
	$(PY) evaluate.py run=$(DEMO_DIR)/train hydra.run.dir=$(DEMO_DIR)/eval
	@$(PY) -m dede.report.show $(DEMO_DIR)/eval/results.json

## The demo's clean-victim control: a clean SimCLR victim (the cached one the demo's BadEncoder
## started from) with its own decoder, then every main detector scored on the demo's images with
## both controls (DEMO_DIR=<the demo's folder>).
demo-control: install
	$(PY) train.py experiment=demo attack=clean hydra.run.dir=$(DEMO_DIR)/clean
	$(PY) evaluate.py run=$(DEMO_DIR)/train control_run=$(DEMO_DIR)/clean hydra.run.dir=$(DEMO_DIR)/eval_control \
		"detectors=[dede,dede_ablate,dede_transplant,transplant_occlusion,mahalanobis,feature_norm,isolation_forest]"
	@$(PY) -m dede.report.show $(DEMO_DIR)/eval_control/results.json

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

bench: install
	$(PY) scripts/benchmark.py

clean:
	rm -rf logs multirun outputs .pytest_cache
