# prune-run. `make help` lists the targets. Every target creates .venv and installs the package
# (with its dev tools) the first time, so `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast test-lowest lint format bench bench-latency gpu-check gpu-wheels clean reproduce-sap-smoke reproduce-sap reproduce-rd-smoke reproduce-rd reproduce-flow-smoke reproduce-flow reproduce-grda-smoke reproduce-grda reproduce-dns-smoke reproduce-dns reproduce-sapp-smoke reproduce-sapp reproduce-limit-smoke reproduce-limit reproduce-crossword-smoke reproduce-crossword reproduce-halp

help: ## list the targets with what they do and how long they take
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  %-28s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install prune-run with its dev tools (first time: minutes)

demo: $(STAMP) ## the demonstration: LeNet-5 on bundled digits, dense + 3 pruning levels (~15 s)
	$(VENV)/bin/prune-run

test: $(STAMP) ## lint, then the whole test suite on the CPU (6-9 min on 2 cores)
	$(VENV)/bin/ruff check prune_cli tests scripts
	$(VENV)/bin/ruff format --check prune_cli tests scripts
	$(VENV)/bin/pytest -q

test-fast: $(STAMP) ## the tests without the end-to-end CLI runs (under a minute)
	$(VENV)/bin/pytest -q -m "not slow"

# Every dependency at the lower bound pyproject.toml declares (.ci/lowest.txt pins them), in a
# virtual environment of its own: the lower bounds are tested, not guessed.
LOWEST ?= .venv-lowest
$(LOWEST)/.installed-stamp: pyproject.toml .ci/lowest.txt
	python3 -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python -m pip install --quiet -c .ci/lowest.txt -e ".[dev]"
	touch $@

test-lowest: $(LOWEST)/.installed-stamp ## the tests (not slow) with every dependency at its lower bound, in .venv-lowest
	$(LOWEST)/bin/pytest -q -m "not slow"

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check prune_cli tests scripts
	$(VENV)/bin/ruff format --check prune_cli tests scripts

format: $(STAMP) ## format the code with ruff
	$(VENV)/bin/ruff check --fix prune_cli tests scripts
	$(VENV)/bin/ruff format prune_cli tests scripts

bench: $(STAMP) ## prune-run's training step against plain PyTorch loops (CPU ~2-3 min; GPU when present)
	$(PY) scripts/bench_train.py

bench-latency: $(STAMP) ## latency budgets: targets met on 4 networks, accuracy at equal latency on Fashion-MNIST (l1, l1 normalized, taylor, halp), into docs/BENCHMARKS.md (CPU ~45 min)
	$(PY) scripts/bench_latency.py

