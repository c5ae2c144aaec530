# graft: `make serve` and `make test` each set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GRAFT ?= $(VENV)/bin/graft
BENTOML ?= $(VENV)/bin/bentoml
PORT ?= 3000
ARTIFACTS ?= artifacts
DEFAULT_MODEL := $(ARTIFACTS)/tf_efficientnet_lite0
MODEL ?= $(DEFAULT_MODEL)
DIST ?= dist
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps test test-fast serve default-model bento bench bench-quick duplicates clean

install: $(STAMP)

# The venv is rebuilt when the declared dependencies or the tested pins change.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# uv: `bentoml build` uses it to resolve the Bento's packages offline.
	$(PY) -m pip install -q -c constraints.txt -e ".[train,bench,test,batch]" uv
	touch $@

# Test data from Debian: Fashion-MNIST's idx files.
system-deps: $(FASHION_MNIST)
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

test: install system-deps
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

# The default model: ImageNet EfficientNet-Lite0 from an installed package, exported once.
default-model: $(DEFAULT_MODEL)/manifest.json
$(DEFAULT_MODEL)/manifest.json: | $(STAMP)
	$(GRAFT) export --backbone tf_efficientnet_lite0 --out $(DEFAULT_MODEL) --overwrite

serve: install default-model
	$(GRAFT) serve --model $(DEFAULT_MODEL) --port $(PORT)

# The Bento installs graft's wheel (serving dependencies only) and bundles MODEL from the BentoML
# store; the bentofile copy in $(DIST) names MODEL's store name instead of the default's. The build
# imports the service, whose start-up check then verifies MODEL from the store.
bento: install $(if $(filter $(DEFAULT_MODEL),$(MODEL)),default-model)
	rm -rf $(DIST) && $(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(DIST) .
	tag=$$($(GRAFT) register $(MODEL) | tail -n 1) && name=$${tag%%:*} && \
	  sed -e "s|tf_efficientnet_lite0|$$name|g" -e "s|dist/graft-|$(DIST)/graft-|" bentofile.yaml > $(DIST)/bentofile.yaml && \
	  GRAFT_MODELS=$$tag $(BENTOML) build -f $(DIST)/bentofile.yaml .

bench: install default-model
	$(GRAFT) bench model
	$(GRAFT) bench service

bench-quick: install default-model
	$(GRAFT) bench service --quick

duplicates:
	duplicates --change

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
