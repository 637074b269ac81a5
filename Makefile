# Switchboard: `make run` starts the gateway, `make test` runs the tests.
# Both create .venv and install everything on first use; nothing else is needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-real lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bot serve

# Two phases, one coverage report: the in-process tests on TEST_WORKERS pytest-xdist workers
# (the Redis Cluster tests together on one), then the `serial` ones (processes, kills,
# deadlines; see tests/conftest.py) one at a time, beside the few that only wait out a timeout
# (a second worker). A phase that selects no test fails (pytest's exit 5).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup -m "not serial" --cov --cov-report=
	$(BIN)/pytest -n 2 --dist loadgroup -m serial --cov --cov-append --cov-report=term:skip-covered

# Builds llama.cpp's llama-server and fetches a small model into var/real/ (minutes, once),
# then runs the tests that talk to it.
test-real: $(STAMP)
	tests/real/prepare.sh
	$(BIN)/pytest -m real

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench.turncost
	$(BIN)/python -m bench.turncost --rate 300 --returning --idle 1
	$(BIN)/python -m bench.redisload
	$(BIN)/python -m bench.rediswork --aof
	$(BIN)/python -m bench.rediswork --aof --returning
	$(BIN)/python -m bench.failover
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.lmstudio
	$(BIN)/python -m bench.scaleout
	$(BIN)/python -m bench.sweep
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.reminders
	$(BIN)/python -m bench.streaming

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage *.egg-info
