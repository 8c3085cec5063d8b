# Usher — the two commands that matter: `make demo` and `make test`.
GO      ?= go
BIN     := bin
PKGS    := ./...
# Fuzz budgets are execution counts, about ten seconds each on the
# project's 2-core machine. A duration (FUZZTIME=30s, say, for all targets)
# works too, but with Go 1.26 a duration can end in a bare "context
# deadline exceeded" failure with no failing input when the time runs out
# mid-run (golang/go#75804, fixed in Go 1.27); counts have no deadline.
FUZZTIME ?=

.PHONY: all build demo test test-unit test-chaos test-libvirt test-site test-web test-fuzz bench vet fmt-check clean

all: build

build:
	$(GO) build -o $(BIN)/usher ./cmd/usher
	@if [ -d cmd/ush ]; then $(GO) build -o $(BIN)/ush ./cmd/ush; fi

# An embedded site: controller + simulated LNMs + shipped policies + the shell.
demo: build
	$(BIN)/usher demo

# Every test, with the race detector, plus vet, a formatting check and a
# short fuzz pass over each decoder.
test: vet fmt-check test-unit test-libvirt test-site test-web test-fuzz

test-unit:
	$(GO) test -race -count=1 $(PKGS)

# Chaos tests alone: real controller/LNM processes killed with -9, network
# cuts, grace periods, recovery at scale.
test-chaos:
	$(GO) test -race -count=1 -run '^TestChaos' -v .

# Real hypervisors: the harness installs libvirt/QEMU (Debian packages) if
# missing, prepares a guest kernel and busybox initramfs in .cache/, starts
# two libvirtd hosts and stops exactly what it started.
test-libvirt:
	$(GO) test -race -count=1 -tags libvirt ./nodemgr/libvirt/...
	$(GO) test -race -count=1 -tags libvirt -run 'Libvirt' -v .

# Site integration against real servers: OpenLDAP slapd and BIND named on
# loopback (installed by testdata/site/harness.sh if missing), SQLite files.
test-site:
	$(GO) test -race -count=1 -tags site ./lua/...

# The web console in a real headless Chromium (chromedp); testdata/web/harness.sh
# installs the Debian package chromium when missing.
test-web:
	$(GO) test -race -count=1 -tags web -run 'Web' -v .

test-fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzReadEnvelope$$' -fuzztime $(or $(FUZZTIME),300000x) ./transport/
	$(GO) test -run '^$$' -fuzz '^FuzzPipeDecode$$' -fuzztime $(or $(FUZZTIME),300000x) ./transport/
	$(GO) test -run '^$$' -fuzz '^FuzzStringMap$$' -fuzztime $(or $(FUZZTIME),150000x) ./transport/
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(or $(FUZZTIME),30000x) ./core/config/
	$(GO) test -run '^$$' -fuzz '^FuzzHandleReport$$' -fuzztime $(or $(FUZZTIME),800000x) ./core/
	$(GO) test -run '^$$' -fuzz '^FuzzSizeHint$$' -fuzztime $(or $(FUZZTIME),20000x) ./core/
	$(GO) test -run '^$$' -fuzz '^FuzzRequestConversion$$' -fuzztime $(or $(FUZZTIME),40000x) ./lua/
	$(GO) test -run '^$$' -fuzz '^FuzzClientMethods$$' -fuzztime $(or $(FUZZTIME),60000x) ./controller/
	$(GO) test -run '^$$' -fuzz '^FuzzHTTPAPI$$' -fuzztime $(or $(FUZZTIME),30000x) ./controller/

vet:
	$(GO) vet $(PKGS)
	$(GO) vet -tags libvirt $(PKGS)
	$(GO) vet -tags site $(PKGS)
	$(GO) vet -tags web $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2x -benchmem .

clean:
	rm -rf $(BIN)
