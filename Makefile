# `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# This release lies in the local wheel store of our machines; elsewhere override, e.g.
# `make install TORCH="torch torchvision"`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
FASHION_DIR := /usr/share/datasets/fashion-mnist
FORTUNES_DIR := /usr/share/games/fortunes
AUSTEN_ROOT := $(HOME)/.cache/deeprecipe/r-cran-janeaustenr
AUSTEN_DB := usr/lib/R/site-library/janeaustenr/data/Rdata
ARGS ?=

.PHONY: install data run test test-full lint format bench clean

install: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,sweep]'
	@# compiled bytecode makes the stack import in ~6 s instead of ~17 s
	$(PY) -m compileall -q -j 0 $(VENV)/lib src > /dev/null || true
	touch $(STAMP)

# Real data from Debian packages: Fashion-MNIST (images), fortunes and Jane Austen's novels
# (text). The Austen package depends on R, which is not needed: it is fetched with
# `apt-get download` and unpacked with `dpkg -x` into $(AUSTEN_ROOT).
data:
	@missing=""; \
	[ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ] || missing="$$missing dataset-fashion-mnist"; \
	[ -f $(FORTUNES_DIR)/fortunes ] || missing="$$missing fortunes"; \
	if [ -z "$$missing" ]; then \
		echo "Data found: $(FASHION_DIR), $(FORTUNES_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		(apt-get install -y -qq $$missing > /dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq $$missing)) && \
		echo "Installed:$$missing"; \
	else \
		echo "Missing Debian packages:$$missing. Install them with sudo apt-get install$$missing,"; \
		echo "or download Fashion-MNIST's idx files (github.com/zalandoresearch/fashion-mnist) and"; \
		echo "run with data.root=THEIR_FOLDER; any UTF-8 text works with data=fortunes data.path=FILE."; \
	fi
	@if [ -f $(AUSTEN_ROOT)/$(AUSTEN_DB).rdb ] || [ -f /$(AUSTEN_DB).rdb ]; then \
		echo "Data found: Jane Austen's novels (r-cran-janeaustenr)"; \
	elif command -v apt-get > /dev/null && command -v dpkg > /dev/null; then \
		tmp=$$(mktemp -d) && \
		(cd $$tmp && (apt-get download -qq r-cran-janeaustenr > /dev/null 2>&1 || \
		  (apt-get update -qq > /dev/null 2>&1; apt-get download -qq r-cran-janeaustenr))) && \
		mkdir -p $(AUSTEN_ROOT) && dpkg -x $$tmp/r-cran-janeaustenr_*.deb $(AUSTEN_ROOT) && \
		rm -rf $$tmp && echo "Unpacked r-cran-janeaustenr into $(AUSTEN_ROOT)" || \
		echo "Could not fetch r-cran-janeaustenr: data=austen is unavailable (the rest works)."; \
	else \
		echo "No apt-get: data=austen needs the R package janeaustenr (data.austen_dir=ITS_FOLDER)."; \
	fi

run: install
	$(PY) run.py $(ARGS)

test: install
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-full: install
	$(PY) -m pytest -q $(ARGS)

lint: install
	$(VENV)/bin/ruff check src tests run.py
	$(VENV)/bin/ruff format --check src tests run.py
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format src tests run.py
	$(VENV)/bin/ruff check --fix src tests run.py

bench: install
	$(PY) -m deeprecipe.bench

clean:
	rm -rf logs .pytest_cache .ruff_cache .mypy_cache
