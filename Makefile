# Thin driver: every stage is `python -m pipeline <stage>`; this file only passes
# paths and options. Each stage skips itself when its inputs and params are
# unchanged, so re-running `make all` redoes nothing expensive.

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

DATA      ?= datasets/mnist
LAYOUT    ?= auto
PARAMS    ?= params.toml
RUN       ?= runs/$(basename $(notdir $(patsubst %/,%,$(DATA))))
MNIST_DIR ?=
IMAGES    ?=
OUT       ?=
ARGS      ?=
FRESH     ?=
GPU       ?=
SCALE     ?= 20000,100000,200000
comma     := ,
EXTRAS    := dev$(comma)export$(if $(filter 1,$(GPU)),$(comma)gpu)

MNIST_OUT := datasets/mnist
# `make prepare` on the reference dataset exports it first.
PREP_DEPS := $(if $(filter $(MNIST_OUT) $(MNIST_OUT)/,$(DATA)),mnist)

.PHONY: all setup mnist prepare train evaluate suspects predict export serve preview report compare test bench clean help
# Stages run in the order given, even under -j.
.NOTPARALLEL:

all: setup $(PREP_DEPS) prepare train evaluate

help:
	@echo "make all | setup | mnist | prepare DATA=.. [LAYOUT=..] | train [FRESH=1] | evaluate | predict IMAGES=.. [OUT=..] [ARGS=..] | export [FORMAT=..] | serve [PORT=..] | preview | report | compare RUNS=.. | test | bench | clean"

setup: $(STAMP)

# Rebuilt only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
ifeq ($(GPU),1)
	$(PY) -m pip install -q --force-reinstall --no-deps "tensorflow==$$($(PY) -c 'import importlib.metadata as m; print(m.version("tensorflow-cpu"))')"
endif
	touch $@

mnist: $(STAMP)
	$(PY) -m pipeline mnist --out $(MNIST_OUT) $(if $(MNIST_DIR),--source $(MNIST_DIR))

prepare: $(STAMP) $(PREP_DEPS)
	$(PY) -m pipeline prepare --data $(DATA) --layout $(LAYOUT) --run $(RUN) --params $(PARAMS) $(if $(CORRECTIONS),--corrections $(CORRECTIONS))

train: $(STAMP)
	$(PY) -m pipeline train --run $(RUN) --params $(PARAMS) $(if $(FRESH),--fresh) $(ARGS)

evaluate: $(STAMP)
	$(PY) -m pipeline evaluate --run $(RUN) --params $(PARAMS)

# IMAGES: a folder (walked recursively), one image or a pixel CSV; ARGS: more options,
# e.g. ARGS="--top-k 5 --threshold 0.8 --sort-into sorted --resume".
predict: $(STAMP)
	@test -n "$(IMAGES)" || { echo "usage: make predict IMAGES=<folder|image|pixel csv> [OUT=<file>] [RUN=<run folder>] [ARGS=<options>]" >&2; exit 2; }
	$(PY) -m pipeline predict "$(IMAGES)" --model "$(RUN)/model" --params $(PARAMS) $(if $(OUT),--out "$(OUT)") $(ARGS)

# http://127.0.0.1:$(PORT)/ : draw or drop images; ARGS e.g. "--host 0.0.0.0 --max-files 32".
PORT      ?= 8000
serve: $(STAMP)
	$(PY) -m pipeline serve --model "$(RUN)/model" --port $(PORT) $(ARGS)

# FORMAT: keras | savedmodel | tflite; ARGS e.g. "--quantize dynamic".
FORMAT    ?= tflite
export: $(STAMP)
	$(PY) -m pipeline export --model "$(RUN)/model" --format $(FORMAT) $(if $(OUT),--out "$(OUT)") $(ARGS)

# Images whose label is probably wrong -> $(RUN)/suspects.csv, suspects.png (ARGS e.g. "--write-corrections").
suspects: $(STAMP)
	$(PY) -m pipeline suspects --run $(RUN) --params $(PARAMS) $(ARGS)

preview: $(STAMP)
	$(PY) -m pipeline preview --run $(RUN) --params $(PARAMS)

report: $(STAMP)
	$(PY) -m pipeline report --run $(RUN)

# RUNS: run folders to put side by side, e.g. RUNS="runs/lenet runs/mlp".
compare: $(STAMP)
	$(PY) -m pipeline compare $(if $(RUNS),$(RUNS),$(patsubst %/metrics.json,%,$(wildcard runs/*/metrics.json)))

test: $(STAMP)
	$(PY) -m pytest -q

# BENCH: which parts (default all). The trust, export and suspects parts use the reference
# model, so `make bench` first makes sure `make all` has run.
BENCH     ?= stages,accuracy,trust,suspects,export
SEEDS     ?= 1,2,3
bench: all
	$(if $(filter stages,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.bench --data $(MNIST_OUT) --out bench-results --scale $(SCALE))
	$(if $(filter accuracy,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.accuracy --seeds $(SEEDS) --out bench-results)
	$(if $(filter trust,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.trust --model runs/mnist/model --out bench-results)
	$(if $(filter suspects,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.suspects_bench --full --run runs/mnist --out bench-results)
	$(if $(filter export,$(subst $(comma), ,$(BENCH))),$(PY) -m benchmarks.export_bench --model runs/mnist/model --out bench-results)

clean:
	rm -rf runs bench-results .pytest_cache
