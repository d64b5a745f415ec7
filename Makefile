# Teller: `make run` serves the chat on http://127.0.0.1:8000, `make test` runs every test.
# Both do their own set-up on a fresh clone: virtualenv, CPU torch where there is no GPU,
# the embedded default model, and (for tests) Debian's chromium and postgresql.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
# Without a GPU, prefer PyTorch's CPU wheels (200 MB instead of several GB of CUDA) when their
# index is reachable; otherwise pip takes whatever torch its configured indexes offer.
CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_INDEX := $(if $(HAS_GPU),,$(shell curl -s -o /dev/null --max-time 5 $(CPU_INDEX)/ && echo --extra-index-url $(CPU_INDEX)))
CHROMIUM ?= /usr/bin/chromium
PYTEST_ARGS ?=
# Test files run on two workers (pytest-xdist), a file's tests on one worker together: most
# tests wait on a server, a browser or a subprocess, so two cores do about 1.5x the work
# (11.3 against 16.8 minutes on a 2-core box).
TEST_WORKERS ?= 2

.PHONY: run test test-gpu lint typecheck install model browser postgres identity bench-cpu clean help

help:
	@echo "make run   - install what is missing, fetch the default model, serve on http://127.0.0.1:8000"
	@echo "make test  - install what is missing and run the whole test suite"
	@echo "make test-gpu - the tests marked gpu (they need a CUDA GPU; make test leaves them out)"
	@echo "make lint  - ruff"
	@echo "make typecheck - mypy on app/ and training/"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install --quiet $(TORCH_INDEX) "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[train,test]"
	touch $(STAMP)

install: $(STAMP)

model: $(STAMP)
	$(BIN)/teller fetch-default-model

run: model
	$(BIN)/teller serve

browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for browser tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The knowledge tests start a throwaway PostgreSQL cluster from Debian's server binaries.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "installing Debian's postgresql for the PostgreSQL tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# The sign-in tests start a throwaway OpenLDAP (Debian's slapd) and a real OpenID Connect
# provider (npm's oidc-provider, pinned in tests/auth/oidc_provider, run with Node).
OIDC_PROVIDER := tests/auth/oidc_provider
identity:
	@test -x /usr/sbin/slapd || { echo "installing Debian's slapd for the LDAP tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd >/dev/null; }
	@command -v npm >/dev/null || { echo "installing Debian's nodejs and npm for the OIDC tests"; \
		$(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	@test -f $(OIDC_PROVIDER)/node_modules/oidc-provider/package.json || \
		npm ci --silent --no-audit --no-fund --prefix $(OIDC_PROVIDER)

test: model browser postgres identity
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The tests marked `gpu` (CUDA kernels, graphs): `make test` deselects them (pyproject addopts).
test-gpu: model
	$(BIN)/python -m pytest -m gpu -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check app training tests bench

typecheck: $(STAMP)
	$(BIN)/mypy app training

bench-cpu: model
	$(BIN)/python bench/cpu_generate.py

clean:
	rm -rf $(VENV) data

# ---- docker compose (docs/deployment.md) ------------------------------------------------------
# make docker-build [VARIANT=cpu]; make docker-up; make docker-train PRESET=tiny; make docker-down
VARIANT ?= cuda
COMPOSE_FILES := -f docker/compose.yaml $(if $(filter cpu,$(VARIANT)),-f docker/compose.cpu.yaml)
COMPOSE ?= TELLER_IMAGE=teller:$(VARIANT) TELLER_VARIANT=$(VARIANT) docker compose $(COMPOSE_FILES)
PRESET ?= tiny
.PHONY: docker-build docker-up docker-down docker-train

docker/teller.env:
	cp docker/teller.env.example docker/teller.env

docker-build:
	docker build -f docker/Dockerfile --build-arg VARIANT=$(VARIANT) -t teller:$(VARIANT) .

docker-up: docker/teller.env
	$(COMPOSE) up -d teller

docker-down:
	$(COMPOSE) down

docker-train: docker/teller.env
	$(COMPOSE) --profile train run --rm train $(PRESET)
