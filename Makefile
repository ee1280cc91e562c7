# `make demo` explains the bundled cat photo; `make test` runs the test suite.
# Both create (or reuse) the virtual environment in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= salience-out
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	# captum is a reference implementation for tests and benchmarks; its own pins are not needed
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt captum
	# tf-keras (legacy Keras 2 models) would pull the full tensorflow wheel over tensorflow-cpu's files;
	# quantus, a faithfulness reference for the tests, would pull opencv-python over the headless build
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt \
		tf-keras quantus cachetools pandas opencv-python-headless
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	THP_MEM_ALLOC_ENABLE=1 $(BIN)/salience explain -o $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ifndef RECORD
RECORD := bench/results/$(shell date -u +%Y%m%dT%H%M%SZ)-$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown).json
endif

bench: $(STAMP)
	# pytorch-grad-cam, the CAM peer; without --no-deps it would pull torchvision and another torch
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -c constraints.txt \
		grad-cam ttach opencv-python-headless
	$(BIN)/python bench/methods.py
	$(BIN)/python bench/cams.py
	$(BIN)/python bench/perturbation.py
	# the ratios of this run, one JSON record per run (RECORD=path to choose another)
	$(BIN)/python bench/capture.py --json $(RECORD)
	$(BIN)/python bench/score_cam.py --json $(RECORD)
	$(BIN)/python bench/onnx_runtime.py --json $(RECORD)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
