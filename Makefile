# cm4bench: see README.md. `make run` and `make test` work on a fresh machine.
GO      ?= go
BUILD   ?= build
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/cm4bench/cm4bench/cmd/cm4bench/cli.Version=$(VERSION)
# Packages that must build without cgo (everything but the gousb glue).
NOCGO_PKGS := $(shell $(GO) list ./... 2>/dev/null | grep -v /usbboot/gousbdev)

.PHONY: all run test bench build lint deps clean libusbfake agents arm64-kernel e2e soak screenshot man deb bench-line

all: build

deps:
	@scripts/deps.sh

build: deps agents
	$(GO) build -tags embedagent -trimpath -ldflags '$(LDFLAGS)' -o $(BUILD)/cm4bench ./cmd/cm4bench

# cm4agent for the boards (arm64) and x86 test benches (amd64), without cgo,
# into the git-ignored dir that `-tags embedagent` embeds into cm4bench.
AGENT_BIN := netboot/initramfs/agentbin/bin
agents:
	@mkdir -p $(AGENT_BIN)
	for arch in arm64 amd64; do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath \
			-ldflags '-s -w -X main.version=$(VERSION)' -o $(AGENT_BIN)/cm4agent-linux-$$arch ./cmd/cm4agent || exit 1; \
	done

# Debian's arm64 kernel for the QEMU end-to-end test of cm4agent (cached).
arm64-kernel:
	@scripts/arm64-kernel.sh >/dev/null || echo "arm64-kernel: not fetched; the QEMU agent test will skip (or fail in CI)"

# The QEMU end-to-end test alone, verbose (it also runs in `make test`).
e2e: deps arm64-kernel
	$(GO) test -count=1 -v -timeout 15m ./netboot/device/e2e/

run: build
	$(BUILD)/cm4bench --help
	@echo
	@echo '== The demo bench: simulated CM4s netboot from the real server, run the real cm4agent;'
	@echo '   open the dashboard, log in with the printed token, click Deploy or Backup. Ctrl-C ends it.'
	$(BUILD)/cm4bench netboot serve --demo

# The simulated bench's load and fault runs, long: 50 boards with 16 deploys
# and 4 backups going for 10 minutes (make test runs the same for 1 minute).
SOAK ?= 10m
soak: deps
	CM4BENCH_SOAK=$(SOAK) $(GO) test -count=1 -v -timeout 90m -run '^(TestLoad|TestFault)' ./netboot/sim/simbench/

# The QEMU end-to-end test runs on its own after the rest: an emulated arm64
# guest starved of CPU by the other suites (2 cores) can stall in its
# virtio driver for minutes.
E2E_PKG := ./netboot/device/e2e
test: deps libusbfake arm64-kernel
	CGO_ENABLED=0 $(GO) vet $(NOCGO_PKGS)
	LIBUSBFAKE_SO=$(abspath $(LIBUSBFAKE)) $(GO) test -count=1 -timeout 40m $$($(GO) list ./... | grep -v '/netboot/device/e2e$$')
	$(GO) test -count=1 -timeout 15m $(E2E_PKG)

# The README's dashboard screenshot, made again by the browser test that
# checks 16 boards at 1366x768 (headless Chromium).
screenshot: deps
	CM4BENCH_ARTIFACTS=$(CURDIR)/api/ui/screenshots $(GO) test -count=1 -run '^TestSixteenSlotsInBrowser$$' ./api/ui/

# The bench twin (netboot/sim/linetwin): a realistic 2.6 GB image built from
# this machine's Debian files, measured, and 1/4/8/16 boards through the
# line model; prints the table and the field's goals, writes the plot. Then
# the realistic simulated bench (real server, agents, pisim boards, paced
# eMMC, tc-shaped links) for 1/4/8/16 boards next to the twin, scaled down
# until this machine is not the limit.
LINE_PLOT ?= $(CURDIR)/netboot/sim/linetwin/bench-line.png
bench-line: deps
	CM4BENCH_LINE_PLOT=$(LINE_PLOT) $(GO) test -run '^$$' -bench '^BenchmarkLine$$' -benchtime 1x -timeout 30m ./netboot/sim/linetwin/
	$(GO) test -run '^$$' -bench '^BenchmarkLineRun$$' -benchtime 1x -timeout 60m ./netboot/sim/simbench/

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./...

# The libusb-1.0 stand-in that lets tests run the real binary against
# simulated boards (usbboot/libusbfake). Test tool only, never shipped.
LIBUSBFAKE := $(BUILD)/libusbfake/libusb-1.0.so.0
libusbfake: $(LIBUSBFAKE)
$(LIBUSBFAKE): usbboot/libusbfake/c/libusbfake.c
	@mkdir -p $(dir $@)
	$(CC) -shared -fPIC -O2 -Wall -Wextra -Werror -fvisibility=hidden $$(pkg-config --cflags libusb-1.0) \
		-Wl,-soname,libusb-1.0.so.0 -o $@ $< -lpthread

# One man page per command (section 1), from the same text as --help.
man: build
	$(BUILD)/cm4bench man --dir $(BUILD)/man

# The Debian package: build/cm4bench_<version>_<arch>.deb (nfpm as a
# library, no download): the binary with the embedded agents, the systemd
# unit that runs it without root, udev rules, man pages, completions.
PKG := $(BUILD)/pkg
deb: build
	rm -rf $(PKG) && mkdir -p $(PKG)/man $(PKG)/completions
	$(BUILD)/cm4bench man --dir $(PKG)/man >/dev/null
	for sh in bash zsh fish; do $(BUILD)/cm4bench completion $$sh > $(PKG)/completions/cm4bench.$$sh || exit 1; done
	$(BUILD)/cm4bench usbboot udev-rules > $(PKG)/60-cm4bench.rules
	$(GO) run ./cmd/mkdeb --binary $(BUILD)/cm4bench --man $(PKG)/man --completions $(PKG)/completions \
		--udev-rules $(PKG)/60-cm4bench.rules --version $(VERSION) --arch $$($(GO) env GOARCH) -o $(BUILD)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed; skipped"; fi

clean:
	rm -rf $(BUILD)
