#!/usr/bin/env bash
# Code size (.text) of the same minimal Cortex-M4F firmware with strata,
# linked_list_allocator and embedded-alloc, built with the `size` profile
# (opt-level "s", LTO). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p strata-firmware --profile size --target thumbv7em-none-eabihf \
    --bin size-strata --bin size-linked-list --bin size-embedded-alloc
text() {
    readelf -S -W "target/thumbv7em-none-eabihf/size/$1" |
        awk '{ for (i = 1; i <= NF; i++) if ($i == ".text") { print $(i + 4); exit } }' |
        { read -r hex; echo $((16#$hex)); }
}
s=$(text size-strata); l=$(text size-linked-list); e=$(text size-embedded-alloc)
echo "| minimal firmware (Vec of 100 u32) | .text bytes | vs strata |"
echo "|---|---|---|"
echo "| strata | $s | 1.00× |"
awk -v n="linked_list_allocator" -v x="$l" -v s="$s" 'BEGIN { printf "| %s | %d | %.2f× |\n", n, x, x / s }'
awk -v n="embedded-alloc (LLFF)" -v x="$e" -v s="$s" 'BEGIN { printf "| %s | %d | %.2f× |\n", n, x, x / s }'
