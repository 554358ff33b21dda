# strata — the two commands are `make run` and `make test`; `make help` lists all.
CARGO ?= cargo
KERNEL_TARGET := x86_64-unknown-none
FIRMWARE_TARGET := thumbv7em-none-eabihf
FIRMWARE_V6_TARGET := thumbv6m-none-eabi

.PHONY: help deps run test test-host test-kernel test-firmware test-malloc check fmt clippy build doc bench bench-kernel firmware-size miri fuzz clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

deps: ## Install what is missing: Rust targets/components, QEMU (apt-get)
	@bash scripts/install-deps.sh

run: deps ## Boot the kernel in QEMU: boot report of every layer, then exit
	$(CARGO) krun

test: deps test-host test-malloc test-kernel test-firmware ## Every test: host tests, the C malloc, the kernel suites in QEMU, the firmware in QEMU
	@echo "make test: all suites passed"

test-host: ## Host tests (plain `cargo test` at the root), the heap-facing ones in debug mode, then the suites as 32-bit x86 programs
	$(CARGO) test
	$(CARGO) test --features debug --test debug --test global_alloc --test cache --test unsized
	$(CARGO) test --lib --no-default-features --features tlsf,pools
	$(CARGO) test --no-default-features --test firmware_build --test footprint
	$(CARGO) test --features std --test thread_cache --test thread_cache_misuse --test thread_cache_model --test global_alloc --test misuse --test unsized
	$(CARGO) test --features os --test os_source
	$(CARGO) test --features os --doc
	$(CARGO) test --target i686-unknown-linux-gnu
	$(CARGO) test --target i686-unknown-linux-gnu --features std --test thread_cache --test thread_cache_misuse --test thread_cache_model --test misuse --test unsized
	$(CARGO) test --target i686-unknown-linux-gnu --features os --test os_source

test-malloc: ## strata-malloc under C programs (preloaded and linked), CPython's own tests (PYTHONMALLOC=malloc), C firmware on QEMU
	bash malloc/tests/run.sh

test-kernel: ## Kernel test suites in QEMU on 4 CPUs, one boot per suite; the boot and SMP suites again on one CPU; the heap and SMP suites without debug (per-CPU caches on)
	$(CARGO) ktest
	STRATA_SMP=1 $(CARGO) ktest --test boot --test smp
	$(CARGO) ktest --no-default-features --test heap --test smp

test-firmware: ## The firmware on qemu-system-arm: Cortex-M4F (mps2-an386) plain and in debug mode, Cortex-M0 (micro:bit, 16 KiB RAM) at opt-level z, then the footprint targets (make firmware-size); fails if any check fails
	$(CARGO) fwrun
	$(CARGO) fwrun --features debug
	$(CARGO) run -p strata-firmware --bin strata-firmware --profile fw-z --target $(FIRMWARE_V6_TARGET)
	@bash scripts/firmware-size.sh

check: deps fmt clippy build doc ## fmt, clippy and builds for every target

fmt: ## rustfmt check
	$(CARGO) fmt --all -- --check

clippy: ## clippy on the host, kernel and firmware targets, warnings denied
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features debug -- -D warnings
	$(CARGO) clippy --lib --tests --no-default-features -- -D warnings
	$(CARGO) clippy --all-targets --features std -- -D warnings
	$(CARGO) clippy --all-targets --features std,os --target i686-unknown-linux-gnu -- -D warnings
	$(CARGO) clippy -p strata-boot --target $(KERNEL_TARGET) --bins --tests -- -D warnings
	$(CARGO) clippy -p strata-boot --no-default-features --target $(KERNEL_TARGET) --bins --tests -- -D warnings
	$(CARGO) clippy --lib --no-default-features --features cpu-caches --target $(KERNEL_TARGET) -- -D warnings
	$(CARGO) clippy --lib --no-default-features --target $(FIRMWARE_TARGET) -- -D warnings
	$(CARGO) clippy --lib --no-default-features --features critical-section --target $(FIRMWARE_V6_TARGET) -- -D warnings
	$(CARGO) clippy -p strata-firmware --target $(FIRMWARE_TARGET) --bins -- -D warnings
	$(CARGO) clippy -p strata-firmware --features debug --target $(FIRMWARE_TARGET) --bins -- -D warnings
	$(CARGO) clippy -p strata-firmware --target $(FIRMWARE_V6_TARGET) --bins -- -D warnings
	$(CARGO) clippy --lib --no-default-features --features critical-section,tlsf,pools,stats,debug --target $(FIRMWARE_V6_TARGET) -- -D warnings
	$(CARGO) clippy -p strata-bench --all-targets -- -D warnings
	$(CARGO) clippy -p strata-malloc -- -D warnings
	$(CARGO) clippy -p strata-malloc --target $(FIRMWARE_TARGET) -- -D warnings
	$(CARGO) clippy --all-targets --features os -- -D warnings

