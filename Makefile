# Every target creates .venv and installs the project into it when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: search test test-fast demo bench gpu-check lint clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The built-in glyphs at their own 128 px; SPEC=search_spaces/default.yaml runs the spec for any data.
SPEC ?= search_spaces/glyphs-128.yaml

search: $(STAMP)
	$(BIN)/python -m orchestrator.search --config $(SPEC) $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check trainer orchestrator benchmarks tests
	$(BIN)/python -m pytest $(ARGS)

test-fast: $(STAMP)
	$(BIN)/ruff check trainer orchestrator benchmarks tests
	$(BIN)/python -m pytest -m fast $(ARGS)

demo: $(STAMP)
	$(BIN)/python -m trainer.train --data builtin:glyphs --size 64 --epochs 5 --ngf 32 --ndf 32 \
		--max_train_images 1120 --lr_G 1e-3 --lr_D 1e-4 --dropout 0 --out runs/demo-$$(date +%Y%m%d-%H%M%S)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.step $(ARGS)
	$(BIN)/python -m benchmarks.evaluation

gpu-check: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_check

lint: $(STAMP)
	$(BIN)/ruff check trainer orchestrator benchmarks tests

clean:
	rm -rf $(VENV) runs experiments
