# Build, generate, test and lint the eBPF receiver. `make help` lists targets.
#
# Binaries: .bin/ holds tools (mdatagen, ocb, golangci-lint, jaeger link),
# bin/ holds what we build (bin/otelcol-ebpf). Both are gitignored.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

ROOT    := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
BIN_DIR := $(ROOT)/.bin
OUT_DIR := $(ROOT)/bin

GO     ?= go
# Long builds share the machine: run them niced.
NICE   ?= nice -n 10

# The BPF compiler is pinned in internal/event/gen.go and internal/mappressure/gen.go (-cc clang-19 -strip llvm-strip-19): check-generated must give identical bytes.
# `//go:generate mdatagen metadata.yaml` finds .bin/mdatagen.
export PATH := $(BIN_DIR):$(PATH)

# The module mirror serves these modules without checksum-database entries
# for every version; go.sum files still pin their hashes.
COLLECTOR_GONOSUMDB := go.opentelemetry.io/collector,github.com/open-telemetry/opentelemetry-collector-contrib

# go test
GOTESTFLAGS  ?=
TEST_TIMEOUT ?= 20m
PKGS         ?= ./...

# ocb
OCB_CONFIG := builder-config.yaml
OCB_OUTPUT := $(OUT_DIR)/otelcol-build
OTELCOL    := $(OUT_DIR)/otelcol-ebpf
RUN_CONFIG ?= config/default.yaml
ARGS       ?=

# Jaeger v2 for end-to-end tests, built once per machine into a cache outside
# the work tree (survives clean clones); the version comes from tools/jaeger/go.mod.
JAEGER_VERSION := $(shell awk '$$1 == "github.com/jaegertracing/jaeger" { print $$2; exit }' $(ROOT)/tools/jaeger/go.mod)
JAEGER_CACHE   ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ebpfreceiver/jaeger-$(JAEGER_VERSION)
JAEGER_LDFLAGS := -s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$(JAEGER_VERSION)

TOOLS := $(BIN_DIR)/mdatagen $(BIN_DIR)/ocb $(BIN_DIR)/golangci-lint

.PHONY: help
help: ## list targets
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# ---------------------------------------------------------------- tools

.PHONY: tools
tools: $(TOOLS) ## build .bin/mdatagen, .bin/ocb, .bin/golangci-lint from the pinned tools modules

$(BIN_DIR)/mdatagen: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $@ go.opentelemetry.io/collector/cmd/mdatagen

$(BIN_DIR)/ocb: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $@ go.opentelemetry.io/collector/cmd/builder

$(BIN_DIR)/golangci-lint: tools/golangci-lint/go.mod tools/golangci-lint/go.sum
	cd tools/golangci-lint && $(NICE) $(GO) build -o $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint

# ---------------------------------------------------------------- generate

.PHONY: generate
generate: $(BIN_DIR)/mdatagen ## run go generate ./... (bpf2go, mdatagen)
	$(GO) generate ./...

.PHONY: check-generated
check-generated: $(BIN_DIR)/mdatagen ## regenerate and fail if generated files differ from git
	GO="$(GO)" ./tools/check-generated.sh

# Opt-in: vmlinux.h depends on the running kernel's BTF, so it is not part of
# `generate` (check-generated would then depend on the machine).
.PHONY: vmlinux
vmlinux: ## regenerate bpf/headers/vmlinux.h from this kernel's BTF (opt-in)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/headers/vmlinux.h.tmp
	mv bpf/headers/vmlinux.h.tmp bpf/headers/vmlinux.h

# ---------------------------------------------------------------- test and lint