build: ## Build the library for host, kernel and firmware targets, and the kernel
	$(CARGO) build --lib
	$(CARGO) build --lib --target $(KERNEL_TARGET)
	$(CARGO) build --lib --no-default-features --target $(FIRMWARE_TARGET)
	$(CARGO) build --lib --no-default-features --features critical-section --target $(FIRMWARE_TARGET)
	$(CARGO) build --lib --no-default-features --features critical-section --target $(FIRMWARE_V6_TARGET)
	$(CARGO) build -p strata-firmware --target $(FIRMWARE_TARGET) --bins
	$(CARGO) build -p strata-firmware --target $(FIRMWARE_V6_TARGET) --bins
	$(CARGO) build -p strata-malloc
	$(CARGO) kbuild

doc: ## API docs (the README is the crate docs), warnings denied
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --lib --features debug,std,os
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps -p strata-malloc

bench: ## Benchmarks against the peers (release build): speed, fill sweep, worst case per call, threads, feature cost, strata-malloc vs glibc
	$(CARGO) build --release -p strata-bench --bins
	$(CARGO) run --release -p strata-bench --bin strata-bench
	$(CARGO) run --release -p strata-bench --bin fill-sweep
	$(CARGO) run --release -p strata-bench --bin mid-size
	$(CARGO) run --release -p strata-bench --bin latency
	bash scripts/bench-cost.sh
	bash scripts/bench-malloc.sh

bench-kernel: deps ## In-kernel benchmark: full stack vs linked_list_allocator on 1, 2 and 4 CPUs (instructions under -icount, then wall clock)
	STRATA_QEMU_ARGS="-icount shift=0,sleep=off" $(CARGO) run --release -p strata-boot --no-default-features --bin strata-bench-kernel --target x86_64-unknown-none
	$(CARGO) run --release -p strata-boot --no-default-features --bin strata-bench-kernel --target x86_64-unknown-none -- wall

miri: ## Unit, layer, typed-cache and thread-cache tests under Miri (nightly; not part of `make test`: ~20 min)
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	rustup component add --toolchain nightly miri rust-src
	MIRIFLAGS="-Zmiri-ignore-leaks" $(CARGO) +nightly miri test --lib --test layers --test deferred_frees --test cache --test quick_paths
	MIRIFLAGS="-Zmiri-ignore-leaks" $(CARGO) +nightly miri test --features std --test thread_cache --test thread_cache_misuse

# Each target runs FUZZ_SECONDS (default 30 min); both at once on two cores.
FUZZ_SECONDS ?= 1800
fuzz: ## Coverage-guided fuzzing of Heap and LockedHeap against a shadow model (nightly, cargo-fuzz; not part of `make test`)
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz
	cd fuzz && $(CARGO) +nightly fuzz build -a
	cd fuzz && ( $(CARGO) +nightly fuzz run -a heap -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 & \
		$(CARGO) +nightly fuzz run -a locked_heap -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096; \
		s=$$?; wait $$! && exit $$s )

firmware-size: ## Footprint of a minimal firmware (M0, M4F): .text, heap static, init's stack and the whole run's at each opt-level; strata vs linked_list_allocator and embedded-alloc
	@bash scripts/firmware-size.sh

clean: ## Remove build output
	$(CARGO) clean
