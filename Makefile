# SparseVLM benchmark harness. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint format clean demo demo-check demo-video reproduce-table1 reproduce-video report bench bench-zoo \
	train-tiny train-tiny-video

LIMIT ?=
LAUNCHER ?= local
VERSION ?= 1.5
VIDEO_DATA ?=
VIDEO_VERSION ?= video
EXPERIMENT ?= demo
RESULTS ?= results/runs
DEMO_OUT ?=
TINY_OUT ?= models/tiny-llava
TINY_VIDEO_OUT ?= models/tiny-video-llava
limit_arg = $(if $(LIMIT),limit=$(LIMIT),)
# a continuation stage of the tiny LLaVA: no vision pre-training, short warm-up, every curriculum already at its end
continue_flags = --vision-steps 0 --steps 1500 --lr 1e-3 --warmup 20 --align-frac 0 --ramp-frac 0.001 \
	--dropout-until 0 --dropout-ramp 0.001
# the conf/method file of SparseVLM release VERSION (the one whose options say that version)
sparsevlm_config = $(basename $(notdir $(shell grep -l '^  version: "$(VERSION)"' conf/method/sparsevlm*.yaml)))
video_sparsevlm_config = $(basename $(notdir $(shell grep -l '^  version: "$(VIDEO_VERSION)"' conf/method/sparsevlm*.yaml)))
demo_paths = $(if $(DEMO_OUT),--out $(DEMO_OUT) ,)--results-dir $(RESULTS)

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,harness]"
	$(BIN)/pip install --quiet --no-deps lmms-eval==0.7.3
	echo "$(CURDIR)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/sparsevlm-checkout.pth"
	touch $(STAMP)

install: $(STAMP)  ## create .venv: the library (editable), the harness checkout on its path, Hydra, lmms-eval, W&B, dev tools

test: $(STAMP)  ## run the CPU test suite (installs first if needed)
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## the suite without tests marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)  ## Table 1 on the embedded tiny model + bundled data, offline, CPU, ~4-5 min; tables in results/runs/demo_report/
	$(BIN)/python -m eval.demo $(if $(LIMIT),--limit $(LIMIT) ,)$(demo_paths)

demo-check: $(STAMP)  ## make demo (its committed settings), then compare with results/demo/ (exit 1 if it differs)
	$(BIN)/python -m eval.demo $(demo_paths) --check results/demo

demo-video: $(STAMP)  ## the video row on the embedded tiny Video-LLaVA + bundled synthetic clips, offline, CPU, ~3 min; results/runs/video_demo_report/
	$(BIN)/python -m eval.run experiment=video_demo_dense results_dir=$(RESULTS) $(limit_arg)
	$(BIN)/python -m eval.run experiment=video_demo results_dir=$(RESULTS) $(limit_arg)
	$(BIN)/python -m eval.report --experiment video_demo --results-dir $(RESULTS) --out $(RESULTS)/video_demo_report

train-tiny: $(STAMP)  ## retrain the embedded tiny LLaVA on CPU, all three stages of the committed recipe (~3 h; TINY_OUT=)
	$(BIN)/python scripts/train_tiny_llava.py --out $(TINY_OUT)-stage1 --stop-after 2694 --max-minutes 1000 \
		--eval-per-family 100
	$(BIN)/python scripts/train_tiny_llava.py --out $(TINY_OUT)-stage2 --init-from $(TINY_OUT)-stage1 $(continue_flags) \
		--position-turns 4 --position-aux 1.0 --eval-every 200 --max-minutes 1000 --eval-per-family 100
	$(BIN)/python scripts/train_tiny_llava.py --out $(TINY_OUT) --init-from $(TINY_OUT)-stage2 $(continue_flags) \
		--position-turns 4 --position-aux 1.0 --mention-aux 1.0 --answer-aux 1.0 --eval-every 250 --max-minutes 1000 \
		--eval-per-family 100

train-tiny-video: $(STAMP)  ## fine-tune the embedded tiny Video-LLaVA from the tiny LLaVA on CPU (~1 h; TINY_VIDEO_OUT=)
	$(BIN)/python scripts/train_tiny_video_llava.py --out $(TINY_VIDEO_OUT) --steps 3000 --stop-after 2577 --max-minutes 1000

reproduce-table1: $(STAMP)  ## the paper's Table 1 on LLaVA-1.5-7B (GPU + HF hub; LAUNCHER=slurm, VERSION=, LIMIT=)
	$(BIN)/python scripts/check_table1_prereqs.py --launcher $(LAUNCHER) --version $(VERSION)
	$(BIN)/python -m eval.run experiment=table1_dense launcher=$(LAUNCHER) results_dir=$(RESULTS) $(limit_arg)
	$(BIN)/python -m eval.run experiment=table1 launcher=$(LAUNCHER) results_dir=$(RESULTS) \
		'hydra.sweeper.params.method="$(sparsevlm_config),fastv,random"' $(limit_arg)
	$(BIN)/python -m eval.report --experiment table1 --results-dir $(RESULTS) --reference

reproduce-video: $(STAMP)  ## the paper's video row: Video-LLaVA-7B on MSVD-QA, GPT-judged (GPU + hub + VIDEO_DATA=; VIDEO_VERSION=video; docs/video.md)
	$(BIN)/python scripts/check_table1_prereqs.py --target reproduce-video --launcher $(LAUNCHER) --version $(VIDEO_VERSION) \
		--model LanguageBind/Video-LLaVA-7B-hf --video-data "$(VIDEO_DATA)"
	$(BIN)/python -m eval.run experiment=video_table_dense launcher=$(LAUNCHER) results_dir=$(RESULTS) \
		video_data_dir=$(VIDEO_DATA) $(limit_arg)
	$(BIN)/python -m eval.run experiment=video_table launcher=$(LAUNCHER) results_dir=$(RESULTS) video_data_dir=$(VIDEO_DATA) \
		'hydra.sweeper.params.method="$(video_sparsevlm_config),fastv,random"' $(limit_arg)
	$(BIN)/python -m eval.report --experiment video_table --results-dir $(RESULTS) --reference

bench: $(STAMP)  ## efficiency benchmark on CPU (32-layer shape, interleaved methods); GPU: see docs/efficiency.md
	$(BIN)/python -m eval.bench --shape cpu-32l --repeats 5 --batches 1 4 8

bench-zoo: $(STAMP)  ## the same benchmark for every registered method at 128 and 64 (methods below their floor are listed)
	$(BIN)/python -m eval.bench --shape cpu-32l --repeats 3 --budgets 128 64 --versions 1.5 --baselines all \
		--out results/bench/cpu-32l-zoo-cpu.json

report: $(STAMP)  ## tables + plot for EXPERIMENT=<name> from its records (results/<name>/)
	$(BIN)/python -m eval.report --experiment $(EXPERIMENT) --results-dir $(RESULTS)

clean:  ## remove caches (keeps .venv)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