.PHONY: test
test: otelcol ghz ## build bin/otelcol-ebpf and ghz, then go test -count=1 ./... (privileged tests run when root)
	GHZ=$(BENCH_BIN)/ghz $(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(GOTESTFLAGS) $(PKGS)

# Each target for FUZZTIME (a duration, or Nx executions); see tools/fuzz.sh.
FUZZTIME ?= 10s

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each (default 10s; e.g. FUZZTIME=10000000x)
	FUZZTIME=$(FUZZTIME) GO="$(GO)" $(NICE) ./tools/fuzz.sh

.PHONY: lint
lint: ## gofmt check, go vet, golangci-lint (from .bin when built)
	@echo "gofmt -l"
	@files=$$(git ls-files --cached --others --exclude-standard -- '*.go' | while read -r f; do [ ! -f "$$f" ] || echo "$$f"; done); \
	bad=$$( [ -z "$$files" ] || gofmt -l $$files ); \
	if [ -n "$$bad" ]; then echo "gofmt needed on:"; echo "$$bad"; exit 1; fi
	$(GO) vet $(PKGS)
	@if [ -x $(BIN_DIR)/golangci-lint ]; then \
		echo "golangci-lint run"; $(NICE) $(BIN_DIR)/golangci-lint run $(PKGS); \
	else \
		echo "golangci-lint skipped: run 'make tools' to build the pinned version"; \
	fi

# ---------------------------------------------------------------- collector

.PHONY: otelcol
otelcol: $(BIN_DIR)/ocb ## build the collector distribution into bin/otelcol-ebpf with ocb
	@mkdir -p $(OUT_DIR) # ocb creates only the last path element
	GONOSUMDB=$(COLLECTOR_GONOSUMDB) $(NICE) $(BIN_DIR)/ocb --config $(OCB_CONFIG)
	cp -f $(OCB_OUTPUT)/otelcol-ebpf $(OTELCOL)

.PHONY: run
run: otelcol ## build and run bin/otelcol-ebpf --config $(RUN_CONFIG) $(ARGS)
	@[ -f "$(RUN_CONFIG)" ] || { echo "$(RUN_CONFIG) not found (set RUN_CONFIG=path)"; exit 1; }
	$(OTELCOL) --config $(RUN_CONFIG) $(ARGS)

# ---------------------------------------------------------------- bench

# The observability tax, measured side by side (not part of CI pass/fail):
# bench/harness runs PostgreSQL and gRPC workloads without and with the
# collector, interleaved, and writes docs/performance.md and
# bench/results.json. Root; about 12 minutes on 2 cores. It measures
# bin/otelcol-ebpf as it is: run `make otelcol` first (it warns when the
# binary is older than the sources). ghz is installed into bench/.bin, not
# into go.mod. Extra flags: BENCH_ARGS (see `bench/.bin/harness -h`).
GHZ_VERSION := v0.121.0
BENCH_BIN   := $(ROOT)/bench/.bin
BENCH_ARGS  ?=

# ghz (the gRPC load generator of the ghz test in deploy/ and of the
# benchmark), installed outside go.mod, pinned.
.PHONY: ghz
ghz: ## install ghz $(GHZ_VERSION) into bench/.bin (about a minute cold)
	@mkdir -p $(BENCH_BIN)
	@[ -x $(BENCH_BIN)/ghz ] || { echo "installing ghz $(GHZ_VERSION) into $(BENCH_BIN)"; \
		cd / && GOBIN=$(BENCH_BIN) GOFLAGS=-mod=mod $(GO) install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION); }

.PHONY: bench
bench: ghz ## measure the overhead of the collector (root, ~12 min): docs/performance.md, bench/results.json
	@[ -x $(OTELCOL) ] || { echo "$(OTELCOL) is missing: run make otelcol first"; exit 1; }
	GOFLAGS=-mod=mod $(GO) build -o $(BENCH_BIN)/harness ./bench/harness
	@# The collector's path stays out of the harness's command line (its
	@# default, bin/otelcol-ebpf): a `pkill -f otelcol-ebpf` elsewhere on a
	@# shared machine would otherwise stop the session.
	cd $(ROOT) && $(BENCH_BIN)/harness -ghz $(BENCH_BIN)/ghz $(BENCH_ARGS)

# ---------------------------------------------------------------- jaeger

.PHONY: jaeger
jaeger: ## build Jaeger v2 once into $(JAEGER_CACHE), link .bin/jaeger
	@mkdir -p $(BIN_DIR) "$(JAEGER_CACHE)"
	@if [ -x "$(JAEGER_CACHE)/jaeger" ]; then \
		echo "jaeger $(JAEGER_VERSION): cached at $(JAEGER_CACHE)/jaeger"; \
	else \
		echo "jaeger $(JAEGER_VERSION): building into $(JAEGER_CACHE) (about 5 minutes cold)"; \
		tmp="$(JAEGER_CACHE)/jaeger.tmp.$$$$"; \
		trap 'rm -f "$$tmp"' EXIT; \
		cd tools/jaeger && GONOSUMDB=$(COLLECTOR_GONOSUMDB) $(NICE) $(GO) build -trimpath \
			-ldflags '$(JAEGER_LDFLAGS)' -o "$$tmp" github.com/jaegertracing/jaeger/cmd/jaeger; \
		mv -f "$$tmp" "$(JAEGER_CACHE)/jaeger"; \
	fi
	ln -sfn "$(JAEGER_CACHE)/jaeger" $(BIN_DIR)/jaeger

# End to end: bin/otelcol-ebpf watches internal/e2e/demoapp (gRPC server and
# client) and its PostgreSQL in a test cgroup, exports to Jaeger, and the
# test reads the spans back from Jaeger's query API (root; build tag e2e,
# so `make test` does not run it). `make demo` leaves the same setup running.
.PHONY: e2e
e2e: otelcol jaeger ## end-to-end test: demoapp + PostgreSQL -> otelcol-ebpf -> Jaeger (root)
	$(GO) test -tags e2e -count=1 -v -timeout 10m ./internal/e2e

.PHONY: demo
demo: otelcol jaeger ## run the e2e setup for a person: Jaeger API, Prometheus endpoint, Ctrl-C stops (root)
	./tools/demo.sh

# ---------------------------------------------------------------- housekeeping

.PHONY: clean
clean: ## remove bin/ and .bin/ (the Jaeger cache stays)
	rm -rf $(OUT_DIR) $(BIN_DIR)
