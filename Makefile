# graft: `make serve` and `make test` each set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
GRAFT ?= $(VENV)/bin/graft
BENTOML ?= $(VENV)/bin/bentoml
# `make serve` runs from a venv of its own with the serving dependencies only (no torch); ONNX Runtime's
# GPU build where an NVIDIA driver answers, else its CPU build.
SERVE_VENV ?= .venv-serve
SERVE_RUNTIME ?= $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
PORT ?= 3000
ARTIFACTS ?= artifacts
DEFAULT_MODEL := $(ARTIFACTS)/tf_efficientnet_lite0
MODEL ?= $(DEFAULT_MODEL)
STAMP := $(VENV)/.installed
TRAIN_STAMP := $(VENV)/.installed-train
SERVE_STAMP := $(SERVE_VENV)/.installed-$(SERVE_RUNTIME)
CONTAINER_DEPS := /usr/bin/podman /usr/sbin/runc /usr/sbin/debootstrap
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
COMMA := ,
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install serve-install system-deps container-deps lint test test-fast serve default-model bento image image-gpu \
	bench bench-quick duplicates clean

install: $(STAMP)

# A venv ($(1)) with graft installed editable with extras ($(2)) and further packages ($(3)), at the
# tested pins.
define venv_install
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q -c constraints.txt -e ".[$(2)]" $(3)
endef

# Everything (training, export, benchmarks, tests, Ray). Rebuilt when the declared dependencies or the
# tested pins change. uv: `bentoml build` uses it to resolve the Bento's packages offline.
$(STAMP): pyproject.toml constraints.txt
	$(call venv_install,$(VENV),gpu$(COMMA)train$(COMMA)bench$(COMMA)test$(COMMA)batch,uv)
	touch $@ $(TRAIN_STAMP)

# Enough to export the default model (torch, timm, the weights' package): what `make serve` needs once.
$(TRAIN_STAMP): pyproject.toml constraints.txt
	$(call venv_install,$(VENV),gpu$(COMMA)train)
	touch $@

serve-install: $(SERVE_STAMP)
$(SERVE_STAMP): pyproject.toml constraints.txt
	$(call venv_install,$(SERVE_VENV),$(SERVE_RUNTIME))
	rm -f $(SERVE_VENV)/.installed-* && touch $@

# Test data from Debian: Fashion-MNIST's idx files.
system-deps: $(FASHION_MNIST) container-deps
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# Building and running the container image: Debian's podman, runc (see deploy/container/containers.conf)
# and debootstrap (the base image where no registry is reachable).
container-deps: $(CONTAINER_DEPS)
$(CONTAINER_DEPS):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq podman runc debootstrap uidmap slirp4netns fuse-overlayfs

test: install system-deps lint
	$(PY) -m pytest

# pyflakes (unused imports and names) and import order, then the type checker over the installed
# namespace; both configured in pyproject.toml.
lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy -p graft

test-fast: install
	$(PY) -m pytest -m "not slow"

# The default model: ImageNet EfficientNet-Lite0 from an installed package, exported once.
# Exported by the training venv (the weights are PyTorch's); served by the serving venv.
default-model: $(DEFAULT_MODEL)/manifest.json
# The training venv is made only when the artifact is missing (an order-only prerequisite would be
# made whenever it is missing itself, artifact or not).
$(DEFAULT_MODEL)/manifest.json:
	$(MAKE) --no-print-directory $(TRAIN_STAMP)
	$(GRAFT) export --backbone tf_efficientnet_lite0 --out $(DEFAULT_MODEL) --overwrite

serve: serve-install default-model
	$(SERVE_VENV)/bin/graft serve --model $(DEFAULT_MODEL) --port $(PORT)

# The Bento (graft's wheel, its serving dependencies, MODEL from the BentoML store) and the container
# images built from it; each prints the Bento tag or the image name last. See deploy/container/.
MODEL_DEP = $(if $(filter $(DEFAULT_MODEL),$(MODEL)),default-model)
bento: install $(MODEL_DEP)
	BENTO_ONLY=1 PY=$(PY) deploy/container/image.sh cpu $(MODEL)

image: install container-deps $(MODEL_DEP)
	PY=$(PY) deploy/container/image.sh cpu $(MODEL)

image-gpu: install container-deps $(MODEL_DEP)
	PY=$(PY) deploy/container/image.sh gpu $(MODEL)

bench: install default-model
	$(GRAFT) bench model
	$(GRAFT) bench service

bench-quick: install default-model
	$(GRAFT) bench service --quick

duplicates:
	duplicates --change

clean:
	rm -rf $(ARTIFACTS) .pytest_cache
