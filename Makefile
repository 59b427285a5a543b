# Two entry points for a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_TOOLS := qemu-img:qemu-utils prlimit:util-linux mount:mount systemd-analyze:systemd curl:curl zstd:zstd ssh-keygen:openssh-client tmux:tmux gcc:gcc
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
# OpenStack Glance for the tests whose hub is the real thing (tests/glance_server.py), in its own
# virtual environment; uWSGI serves it (Glance has no standalone server), built by pip with gcc.
GLANCE_VENV := .venv-glance
GLANCE_VERSION := 33.0.0
STAMP_GLANCE := $(GLANCE_VENV)/.installed-glance
# OpenStack Keystone for the tests that validate real tokens (tests/keystone.py), in its own
# virtual environment, served by gunicorn (pure Python: nothing to compile).
KEYSTONE_VENV := .venv-keystone
STAMP_KEYSTONE := $(KEYSTONE_VENV)/.installed-keystone
# OpenStack Barbican for the signed-image tests that take certificates from its secrets API
# (tests/barbican.py), in its own virtual environment, served by gunicorn.
BARBICAN_VENV := .venv-barbican
STAMP_BARBICAN := $(BARBICAN_VENV)/.installed-barbican

# Ceph for the RBD store tests (tests/ceph.py): a monitor, an OSD and a manager from Debian's
# packages, and the distribution's librados/librbd bindings, which are not on PyPI: their two
# extension modules are linked into a folder that a .pth file puts on the venv's path.
CEPH_PKGS := ceph-mon ceph-osd ceph-mgr ceph-common python3-rados python3-rbd
CEPH_BINDINGS := $(VENV)/ceph-bindings
STAMP_CEPH := $(VENV)/.installed-ceph

.PHONY: run test lint system-deps install-tools bench soak clean glance keystone barbican ceph

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(STAMP_RUN)

$(STAMP_GLANCE): | system-deps
	$(PY) -m venv $(GLANCE_VENV)
	$(GLANCE_VENV)/bin/pip install -q --upgrade pip
	$(GLANCE_VENV)/bin/pip install -q 'glance==$(GLANCE_VERSION)' 'uwsgi==2.0.31'
	touch $@

glance: $(STAMP_GLANCE)

$(STAMP_KEYSTONE):
	$(PY) -m venv $(KEYSTONE_VENV)
	$(KEYSTONE_VENV)/bin/pip install -q --upgrade pip
	$(KEYSTONE_VENV)/bin/pip install -q 'keystone==30.0.0' 'gunicorn==27.0.1'
	touch $@

keystone: $(STAMP_KEYSTONE)

$(STAMP_BARBICAN):
	$(PY) -m venv $(BARBICAN_VENV)
	$(BARBICAN_VENV)/bin/pip install -q --upgrade pip
	$(BARBICAN_VENV)/bin/pip install -q 'barbican==23.0.0' 'gunicorn==27.0.1'
	touch $@

barbican: $(STAMP_BARBICAN)

$(STAMP_CEPH): | $(BIN)/python
	@missing=""; for pkg in $(CEPH_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing ) >/dev/null \
	    || { echo "error: could not install$$missing (Debian: apt-get install$$missing)" >&2; exit 1; }; \
	fi
	mkdir -p $(CEPH_BINDINGS)
	ln -sf /usr/lib/python3/dist-packages/rados.cpython-311-x86_64-linux-gnu.so $(CEPH_BINDINGS)/
	ln -sf /usr/lib/python3/dist-packages/rbd.cpython-311-x86_64-linux-gnu.so $(CEPH_BINDINGS)/
	echo "$(abspath $(CEPH_BINDINGS))" > $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/ceph-bindings.pth
	$(BIN)/python -c 'import rados, rbd'
	touch $@

ceph: $(STAMP_CEPH)

run: $(STAMP_RUN)
	$(BIN)/edge-appliance serve --state-dir ./var

# Installs the system tools the tests drive for real (qemu-img), or says why it cannot.
system-deps:
	@$(MAKE) -s install-tools TOOLS="$(SYSTEM_TOOLS)"

install-tools:
	@missing=""; for pair in $(TOOLS); do \
	  tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$tool >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing ) >/dev/null \
	    || { echo "error: could not install$$missing; install them with your package manager (Debian: apt-get install$$missing)" >&2; exit 1; }; \
	fi

test: $(STAMP_TEST) system-deps glance keystone barbican ceph lint
	$(BIN)/python -m pytest -q tests

# The checks that keep the tree tidy: formatting, lint and strict types (config in pyproject.toml).
lint: $(STAMP_TEST)
	$(BIN)/ruff format --check appliance tui tests
	$(BIN)/ruff check appliance tui tests
	$(BIN)/mypy appliance tui

# Benchmarks are not tests: they print figures and ratios to baselines from the same run.
# `make bench` runs every one (small sizes; about 20 minutes) and prints one table (tests/bench/run_all.py).
bench: $(STAMP_TEST) system-deps glance keystone barbican ceph
	@$(MAKE) -s install-tools TOOLS="$(SYSTEM_TOOLS) nginx:nginx-light curl:curl zstd:zstd"
	$(BIN)/python tests/bench/run_all.py

# The soak with faults (tests/integration/test_soak.py) for 30 minutes; `make test` runs it for 120 s.
soak: $(STAMP_TEST) system-deps
	SOAK_SECONDS=$${SOAK_SECONDS:-1800} $(BIN)/python -m pytest -q -s tests/integration/test_soak.py

clean:
	rm -rf $(VENV) $(GLANCE_VENV) $(KEYSTONE_VENV) $(BARBICAN_VENV) var
