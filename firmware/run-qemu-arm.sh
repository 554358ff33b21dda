#!/usr/bin/env bash
# Cargo runner for thumbv7em-none-eabihf: runs a firmware ELF on QEMU's
# mps2-an386 (Cortex-M4F) with semihosting, under a timeout. The firmware's
# semihosting exit status is QEMU's: 0 pass, anything else fail.
set -u
elf="$1"
shift
timeout_s="${STRATA_QEMU_TIMEOUT:-120}"
if ! command -v qemu-system-arm >/dev/null; then
    echo "run-qemu-arm: qemu-system-arm is missing; run 'make deps'" >&2
    exit 1
fi
timeout -k 5 "$timeout_s" qemu-system-arm -cpu cortex-m4 -machine mps2-an386 \
    -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native \
    -kernel "$elf" </dev/null
code=$?
case "$code" in
    0) exit 0 ;;
    124) echo "run-qemu-arm: firmware timed out after ${timeout_s}s (counted as a failure)" >&2; exit 1 ;;
    *) echo "run-qemu-arm: firmware exited with status $code (failure)" >&2; exit 1 ;;
esac
