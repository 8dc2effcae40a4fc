# liverec: the two commands a newcomer needs are `make demo` and `make test`.
# Each sets itself up: a virtualenv at .venv, the package and its dependencies,
# and (through the liverec CLI) a local Kafka broker when no cluster is configured.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench clean system-deps images lock

install: $(STAMP)

# Every dependency installs at the version constraints.txt pins (the set the suite last
# passed with), so a fresh clone builds the same environment next year; the image uses
# the same pins. `make lock` moves them.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing liverec and its dependencies into $(VENV) at the pinned versions" \
	      "(the first time takes a few minutes: torch is large) ..."
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	@touch $@

# New pins: the newest versions pyproject.toml allows, resolved in a scratch virtualenv
# (not .venv), frozen into constraints.txt. Run `make test` on them before committing.
lock:
	@rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[test]'
	@{ sed -n '/^#/p' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable --exclude pip --exclude setuptools --exclude wheel; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt && rm -rf .lock-venv
	@echo "constraints.txt: $$(grep -vc '^#' constraints.txt) pins; now run make test"

# Debian packages the tests use for real parts: a Prometheus server, a headless browser,
# a Docker engine with compose, and debootstrap for the local base image.
system-deps:
	@bash scripts/system-deps.sh

demo: install
	$(BIN)/liverec demo

# ruff check is the lint gate (make test runs it too). The code is not laid out by
# ruff format, so that check, which used to run here with its failure ignored, is gone.
lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -m "not kafka and not slow and not browser and not docker"

# The docker tests (tests/system/test_compose.py, and the Kafka fixture's testcontainers
# path) need a Docker engine: scripts/docker-engine.sh starts one when none answers (root,
# Debian's docker.io) and stops it afterwards; LIVEREC_DOCKER=0 leaves Docker alone.
test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	bash scripts/docker-engine.sh run -- $(BIN)/pytest

# Local stand-ins for the compose stack's images (no registry needed; see README.md).
images:
	bash scripts/build-images.sh

# The trainer's throughput benchmark (issue 9's command, one round; starts a local
# broker unless LIVEREC_KAFKA_BOOTSTRAP is set). Every other benchmark, with its exact
# command and results, is in BENCHMARKS.md.
bench: install
	$(BIN)/python bench/bench_train.py --events 100000 --users 20000 --items 20000 --mixes popularity all

clean:
	rm -rf $(VENV) .lock-venv .pytest_cache .mypy_cache .ruff_cache build *.egg-info
