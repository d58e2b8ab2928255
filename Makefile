# Thin driver: every stage is `python -m pipeline <stage>`; this file only passes
# paths and options. Each stage skips itself when its inputs and params are
# unchanged, so re-running `make all` redoes nothing expensive.

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
# The install is redone when pyproject.toml's content (or the extras) changes, not its time: a fresh clone
# or a checkout touches the file without changing what it asks for.
STAMP      := $(VENV)/.installed-$(shell (cat pyproject.toml pipeline/data/kernels.c; echo "$(GPU)") | cksum | cut -d' ' -f1)

DATA      ?= datasets/mnist
LAYOUT    ?= auto
PARAMS    ?= params.toml
# Which run folder a stage works on: RUN= when given, else the run of DATA= when given (runs/<name>),
# else the last one `make prepare` wrote (the stage says which). The rule itself is in Python
# (pipeline/shared/runfolder.py), written once.
RUN       ?=
DATA_GIVEN = $(filter command line environment,$(origin DATA))
RUN_OPT    = $(if $(RUN),--run "$(RUN)",$(if $(DATA_GIVEN),--data "$(DATA)"))
MODEL_OPT  = $(if $(MODEL),--model "$(MODEL)",$(RUN_OPT))
MNIST_DIR ?=
IMAGES    ?=
OUT       ?=
ARGS      ?=
FRESH     ?=
GPU       ?=
SCALE     ?= 20000,100000,200000
comma     := ,
# The full install: the light runtime (the base dependencies) plus training, export and the tests.
EXTRAS    := train$(comma)dev$(comma)export$(comma)ray$(if $(filter 1,$(GPU)),$(comma)gpu)

MNIST_OUT := datasets/mnist
# `make prepare` on the reference dataset exports it first. Without DATA=, prepare takes the data of the
# run (RUN=, else the last prepared one), and the reference dataset only when no run was prepared yet.
PREP_DEPS := $(if $(DATA_GIVEN),$(if $(filter $(MNIST_OUT) $(MNIST_OUT)/,$(DATA)),mnist),$(if $(RUN)$(wildcard runs/.last-run),,mnist))

.PHONY: all setup mnist prepare train evaluate suspects review predict explain export serve preview report compare test test-fast bench clean help
# Stages run in the order given, even under -j.
.NOTPARALLEL:

# `make all` always means the MNIST reference run (DATA passed on: each stage uses its run).
all: setup
	$(MAKE) --no-print-directory prepare train evaluate DATA="$(DATA)"

help:
	@echo "make all | setup | mnist | prepare DATA=.. [LAYOUT=..] | train [FRESH=1] | evaluate | predict IMAGES=.. [OUT=..] [ARGS=..] | explain IMAGE=.. | export [FORMAT=..] | serve [PORT=..] | suspects | preview | report | compare RUNS=.. | test | test-fast | bench | clean"
	@echo "after 'make prepare DATA=x' the other stages use that run; RUN=runs/<name> or DATA=.. picks another"

setup: $(STAMP)

# Rebuilt only when pyproject.toml's or the compiled kernels' source changes (or the venv is missing).
$(STAMP):
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
ifeq ($(GPU),1)
	$(PY) -m pip install -q --force-reinstall --no-deps "tensorflow==$$($(PY) -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))')"
endif
	touch $@

mnist: $(STAMP)
	$(PY) -m pipeline mnist --out $(MNIST_OUT) $(if $(MNIST_DIR),--source $(MNIST_DIR))

prepare: $(STAMP) $(PREP_DEPS)
	$(PY) -m pipeline prepare $(if $(DATA_GIVEN),--data "$(DATA)") --layout $(LAYOUT) $(if $(RUN),--run "$(RUN)") --params $(PARAMS) $(if $(CORRECTIONS),--corrections $(CORRECTIONS))

train: $(STAMP)
	$(PY) -m pipeline train $(RUN_OPT) --params $(PARAMS) $(if $(FRESH),--fresh) $(ARGS)

evaluate: $(STAMP)
	$(PY) -m pipeline evaluate $(RUN_OPT) --params $(PARAMS)

# IMAGES: a folder (walked recursively), one image or a pixel CSV; ARGS: more options,
# e.g. ARGS="--top-k 5 --threshold 0.8 --sort-into sorted --resume". MODEL= applies another bundle.
predict: $(STAMP)
	@test -n "$(IMAGES)" || { echo "usage: make predict IMAGES=<folder|image|pixel csv> [OUT=<file>] [RUN=<run folder>] [ARGS=<options>]" >&2; exit 2; }
	$(PY) -m pipeline predict "$(IMAGES)" $(MODEL_OPT) --params $(PARAMS) $(if $(OUT),--out "$(OUT)") $(ARGS)

