# The two commands a newcomer needs (as root, on Debian 12):
#   make demo   the lab (two libvirt hosts on this machine) and Ferry's live migration of its guest
#   make test   every test: unit, corpus, property, CLI, and the lab's end-to-end tests
# Both install the Debian packages they need first (lab/setup; a no-op when they are there).
# CI (`.ci/run`) runs `make test`.

CARGO ?= cargo

.PHONY: test setup unit-test lab-test lint demo bench bench-migrate bench-hosts lab-down

test: setup lint unit-test lab-test

setup:
	lab/setup

unit-test:
	$(CARGO) test --workspace

# Lab tests share fixed names and addresses: one at a time.
lab-test:
	$(CARGO) test -p ferry-cli --features lab --test 'lab_*' -- --test-threads=1

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --features ferry-cli/lab -- -D warnings

demo: setup
	$(CARGO) build --release -p ferry-cli
	lab/demo target/release/ferry

bench:
	$(CARGO) bench -p ferry-core

# Ferry vs plain virsh over a shaped lab link (RATE in Mbit/s).
RATE ?= 200
bench-migrate: setup
	$(CARGO) build --release -p ferry-cli
	lab/bench --rate $(RATE) target/release/ferry

# `ferry hosts` on a 4-host lab: the whole call against the sum of the per-host times.
bench-hosts: setup
	$(CARGO) build --release -p ferry-cli
	lab/bench-hosts 10 target/release/ferry

lab-down:
	lab/lab down
