# Set-up and the two commands of README.md. Everything a fresh machine needs is installed from here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,bench,sim,train,export,bags,view,ros2
STAMP := $(VENV)/.installed

.PHONY: run test venv bench-transport fuzz clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build on local disk, so no extra ever pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	# seed 56: an eval-split hallway (never trained on); other seeds and the success rate: docs/runtime.md
	$(BIN)/oniwm run --config configs/hallway.yaml --seed 56

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench-transport: $(STAMP)
	$(BIN)/oniwm bench transport --json bench-transport.json

fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz_decoder.py --seconds 300

clean:
	rm -rf $(VENV) build *.egg-info
