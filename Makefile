# mqdispatch — the commands a user types. `make help` lists them.
SHELL    := bash
CARGO    ?= cargo
SCENARIO ?= scenarios/paper.yaml
BIN      := target/release/mqdispatch

.PHONY: help build test lint bench experiment quick fuzz fmt book figures tables

help:
	@echo "make experiment [SCENARIO=scenarios/paper.yaml]  run a scenario into results/<scenario>/ (plots also in results/plots/)"
	@echo "make quick                                      the short scenario (about a minute)"
	@echo "make test                                       format check, clippy, all tests"
	@echo "make lint                                       format check and clippy only"
	@echo "make bench                                      dispatcher (plain and TLS), load-generator, send-mode, broker-neighbour and fleet benchmarks"
	@echo "make book                                       build the documentation into docs/book/ (needs mdbook)"
	@echo "make tables figures                             regenerate the docs' tables and figures from results/published/"
	@echo "make fuzz                                       fuzz the CONNECT path for 2 minutes (nightly + cargo-fuzz)"

# --workspace: also the Mosquitto plugin (target/release/libmqdispatch_mosquitto_plugin.so).
build:
	$(CARGO) build --release --workspace

# The plugin's .so must exist before the integration tests load it into Mosquitto.
test: lint
	$(CARGO) build -p mqdispatch-mosquitto-plugin
	$(CARGO) test --workspace --all-targets

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Each benchmark's output is kept in results/bench/<UTC time>/ (never overwritten), headed by
# the commit it ran at; `cp` a folder's files to results/published/bench/ to publish them.
BENCH_DIR := results/bench/$(shell date -u +%Y%m%dT%H%M%SZ)
BENCHES   := dispatcher loadgen send_modes neighbours fleet capacity

bench: build
	mkdir -p $(BENCH_DIR)
	set -o pipefail; for b in $(BENCHES); do \
	  { echo "commit: $$(git rev-parse HEAD 2>/dev/null || echo unknown)$$(git status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"; \
	    $(CARGO) bench --bench $$b; } | tee $(BENCH_DIR)/$$b.txt || exit 1; \
	done
	@echo "bench output in $(BENCH_DIR)/"

# Everything a run writes stays under results/ (ignored by git but for results/published/).
experiment: build
	$(BIN) run $(SCENARIO) --plots-dir results/plots/$(basename $(notdir $(SCENARIO)))

quick:
	$(MAKE) experiment SCENARIO=scenarios/quick.yaml

# Not part of `make test`: needs a nightly toolchain and `cargo install cargo-fuzz`.
fuzz:
	cd fuzz && mkdir -p corpus-work && $(CARGO) +nightly fuzz run connect corpus-work corpus/connect -- -max_total_time=120

fmt:
	$(CARGO) fmt

book:
	mdbook build docs

# The generated tables of README.md and docs/src, and the published figures, from results/published/.
tables:
	$(CARGO) run --release -- readme

figures:
	$(CARGO) build --release
	for d in results/published/*/; do \
	  if [ -f "$$d/summary.csv" ]; then $(BIN) plot "$$d" || exit 1; fi; \
	done
