# Set-up is automatic: every target creates or reuses the project-local virtualenv .venv.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# TORCH_EXTRA=torch installs the tested torch pins; set TORCH_EXTRA= to keep your own CUDA build.
TORCH_EXTRA ?= torch
EXTRAS = dev,sweeps$(if $(TORCH_EXTRA),$(comma)$(TORCH_EXTRA))
comma := ,
DEMO_DIR ?= logs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)

.PHONY: install demo demo-all test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

install: $(VENV)/.installed

## The main job end to end on the embedded data, offline on CPU: a clean SimCLR victim ->
## BadEncoder -> its DeDe decoder; the clean victim (cached, the one BadEncoder started from) with
## its own decoder as the control; then the paper's score (dede) and the backdoor-specific
## transplant test (transplant_occlusion, the main detector) with both controls. Report, plots and
## scores in $(DEMO_DIR)/eval.
DEMO_EVAL = eval.n_test=1000 eval.downstream.n_train=3000
demo: install
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/train
	$(PY) train.py experiment=demo attack=clean hydra.run.dir=$(DEMO_DIR)/clean
	$(PY) evaluate.py run=$(DEMO_DIR)/train control_run=$(DEMO_DIR)/clean hydra.run.dir=$(DEMO_DIR)/eval \
		"detectors=[dede,transplant_occlusion]" eval.main_detector=transplant_occlusion $(DEMO_EVAL)
	@$(PY) -m dede.report.show $(DEMO_DIR)/eval/results.json

## Every detector on a finished demo's runs, with both controls (DEMO_DIR=<the demo's folder>).
demo-all: install
	$(PY) evaluate.py run=$(DEMO_DIR)/train control_run=$(DEMO_DIR)/clean hydra.run.dir=$(DEMO_DIR)/eval_all \
		detectors=all eval.main_detector=transplant_occlusion $(DEMO_EVAL)
	@$(PY) -m dede.report.show $(DEMO_DIR)/eval_all/results.json

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

bench: install
	$(PY) scripts/benchmark.py

clean:
	rm -rf logs multirun outputs .pytest_cache