# On a bare GPU machine: no venv. The system python3 (override: `make gpu-check PY=...`) must
# have torch, torchvision, numpy, pytest, pandas, rich; hydra-core, omegaconf, antlr4 and
# torch-pruning come from wheels in .whl/ (see docs/BENCHMARKS.md), installed into a
# temporary folder that goes on PYTHONPATH with the repository root.
gpu-check: PY = python3
gpu-check: ## on a GPU machine: GPU tests + latency-target/latency/training benchmarks into docs/BENCHMARKS.md (no step starts after 8 min; no venv)
	@set -e; site=""; \
	if ls .whl/*.whl >/dev/null 2>&1; then \
	  site=$$(mktemp -d); \
	  $(PY) -m pip install --quiet --no-index --no-deps --target "$$site" .whl/*.whl; \
	  echo "installed $$(ls .whl/*.whl | wc -l) wheels from .whl/ into $$site"; \
	fi; \
	export PYTHONPATH="$${site:+$$site:}$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}"; \
	status=0; GPU_CHECK_COMMAND="make gpu-check" $(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS) \
	  || status=$$?; \
	[ -z "$$site" ] || rm -rf "$$site"; exit $$status

# The wheels gpu-check installs (pure Python: one set serves every Python 3 the GPU machine has);
# run where PyPI is reachable, then carry .whl/ (ignored by git) with the repository.
gpu-wheels: $(STAMP) ## download into .whl/ the wheels a bare GPU machine lacks for make gpu-check (needs PyPI)
	mkdir -p .whl
	$(PY) -m pip download --quiet --no-deps -d .whl hydra-core==1.3.2 omegaconf==2.3.0 torch-pruning==1.6.1
	$(PY) -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
	@ls .whl

clean: ## remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info

# ---- reproduction of the seed papers -------------------------------------------------------
# Each grid is a sweep preset in prune_cli/conf/sweep/ (`prune-run -m sweep=NAME`); each target runs it
# and writes its report. `-smoke` targets: scaled-down grids on Fashion-MNIST (from
# `apt-get install dataset-fashion-mnist`) on the CPU. The others run the papers' grids: GPU jobs
# that need the datasets under data/ (dataset.download=true fetches CIFAR where there is a
# network; ImageNet must be put there by hand).
RUN := $(VENV)/bin/prune-run
REPORT := $(VENV)/bin/prune-report
RESULTS ?= outputs/results
SEEDS ?= 0 1 2 3 4
SWEEP = $(RUN) -m progress=false
# Hydra's sweep syntax for the seeds: SEEDS="0 1 2" -> seed=0,1,2. The jobs of one seed share
# one dense model (trained once, in $(RESULTS)/dense/; see README "Reports, sweeps and
# reproductions"), so no target trains a dense model by hand.
comma := ,
empty :=
space := $(empty) $(empty)
SEED_LIST = $(subst $(space),$(comma),$(strip $(SEEDS)))

reproduce-sap-smoke: $(STAMP) ## SAP(0.5,1), SAP(1,2), LT, OS on Fashion-MNIST MLP, T=20, 8-epoch rounds, 2 seeds (CPU ~20 min with hydra/launcher=local)
	$(SWEEP) sweep=sap_fmnist_mlp_smoke hydra.sweep.dir=$(RESULTS)/sap_fmnist_mlp/main
	$(SWEEP) sweep=sap12_fmnist_mlp_smoke hydra.sweep.dir=$(RESULTS)/sap_fmnist_mlp/sap_1_2
	$(REPORT) $(RESULTS)/sap_fmnist_mlp -o $(RESULTS)/sap_fmnist_mlp/report

reproduce-sap: $(STAMP) ## the SAP paper's CIFAR-10 grid: CNN T=30, ResNet-18 T=15, 200-epoch rounds, 4 seeds (GPU, days)
	$(SWEEP) sweep=sap_cifar10 hydra.sweep.dir=$(RESULTS)/sap_cifar10/main
	$(SWEEP) sweep=sap_cifar10 method=sap method.p=1.0 method.q=2.0 \
	  hydra.sweep.dir=$(RESULTS)/sap_cifar10/sap_1_2
	$(REPORT) $(RESULTS)/sap_cifar10 -o $(RESULTS)/sap_cifar10/report

reproduce-rd-smoke: $(STAMP) ## recall distortion: MP, GP, UP, RP on Fashion-MNIST LeNet-5, t=2..50, 5 seeds (CPU ~50 min with hydra/launcher=local)
	$(SWEEP) sweep=rd_lenet5_fmnist_smoke seed=$(SEED_LIST) output_root=$(RESULTS) \
	  hydra.sweep.dir=$(RESULTS)/rd_lenet5_fmnist
	$(REPORT) $(RESULTS)/rd_lenet5_fmnist -o $(RESULTS)/rd_lenet5_fmnist/report

reproduce-rd: $(STAMP) ## recall distortion: ResNet-20..110 on CIFAR-10, 4 methods x 5 ratios, 5 seeds (GPU, days)
	$(SWEEP) sweep=rd_cifar10 model=resnet20,resnet32,resnet44,resnet56,resnet110 \
	  seed=$(SEED_LIST) output_root=$(RESULTS) hydra.sweep.dir=$(RESULTS)/rd_cifar10
	$(REPORT) $(RESULTS)/rd_cifar10 -o $(RESULTS)/rd_cifar10/report

reproduce-flow-smoke: $(STAMP) ## early filter pruning: magnitude, loss preservation, GraSP on Fashion-MNIST LeNet-5, 3 seeds (CPU ~15 min)
	$(SWEEP) sweep=flow_fmnist_lenet5_smoke hydra.sweep.dir=$(RESULTS)/flow_fmnist_lenet5
	$(REPORT) $(RESULTS)/flow_fmnist_lenet5 -o $(RESULTS)/flow_fmnist_lenet5/report

reproduce-flow: $(STAMP) ## early filter pruning on CIFAR-10: VGG-13, MobileNet-V1, ResNet-56 x 8 measures, 3 seeds (GPU, days)
	$(SWEEP) sweep=flow_cifar10 hydra.sweep.dir=$(RESULTS)/flow_cifar10
	$(REPORT) $(RESULTS)/flow_cifar10 -o $(RESULTS)/flow_cifar10/report

reproduce-grda-smoke: $(STAMP) ## gRDA on Fashion-MNIST MLP for mu = 0.51, 0.55, 0.6, 0.7, 2 seeds (CPU ~10 min)
	$(SWEEP) sweep=grda_fmnist_mlp_smoke hydra.sweep.dir=$(RESULTS)/grda_fmnist_mlp
	$(REPORT) $(RESULTS)/grda_fmnist_mlp -o $(RESULTS)/grda_fmnist_mlp/report

reproduce-grda: $(STAMP) ## gRDA: VGG-16 and WRN-28-10 on CIFAR-10, 2 seeds (GPU, days)
	$(SWEEP) sweep=grda_cifar10 hydra.sweep.dir=$(RESULTS)/grda_cifar10
	$(REPORT) $(RESULTS)/grda_cifar10 -o $(RESULTS)/grda_cifar10/report

reproduce-dns-smoke: $(STAMP) ## DNS on Fashion-MNIST Caffe LeNet-5 with the paper's per-layer c_rate, 2 seeds (CPU ~20 min)
	$(SWEEP) sweep=dns_fmnist_lenet5_smoke hydra.sweep.dir=$(RESULTS)/dns_fmnist_lenet5
	$(REPORT) $(RESULTS)/dns_fmnist_lenet5 -o $(RESULTS)/dns_fmnist_lenet5/report

reproduce-dns: $(STAMP) ## DNS on MNIST Caffe LeNet-5, the paper's setting, 3 seeds (needs MNIST under data/; CPU hours)
	$(SWEEP) sweep=dns_mnist_lenet5 hydra.sweep.dir=$(RESULTS)/dns_mnist_lenet5
	$(REPORT) $(RESULTS)/dns_mnist_lenet5 -o $(RESULTS)/dns_mnist_lenet5/report

reproduce-sapp-smoke: $(STAMP) ## SA++ vs ACDC vs block magnitude, Fashion-MNIST LeNet-5, 70% and 90% of 4x4 blocks, 3 seeds (CPU ~60 min; H100 ~6 min)
	$(SWEEP) sweep=sapp_fmnist_lenet5_smoke hydra.sweep.dir=$(RESULTS)/sapp_fmnist_lenet5
	$(REPORT) $(RESULTS)/sapp_fmnist_lenet5 -o $(RESULTS)/sapp_fmnist_lenet5/report

reproduce-sapp: $(STAMP) ## SA++, ACDC (16x16 blocks) and block magnitude on ImageNet ResNet-50, SA++'s schedule, 3 seeds (needs ImageNet under data/; GPU, days)
	$(SWEEP) experiment=sapp_resnet50_imagenet,acdc_resnet50_imagenet seed=0,1,2 \
	  hydra.sweep.dir=$(RESULTS)/sapp_resnet50_imagenet
	$(SWEEP) model=resnet50 dataset=imagenet train=imagenet method=block_magnitude \
	  method.block_size=16 method.sparsity=0.9 seed=0,1,2 \
	  hydra.sweep.dir=$(RESULTS)/sapp_resnet50_imagenet/block_magnitude
	$(REPORT) $(RESULTS)/sapp_resnet50_imagenet -o $(RESULTS)/sapp_resnet50_imagenet/report

reproduce-limit-smoke: $(STAMP) ## pruning limit, predicted vs actual: Fashion-MNIST LeNet-5, 4 L1 strengths x 3 seeds (CPU ~3 h; H100 ~4 min)
	$(SWEEP) sweep=limit_fmnist_lenet5_smoke hydra.sweep.dir=$(RESULTS)/limit_fmnist_lenet5
	$(REPORT) $(RESULTS)/limit_fmnist_lenet5 -o $(RESULTS)/limit_fmnist_lenet5/report

reproduce-limit: $(STAMP) ## pruning limit on the paper's four settings (FC5, VGG-16, ResNet-18/50), 1 seed (needs CIFAR under data/; GPU, hours)
	for e in limit_fc5_cifar10 limit_vgg16_cifar10 limit_resnet18_cifar100 limit_resnet50_cifar100; do \
	  $(RUN) experiment=$$e progress=false hydra.run.dir=$(RESULTS)/limit_paper/$$e || exit 1; \
	done
	$(REPORT) $(RESULTS)/limit_paper -o $(RESULTS)/limit_paper/report

CROSSWORD_SEEDS ?= 0 1 2
CROSSWORD_SEED_LIST = $(subst $(space),$(comma),$(strip $(CROSSWORD_SEEDS)))
reproduce-crossword-smoke: $(STAMP) ## Crossword metric search vs L1, FPGM, magnitude, random filter pruning on Fashion-MNIST LeNet-5, 2 rates, 3 seeds (CPU ~30 min)
	$(SWEEP) sweep=crossword_fmnist_lenet5_smoke seed=$(CROSSWORD_SEED_LIST) output_root=$(RESULTS) \
	  hydra.sweep.dir=$(RESULTS)/crossword_fmnist_lenet5
	$(REPORT) $(RESULTS)/crossword_fmnist_lenet5 -o $(RESULTS)/crossword_fmnist_lenet5/report

reproduce-crossword: $(STAMP) ## Crossword search vs L1, FPGM, magnitude, random on ResNet-56 CIFAR-10 at 50%/70% of the filters, 3 seeds; FPGM's own setting (GPU, days)
	$(SWEEP) sweep=crossword_cifar10 seed=$(CROSSWORD_SEED_LIST) output_root=$(RESULTS) \
	  hydra.sweep.dir=$(RESULTS)/crossword_cifar10/sweep
	$(SWEEP) experiment=fpgm_resnet56_cifar10 seed=$(CROSSWORD_SEED_LIST) output_root=$(RESULTS) \
	  hydra.sweep.dir=$(RESULTS)/crossword_cifar10/fpgm
	$(REPORT) $(RESULTS)/crossword_cifar10 -o $(RESULTS)/crossword_cifar10/report

# HALP (Shen et al. 2022; not a seed paper: the reference of method.latency_target's knapsack).
# The first sweep is HALP-80, -55 and -30 (the latency kept), the second the tuned per-layer and
# global rankings at the same measured latencies, each from torchvision's ResNet-50 weights.
reproduce-halp: $(STAMP) ## HALP-80/55/30 latency targets on ImageNet ResNet-50, with the tuned rankings at equal latency, HALP's schedule and channel groups, 1 seed (needs ImageNet under data/; GPU, days)
	$(SWEEP) experiment=halp_resnet50_imagenet method.latency_target=0.8,0.55,0.3 seed=0 \
	  output_root=$(RESULTS) hydra.sweep.dir=$(RESULTS)/halp_resnet50_imagenet/knapsack
	$(SWEEP) experiment=halp_resnet50_imagenet method.latency_target=0.8,0.55,0.3 seed=0 \
	  method.latency_by=fraction method.scope=layer,global \
	  output_root=$(RESULTS) hydra.sweep.dir=$(RESULTS)/halp_resnet50_imagenet/rankings
	$(REPORT) $(RESULTS)/halp_resnet50_imagenet -o $(RESULTS)/halp_resnet50_imagenet/report
