#!/usr/bin/env bash
# Installs what strata's builds and tests need, only where it is missing:
#   - the Rust targets and components listed in rust-toolchain.toml (rustup
#     installs the toolchain from that file, but not always its targets);
#   - QEMU for x86_64 and Arm, C compilers (host, and Arm with picolibc) and
#     CPython's test suite (for strata-malloc's tests) from Debian's packages
#     (apt-get).
# Safe to run repeatedly; prints one line per thing it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=$(sed -n 's/^targets *= *\[\(.*\)\]/\1/p' rust-toolchain.toml | tr -d '"' | tr ',' ' ')
installed=$(rustup target list --installed)
for t in $targets; do
    if ! grep -qx "$t" <<<"$installed"; then
        echo "install-deps: rustup target add $t"
        rustup target add "$t"
    fi
done
components=$(rustup component list --installed)
for c in clippy rustfmt; do
    if ! grep -q "^$c" <<<"$components"; then
        echo "install-deps: rustup component add $c"
        rustup component add "$c"
    fi
done

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v qemu-system-arm >/dev/null || missing+=(qemu-system-arm)
# strata-malloc's tests: a C compiler, and CPython with its own test suite.
command -v cc >/dev/null || missing+=(gcc libc6-dev)
# The host tests and strata-malloc's C tests also run as 32-bit x86
# programs (i686), linked and compiled by `cc -m32`.
printf 'int main(void) { return 0; }\n' | cc -m32 -x c - -o /dev/null 2>/dev/null || missing+=(gcc-multilib)
# tests/footprint.rs reads the test binary's symbols with nm.
command -v nm >/dev/null || missing+=(binutils)
if ! command -v python3 >/dev/null; then
    missing+=(python3)
fi
# ... and for its firmware test, the Arm cross compiler and picolibc.
command -v arm-none-eabi-gcc >/dev/null || missing+=(gcc-arm-none-eabi)
[ -e /usr/lib/picolibc/arm-none-eabi/picolibc.specs ] || missing+=(picolibc-arm-none-eabi)
if ! python3 -c 'import test.libregrtest' 2>/dev/null; then
    version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3.11)
    missing+=("libpython$version-testsuite")
fi
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "install-deps: apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    if ! $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        # A newer qemu-utils (e.g. from backports) can block Debian's QEMU 7.2
        # system emulators; align it with the release's version and retry.
        echo "install-deps: retrying with qemu-utils from the Debian release"
        release=$(. /etc/os-release && echo "$VERSION_CODENAME")
        $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades \
            "${missing[@]}" "qemu-utils/$release"
    fi
fi
