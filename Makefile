# The README's two commands: `make run` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench bench-smoke clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/backhook init
	$(BIN)/backhook run

# The suite runs once per metadata backend; both runs always happen, and
# either failing fails the target.
test: install
	$(BIN)/pytest --backend=sqlite; sqlite=$$?; \
	$(BIN)/pytest --backend=postgresql; postgresql=$$?; \
	[ $$sqlite -eq 0 ] && [ $$postgresql -eq 0 ]

bench: install
	$(BIN)/python bench/run_all.py

# Every benchmark in its --quick mode: checks the harness, measures nothing.
bench-smoke: install
	$(BIN)/pytest -m bench tests/test_bench_smoke.py

clean:
	rm -rf $(VENV) var *.egg-info
