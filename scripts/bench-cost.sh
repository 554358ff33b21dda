#!/usr/bin/env bash
# The cost of strata's cargo features, for `make bench`: builds the benchmark
# with strata's event counters off, on (the default) and with the debug hooks,
# then lets one of the builds run strata's workloads on all three and write
# the table into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-cost
mkdir -p "$out"
build() {
    cargo build --release -q -p strata-bench --bin strata-bench "$@"
    cp target/release/strata-bench "$out/$name"
}
name=off build --no-default-features
name=stats build
name=debug build --features debug
"$out/stats" --cost "$out/off" "$out/stats" "$out/debug"
