#!/usr/bin/env bash
# Cargo runner for the thumb targets: runs a firmware ELF with semihosting,
# under a timeout, on QEMU's mps2-an386 (Cortex-M4F, thumbv7em-none-eabihf)
# or micro:bit (Cortex-M0 with 16 KiB of RAM, thumbv6m-none-eabi: the path
# names the target). The firmware's semihosting exit status is QEMU's: 0
# pass, anything else fail.
set -u
elf="$1"
shift
timeout_s="${STRATA_QEMU_TIMEOUT:-120}"
if ! command -v qemu-system-arm >/dev/null; then
    echo "run-qemu-arm: qemu-system-arm is missing; run 'make deps'" >&2
    exit 1
fi
case "$elf" in
    */thumbv6m-none-eabi/*) machine=(-cpu cortex-m0 -machine microbit) ;;
    *) machine=(-cpu cortex-m4 -machine mps2-an386) ;;
esac
timeout -k 5 "$timeout_s" qemu-system-arm "${machine[@]}" \
    -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native \
    -kernel "$elf" </dev/null
code=$?
case "$code" in
    0) exit 0 ;;
    124) echo "run-qemu-arm: firmware timed out after ${timeout_s}s (counted as a failure)" >&2; exit 1 ;;
    *) echo "run-qemu-arm: firmware exited with status $code (failure)" >&2; exit 1 ;;
esac
