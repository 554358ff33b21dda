#!/usr/bin/env bash
# Cargo runner for the x86_64-unknown-none target: boots a kernel ELF in QEMU
# through its PVH note, serial console on stdio, and turns the isa-debug-exit
# code into a process status. Arguments after the ELF reach the kernel as its
# command line (PVH cmdline).
#
#   exit 33  ->  0  (the kernel called exit_success: (0x10 << 1) | 1)
#   timeout  ->  1  (a hung kernel fails fast; STRATA_QEMU_TIMEOUT seconds)
#   other    ->  1  (exit_failure, a triple fault with -no-reboot, a QEMU error)
#
# Four CPUs unless STRATA_SMP says otherwise (STRATA_SMP=1: the boot CPU alone).
set -u
elf="$1"
shift
timeout_s="${STRATA_QEMU_TIMEOUT:-120}"
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "run-qemu: qemu-system-x86_64 is missing; run 'make deps' (or 'make run')" >&2
    exit 1
fi
timeout -k 5 "$timeout_s" qemu-system-x86_64 \
    -machine pc -cpu qemu64 -m 256M -smp "${STRATA_SMP:-4}" \
    -kernel "$elf" -append "$*" \
    -serial stdio -display none -monitor none -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    </dev/null ${STRATA_QEMU_ARGS:-}
code=$?
case "$code" in
    33) exit 0 ;;
    124) echo "run-qemu: kernel timed out after ${timeout_s}s (counted as a failure)" >&2; exit 1 ;;
    *) echo "run-qemu: QEMU exited with status $code (failure)" >&2; exit 1 ;;
esac
