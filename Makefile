# Two commands a fresh machine needs: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
OUT     ?= demo_out

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# The pinned CPU build of torch first: a plain `torch` requirement would pull GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[embed,plots,test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" OUT=$(OUT) bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -p no:cacheprovider

bench: setup
	$(BIN)/python bench/bench_core.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
