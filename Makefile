# Two commands a fresh machine needs: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
OUT     ?= demo_out

.PHONY: setup system-deps demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# The pinned CPU build of torch first: a plain `torch` requirement would pull GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[embed,plots,test]'
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium renders the HTML report in a test (skipped when it cannot be installed).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "note: chromium not installed; the report rendering test will be skipped"

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" OUT=$(OUT) bash scripts/demo.sh

test: setup system-deps
	$(BIN)/python -m pytest -p no:cacheprovider

# Quick sizes; see each script's --help for the full ones (e.g. bench/bench_scale.py --full).
bench: setup
	$(BIN)/python bench/bench_scale.py --quick
	$(BIN)/python bench/bench_tune.py --scale 0.2
	$(BIN)/python bench/bench_baselines.py --scale 0.2
	$(BIN)/python bench/bench_incremental.py
	$(BIN)/python bench/bench_embed.py --n 256

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
