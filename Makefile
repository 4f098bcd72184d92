# membrane — `make run` and `make test` are the two set-up commands (see README.md).
# Both install what is missing (Debian packages, .venv), build the BPF objects, then act.
# Every step is idempotent: with everything in place they take seconds.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := clang llvm libbpf-dev bpftool iproute2 iptables nftables util-linux python3-venv iputils-ping curl
BPF_SRC := $(wildcard bpf/*.c)
BPF_OBJ := $(patsubst bpf/%.c,build/bpf/%.o,$(BPF_SRC))
BPF_HDR := $(shell find bpf -name '*.h')
CLANG ?= clang
BPF_CFLAGS := -O2 -g -target bpf -Wall -Werror -Ibpf/include -Ibpf/lib -D__TARGET_ARCH_x86
PYTEST_ARGS ?=

.PHONY: all install apt venv build check test run down clean bench

all: build

install: .stamp-apt venv

# Debian packages: only touch apt when one is missing.
.stamp-apt: Makefile
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

build: .stamp-apt $(BPF_OBJ)

build/bpf/%.o: bpf/%.c $(BPF_HDR)
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

check: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: install build check
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	$(BIN)/pytest $(PYTEST_ARGS)

run: install build
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	$(BIN)/membrane lab demo

down: venv
	$(BIN)/membrane lab down

bench: install build
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf build .stamp-apt
