# cm4bench: see README.md. `make run` and `make test` work on a fresh machine.
GO      ?= go
BUILD   ?= build
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/cm4bench/cm4bench/cmd/cm4bench/cli.Version=$(VERSION)
# Packages that must build without cgo (everything but the gousb glue).
NOCGO_PKGS := $(shell $(GO) list ./... 2>/dev/null | grep -v /usbboot/gousbdev)

.PHONY: all run test bench build lint deps clean libusbfake

all: build

deps:
	@scripts/deps.sh

build: deps
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BUILD)/cm4bench ./cmd/cm4bench

run: build
	$(BUILD)/cm4bench --help
	@echo
	@echo '== Example: the bootloader config of a real CM4 EEPROM image'
	$(BUILD)/cm4bench eeprom info ../shared/eeprom-vectors/pieeprom-2026-05-17.bin
	$(BUILD)/cm4bench eeprom show ../shared/eeprom-vectors/pieeprom-2026-05-17.bin

test: deps libusbfake
	CGO_ENABLED=0 $(GO) vet $(NOCGO_PKGS)
	LIBUSBFAKE_SO=$(abspath $(LIBUSBFAKE)) $(GO) test -count=1 -timeout 40m ./...

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

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed; skipped"; fi

clean:
	rm -rf $(BUILD)
