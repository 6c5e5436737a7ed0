PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/pipeline: pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints-cpu.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev]"
	touch $(BIN)/pipeline

install: $(BIN)/pipeline

demo: install
	$(BIN)/pipeline run --target jetson --eval digits --out runs/demo --force

test: install
	$(BIN)/python -m pytest -q -n 2 tests  # one worker per core of the 2-core machines

clean:
	rm -rf $(VENV) runs