# IMAGE: one image; writes <image name>.explain.png (OUT= to choose), prints label, top-k, novelty.
explain: $(STAMP)
	@test -n "$(IMAGE)" || { echo "usage: make explain IMAGE=<image file> [OUT=<png>] [RUN=<run folder>] [ARGS=--method gradcam]" >&2; exit 2; }
	$(PY) -m pipeline explain "$(IMAGE)" $(MODEL_OPT) $(if $(OUT),--out "$(OUT)") $(ARGS)

# http://127.0.0.1:$(PORT)/ : draw or drop images; ARGS e.g. "--host 0.0.0.0 --max-files 32".
PORT      ?= 8000
serve: $(STAMP)
	exec $(PY) -m pipeline serve $(MODEL_OPT) --params $(PARAMS) --port $(PORT) $(ARGS)

# FORMAT: one of `pipeline export --help`'s formats; ARGS e.g. "--quantize dynamic".
FORMAT    ?= tflite
export: $(STAMP)
	$(PY) -m pipeline export $(MODEL_OPT) --format $(FORMAT) $(if $(OUT),--out "$(OUT)") $(ARGS)

# http://127.0.0.1:$(REVIEW_PORT)/ : review suspects, copies, outliers, ...; IMAGES= adds new images to label.
# REVIEW_PORT=, or PORT= as for serve, or 8001.
REVIEW_PORT ?= $(if $(filter command line environment,$(origin PORT)),$(PORT),8001)
review: $(STAMP)
	exec $(PY) -m pipeline review $(RUN_OPT) --port $(REVIEW_PORT) $(if $(IMAGES),--images "$(IMAGES)") $(ARGS)

# Images whose label is probably wrong -> <run>/suspects.csv, suspects.png (ARGS e.g. "--write-corrections").
suspects: $(STAMP)
	$(PY) -m pipeline suspects $(RUN_OPT) --params $(PARAMS) $(ARGS)

preview: $(STAMP)
	$(PY) -m pipeline preview $(RUN_OPT) --params $(PARAMS)

report: $(STAMP)
	$(PY) -m pipeline report $(RUN_OPT)

# RUNS: run folders to put side by side, e.g. RUNS="runs/lenet runs/mlp".
compare: $(STAMP)
	$(PY) -m pipeline compare $(RUNS)

# The full suite (what CI runs), and its quick lane: everything but the end-to-end, browser and
# multi-process tests (marked slow). TEST_WORKERS: test processes (pytest-xdist; 1: one process). Many tests
# wait on subprocesses, servers and clusters, so two processes fill two cores (CI's 2 cores: 11.4 -> ~8 min).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow"

# BENCH: which parts (default all). The trust, export and suspects parts use the reference
# model, so `make bench` first makes sure `make all` has run.
BENCH     ?= stages,accuracy,trust,suspects,export,firsthour,review,multilabel,cluster,imbalance
SEEDS     ?= 1,2,3
bench: all
	$(if $(filter stages,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.bench --data $(MNIST_OUT) --out bench-results --scale $(SCALE))
	$(if $(filter accuracy,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.accuracy --seeds $(SEEDS) --out bench-results)
	$(if $(filter trust,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.trust --model runs/mnist/model --out bench-results)
	$(if $(filter suspects,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.suspects_bench --full --run runs/mnist --out bench-results)
	$(if $(filter export,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.export_bench --model runs/mnist/model --out bench-results)
	$(if $(filter firsthour,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.firsthour --seeds $(SEEDS) --out bench-results)
	$(if $(filter review,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.review_bench --reference runs/mnist --out bench-results)
	$(if $(filter multilabel,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.multilabel_bench --seeds $(SEEDS) --out bench-results && $(PY) -m benchmarks.multilabel_bench --suspects --out bench-results)
	$(if $(filter cluster,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.cluster_bench --images $(lastword $(subst $(comma), ,$(SCALE))) --out bench-results && $(PY) -m benchmarks.cluster_bench --memory $(firstword $(subst $(comma), ,$(SCALE))),$(lastword $(subst $(comma), ,$(SCALE))) --out bench-results)
	$(if $(filter imbalance,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.imbalance_bench --seeds $(SEEDS) --out bench-results)
	$(PY) -m benchmarks.publish --results bench-results --doc docs/benchmarks.md

clean:
	rm -rf runs bench-results .pytest_cache
