# The README's two commands are `make run` and `make test`.  `make test` installs everything its
# tests need (idempotently, each step skipped when its result is already there): the project's
# virtualenv, the Debian packages of the servers the tests start (Prometheus, Alertmanager, Redis,
# ClickHouse, Chromium and its driver; Go and the sprig template library, to render the Helm chart), and
# Arize Phoenix, MLflow and the agent frameworks, each in its own virtualenv under .servers/ so our
# dependencies stay clean.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SERVERS ?= .servers
# Debian package:the binary (or, for a library, the file) that shows it is installed
GOPATH_DEBIAN := /usr/share/gocode
DEBIAN_PACKAGES := prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager \
                   redis-server:redis-server clickhouse-server:clickhouse-server \
                   chromium:chromium chromium-driver:chromedriver golang-go:go \
                   golang-github-masterminds-sprig-dev:$(GOPATH_DEBIAN)/src/github.com/Masterminds/sprig/functions.go \
                   golang-gopkg-yaml.v3-dev:$(GOPATH_DEBIAN)/src/gopkg.in/yaml.v3/yaml.go

.PHONY: run test setup test-deps debian-deps lint typecheck bench

$(BIN)/agent-sre: pyproject.toml setup.py pipeline/pdata/_otlp_decode.c pipeline/pdata/_otlp_encode.c \
                  pipeline/pdata/_otlp_json.c pipeline/pdata/_normalize.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/agent-sre

run: setup
	$(BIN)/agent-sre run

# Debian packages: installed only when a binary is missing (apt-get as root, else through sudo).
debian-deps:
	@missing=""; for pb in $(DEBIAN_PACKAGES); do t=$${pb#*:}; \
	  if [ "$${t#/}" != "$$t" ]; then [ -e "$$t" ]; else command -v $$t >/dev/null 2>&1; fi || missing="$$missing $${pb%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "need root to install:$$missing (apt-get install$$missing)" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; \
	fi

# A server in its own virtualenv: $(SERVERS)/NAME/bin/NAME, kept once installed.
$(SERVERS)/%/.installed:
	$(PYTHON) -m venv $(SERVERS)/$*
	$(SERVERS)/$*/bin/pip install --quiet --upgrade pip
	$(SERVERS)/$*/bin/pip install --quiet $(if $(filter phoenix,$*),arize-phoenix,$*)
	touch $@

# Agent frameworks, each in its own virtualenv (their dependencies fight each other and ours): the
# tests run a real agent of each in a subprocess of $(SERVERS)/fw-NAME, from tests/frameworks/NAME/.
FRAMEWORK_VENVS := $(patsubst tests/frameworks/%/requirements.txt,$(SERVERS)/fw-%/.installed,\
                     $(wildcard tests/frameworks/*/requirements.txt))

$(SERVERS)/fw-%/.installed: tests/frameworks/%/requirements.txt
	$(PYTHON) -m venv $(SERVERS)/fw-$*
	$(SERVERS)/fw-$*/bin/pip install --quiet --upgrade pip
	$(SERVERS)/fw-$*/bin/pip install --quiet -r $<
	touch $@

# The Helm chart's renderer for the tests (tests/helm/render.go: Go's text/template with sprig, what Helm's
# engine is made of; helm itself is in none of our registries), built offline from Debian's Go libraries.
$(SERVERS)/helm-render/bin/helm-render: tests/helm/render.go | debian-deps
	@mkdir -p $(SERVERS)/helm-render/bin
	GO111MODULE=off GOPATH=$(GOPATH_DEBIAN) GOCACHE=$(CURDIR)/$(SERVERS)/helm-render/cache GOFLAGS= \
	  go build -o $@ tests/helm/render.go

test-deps: setup debian-deps $(SERVERS)/phoenix/.installed $(SERVERS)/mlflow/.installed $(FRAMEWORK_VENVS) \
           $(SERVERS)/helm-render/bin/helm-render

lint: setup
	$(BIN)/ruff check pipeline receivers processors exporters config tests bench

# mypy cannot see through the editable install's import hook (each top-level directory is mapped under
# agent_sre), so it reads the pipeline layers by module name through a link tree of that mapping.
typecheck: setup
	@mkdir -p $(VENV)/mypy-path/agent_sre
	@for d in pipeline receivers processors exporters config; do \
	  ln -sfn $(CURDIR)/$$d $(VENV)/mypy-path/agent_sre/$$d; done
	MYPYPATH=$(VENV)/mypy-path $(BIN)/mypy -p agent_sre.pipeline.pdata -p agent_sre.pipeline.component \
	  -p agent_sre.pipeline.storage -p agent_sre.pipeline.service -p agent_sre.pipeline.client

test: test-deps lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	$(BIN)/python bench/ingest.py
