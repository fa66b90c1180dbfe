# corral: the two commands a new user needs are `make run` and `make test`.
# Both set everything up on a clean Debian machine (as root: apt-get is used for
# the system tools the tests drive, such as wrk, curl, lintian and rpmbuild).

# The interpreter .venv is made with: the distribution's own python3 where there
# is one (the one the Debian and RPM packages run corral on, so the tests and the
# benchmarks see what production sees), else the python3 on PATH.
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSSTAMP := .venv/.sysdeps

# System packages the test-suite and benchmark drive for real.
APT_PACKAGES := curl wrk util-linux iproute2 systemd lintian rpm debhelper dh-python \
	pybuild-plugin-pyproject python3-all python3-setuptools python3-build \
	python3-installer python3-wheel python3-venv fakeroot prometheus chromium haproxy testssl.sh

.PHONY: run test lint bench sysdeps venv clean deb rpm docs

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	@touch $@

sysdeps: $(SYSSTAMP)

$(SYSSTAMP): Makefile
	@mkdir -p $(VENV)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install: $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@touch $@

## Serve the bundled demo app on http://127.0.0.1:8000 (Ctrl-C stops it).
run: $(STAMP)
	$(BIN)/corral run corral.demo.app:app

## Run the whole test-suite.
test: $(SYSSTAMP) $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

## The source guards alone (also part of `make test`): layers, import cycles, mypy strict, ruff.
lint: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_lint.py

## Regenerate conf/corral.yaml, docs/configuration.md and the man page (packaging/debian/corral.1)
## from the key table (daemon/corral/config.py, daemon/corral/engine/settings.py).
docs: $(STAMP)
	$(BIN)/python -m corral.keydoc --write

## Benchmarks: the in-process cost per request, ASGI (corral vs uvicorn, granian, a bare uvloop+httptools server), WSGI
## (vs granian, gunicorn), the cost of metrics (on vs off) and WebSocket echo (vs uvicorn, granian, a bare server).
bench: $(SYSSTAMP) $(STAMP)
	$(BIN)/python tests/bench/bench_inprocess.py --interface asgi
	$(BIN)/python tests/bench/bench_inprocess.py --interface wsgi
	$(BIN)/python tests/bench/bench.py
	$(BIN)/python tests/bench/bench_wsgi.py --rounds 5
	$(BIN)/python tests/bench/bench_metrics.py --rounds 5 --scrape-interval 5
	$(BIN)/python tests/bench/bench_ws.py --rounds 3
	$(BIN)/python tests/bench/bench_tls.py --rounds 3
	$(BIN)/python tests/bench/bench_zygote.py --workers 4 --requests 400 --kills 3

## Build the Debian package into packaging/out/deb/ and lint it (fetches pinned wheels once).
deb: $(SYSSTAMP)
	packaging/build-deb.sh

## Build the RPM into packaging/out/rpm/ (on Debian, a check build with compat macros).
rpm: $(SYSSTAMP)
	packaging/build-rpm.sh

clean:
	rm -rf $(VENV) build dist daemon/*.egg-info
