# The two commands a newcomer needs (as root, on Debian 12):
#   make demo   the lab (two libvirt hosts on this machine) and Ferry's live migration of its guest
#   make test   every test: unit, corpus, property, CLI, and the lab's end-to-end tests
# Both install the Debian packages they need first (lab/setup; a no-op when they are there).
# CI (`.ci/run`) runs `make test`.

CARGO ?= cargo

.PHONY: test setup unit-test lab-test lint deb demo bench bench-journal bench-migrate bench-hosts bench-evacuate bench-simulate bench-preseed bench-serve lab-down mutants faults

test: setup lint unit-test deb lab-test

setup:
	lab/setup

# The tests write their temporary files in a directory of their own, which must be empty
# after them: a run leaves nothing behind.
TEST_TMP = $(CURDIR)/target/test-tmp
unit-test:
	rm -rf $(TEST_TMP) && mkdir -p $(TEST_TMP)
	TMPDIR=$(TEST_TMP) $(CARGO) test --workspace
	@left=$$(ls -A $(TEST_TMP)); if [ -n "$$left" ]; then \
		echo "the tests left files behind in $(TEST_TMP): $$left" >&2; exit 1; fi

# Lab tests share fixed names and addresses: one at a time.
lab-test:
	$(CARGO) test -p ferry-cli --features lab --test 'lab_*' -- --test-threads=1

# The fault matrix alone (it also runs in lab-test): one table row per injected fault.
# FAULTS="7 11" runs only those cases.
faults: setup
	$(CARGO) test -p ferry-cli --features lab --test lab_faults -- $(FAULTS)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --features ferry-cli/lab -- -D warnings

# The Debian package: target/ferry_VERSION_ARCH.deb (the lab test `lab_deb` installs it).
deb:
	$(CARGO) build --release -p ferry-cli
	dist/deb/build target/release/ferry target

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

# Plain --copy-storage-all against --preseed for a mostly empty vdb of each size (MiB), each
# on a fresh lab: wall time, live phase, downtime, bytes on the wire (RATE in Mbit/s).
SIZES ?= 1024 4096
bench-preseed: setup
	$(CARGO) build --release -p ferry-cli
	lab/bench-preseed --rate $(RATE) --sizes "$(SIZES)" target/release/ferry

# `ferry serve` under load during a lab migration: GET latency at 200 req/s with 20 SSE clients,
# a job sample's delay to the page's DOM (headless Chromium), the daemon's RSS and CPU.
bench-serve: setup
	$(CARGO) build --release -p ferry-cli
	lab/bench-serve target/release/ferry

# `ferry hosts` on a 4-host lab: the whole call against the sum of the per-host times.
# The journal's stores side by side: a migration's writes on SQLite and PostgreSQL, and 50
# concurrent lock attempts on one guest from 5 processes (exactly one holder).
bench-journal: setup
	$(CARGO) bench -p ferry-journal --features testing --bench journal

bench-hosts: setup
	$(CARGO) build --release -p ferry-cli
	lab/bench-hosts 10 target/release/ferry

# `ferry evacuate` of the lab's three guests: Ferry's schedule, serial, all at once, each
# against the lower bound (h1's bytes sent over its shaped link; RATE in Mbit/s).
bench-evacuate: setup
	$(CARGO) build --release -p ferry-cli
	lab/bench-evacuate --rate $(RATE) target/release/ferry

# The evacuation model over a generated fleet (10,000 guests, 1,000 hosts, 100 drained): every
# policy's makespan against the lower bound, and Ferry's planning time.
bench-simulate:
	$(CARGO) build --release -p ferry-cli
	target/release/ferry simulate --hosts 1000 --guests 10000 --drain 100
	target/release/ferry simulate --hosts 1000 --guests 10000 --drain 100 --link-gbit 1
	target/release/ferry simulate --hosts 1000 --guests 10000 --drain 500

lab-down:
	lab/lab down

# cargo-mutants over the flow's safety modules and the planner: every mutant that survives is
# a safety check no unit test would miss if it broke (`cargo install cargo-mutants` first).
# Not in CI (hours on 2 cores); results in mutants.out/.
MUTATE = crates/ferry-core/src/preflight.rs crates/ferry-core/src/release.rs \
	crates/ferry-core/src/plan.rs crates/ferry-core/src/limits.rs \
	crates/ferry-core/src/preseed.rs crates/ferry-migrate/src/preseed.rs \
	crates/ferry-migrate/src/preflight.rs \
	crates/ferry-migrate/src/prepare.rs crates/ferry-migrate/src/verify.rs \
	crates/ferry-migrate/src/rollback.rs crates/ferry-migrate/src/recover.rs \
	crates/ferry-migrate/src/release.rs crates/ferry-migrate/src/cold.rs \
	crates/ferry-migrate/src/flow.rs crates/ferry-migrate/src/step.rs \
	crates/ferry-migrate/src/report.rs crates/ferry-migrate/src/evacuate/ask.rs \
	crates/ferry-migrate/src/evacuate/run.rs crates/ferry-migrate/src/evacuate/verdict.rs \
	crates/ferry-journal/src/vocab.rs crates/ferry-migrate/src/lease.rs \
	crates/ferry-migrate/src/evacuate/journal.rs
mutants:
	$(CARGO) mutants --test-workspace=false $(foreach f,$(MUTATE),-f $(f)) $(MUTANTS_ARGS)
