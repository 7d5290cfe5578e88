# Dynamo — build, test and run targets. `make help` lists them.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: help run build-release test lint fmt fmt-check clippy unit doc bench-core bench soak soak-sim

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

run: build-release ## build optimised binaries and run a local cluster (3 storage nodes, ring service, coordinator on 127.0.0.1:8080)
	./target/release/dynamo dev

build-release:
	$(CARGO) build --release --workspace --bins --locked

test: fmt-check clippy unit ## everything CI runs: format check, clippy -D warnings, the whole test suite

lint: fmt-check clippy ## format check and clippy

fmt: ## format the workspace
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --locked

doc: ## build the API docs (warnings are errors)
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --locked

bench-core: ## criterion benchmarks of the core (numbers go to docs/benchmarks.md)
	$(CARGO) bench -p dynamo-core --locked --bench core --bench merkle

bench: ## Dynamo beside a 3-member etcd, same generator, one run (~13 min; installs etcd if missing); writes docs/benchmarks.md
	CARGO="$(CARGO)" ./scripts/bench.sh

# `make soak` parameters: seeds as a list or ranges (1,5,9 or 1-30), load seconds per seed,
# storage nodes (3: every node in every preference list; 4: fallbacks and hinted handoff).
SEED ?= 1
DURATION ?= 120
NODES ?= 3

soak: ## the seeded fault checker, long: make soak SEED=1-30 DURATION=120 [NODES=4] (docs/testing.md)
	$(CARGO) build --workspace --bins --locked
	DYNAMO_CHECKER_SEEDS="$(SEED)" DYNAMO_CHECKER_DURATION_S="$(DURATION)" DYNAMO_CHECKER_NODES="$(NODES)" \
		$(CARGO) test -p dynamo-tests --locked --test fault_checker -- --ignored --exact soak --nocapture

# `make soak-sim` parameters: seeds as a list or ranges.
SIM_SEEDS ?= 1-1000000

soak-sim: ## the deterministic simulator over many seeds: make soak-sim SIM_SEEDS=1-1000000 (docs/testing.md)
	DYNAMO_SIM_SEEDS="$(SIM_SEEDS)" $(CARGO) test -p dynamo-tests --locked --release --test simulator -- --exact every_seed_keeps_the_invariants --nocapture
