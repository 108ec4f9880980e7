# mqdispatch — the commands a user types. `make help` lists them.
CARGO    ?= cargo
SCENARIO ?= scenarios/paper.yaml
BIN      := target/release/mqdispatch

.PHONY: help build test lint bench experiment quick plots fmt

help:
	@echo "make experiment [SCENARIO=scenarios/paper.yaml]  run a scenario, plots copied to plots/"
	@echo "make quick                                      the short scenario (about a minute)"
	@echo "make test                                       format check, clippy, all tests"
	@echo "make lint                                       format check and clippy only"
	@echo "make bench                                      dispatcher and load-generator benchmarks"

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

experiment: build
	$(BIN) run $(SCENARIO) --plots-dir plots

quick:
	$(MAKE) experiment SCENARIO=scenarios/quick.yaml

fmt:
	$(CARGO) fmt
