# mqdispatch — the commands a user types. `make help` lists them.
CARGO    ?= cargo
SCENARIO ?= scenarios/paper.yaml
BIN      := target/release/mqdispatch

.PHONY: help build test lint bench experiment quick fuzz fmt

help:
	@echo "make experiment [SCENARIO=scenarios/paper.yaml]  run a scenario, plots copied to plots/"
	@echo "make quick                                      the short scenario (about a minute)"
	@echo "make test                                       format check, clippy, all tests"
	@echo "make lint                                       format check and clippy only"
	@echo "make bench                                      dispatcher, load-generator, send-mode and fleet benchmarks"
	@echo "make fuzz                                       fuzz the CONNECT path for 2 minutes (nightly + cargo-fuzz)"

build:
	$(CARGO) build --release

test: lint
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: build
	$(CARGO) bench --bench dispatcher
	$(CARGO) bench --bench loadgen
	$(CARGO) bench --bench send_modes
	$(CARGO) bench --bench fleet

experiment: build
	$(BIN) run $(SCENARIO) --plots-dir plots/$(basename $(notdir $(SCENARIO)))

quick:
	$(MAKE) experiment SCENARIO=scenarios/quick.yaml

# Not part of `make test`: needs a nightly toolchain and `cargo install cargo-fuzz`.
fuzz:
	cd fuzz && mkdir -p corpus-work && $(CARGO) +nightly fuzz run connect corpus-work corpus/connect -- -max_total_time=120

fmt:
	$(CARGO) fmt
