# fusionrank: `make demo` runs the whole nightly pipeline on MovieLens-100k,
# `make test` runs the test suite. Both set up .venv on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATE ?= 1998-04-22
DEMO_DATA := data/raw/movielens-100k

export PYSPARK_PYTHON := $(abspath $(PY))
export PYSPARK_DRIVER_PYTHON := $(abspath $(PY))
export SPARK_LOCAL_IP ?= 127.0.0.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export FUSIONRANK_JARS_DIR ?= $(abspath .jars)

.PHONY: install jars demo data synth test test-cluster test-unit dist clean

install: $(STAMP)

# torch is pinned through constraints/local.txt (the CPU build where a wheel of it lies
# on the machine's disk; otherwise PyPI's CUDA build, which runs on CPU). No pip cache:
# a second ~3 GB copy of torch's wheels on CI's disk helps nothing.
PIP_INSTALL := $(PY) -m pip install -q --disable-pip-version-check --no-cache-dir
$(STAMP): pyproject.toml constraints/local.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -c constraints/local.txt torch==2.13.0
	$(PIP_INSTALL) -c constraints/local.txt -e '.[dev,airflow]'
	touch $(STAMP)

# The Delta Lake and S3A jars, resolved once from Maven Central with Spark's Ivy into
# .jars/ (never committed); sessions then take them from there, offline.
JARS_DIR := $(FUSIONRANK_JARS_DIR)
jars: $(JARS_DIR)/manifest.json

$(JARS_DIR)/manifest.json: lib/fusionrank/core/jars.py | $(STAMP)
	$(PY) -m fusionrank.core.jars fetch
	touch $@

data: $(DEMO_DATA)/events.jsonl

$(DEMO_DATA)/events.jsonl: | $(STAMP)
	$(VENV)/bin/fusionrank data fetch movielens-100k --out $(DEMO_DATA)

# A small synthetic e-commerce shop (images, searches) for conf/synthetic.yaml:
#   make synth && .venv/bin/fusionrank run --conf conf/synthetic.yaml --date $(SYNTH_END_DATE)
SYNTH_DATA := data/raw/synthetic
SYNTH_END_DATE ?= 2026-11-22
SYNTH_ARGS ?= --items 2000 --users 1000 --days 60 --seed 0

synth: $(SYNTH_DATA)/events.jsonl

$(SYNTH_DATA)/events.jsonl: | $(STAMP)
	$(VENV)/bin/fusionrank data synth $(SYNTH_ARGS) --end-date $(SYNTH_END_DATE) --out $(SYNTH_DATA)

demo: install data
	$(VENV)/bin/fusionrank run --conf conf/local.yaml --date $(DEMO_DATE)

test: install jars
	$(VENV)/bin/pytest -q --durations=20

# The cluster tier alone (tests/cluster: object store, master and two workers, whole nights).
test-cluster: install jars
	$(VENV)/bin/pytest -q --durations=20 tests/cluster

test-unit: install
	$(VENV)/bin/pytest -q tests/unit

# The library as a zip for spark-submit --py-files.
dist: install
	rm -rf dist && mkdir -p dist
	cd lib && $(abspath $(PY)) -m zipfile -c ../dist/fusionrank.zip fusionrank
	$(PY) -m pip wheel -q --no-deps -w dist .

clean:
	rm -rf warehouse spark-warehouse dist build .pytest_cache  # .jars/ stays: `rm -rf .jars` to fetch again
