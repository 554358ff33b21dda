#!/usr/bin/env bash
# Instructions per allocator operation under valgrind --tool=callgrind, which
# counts instructions deterministically on noisy machines. Each peer runs the
# workload twice, with N and 2N operations; the difference cancels set-up
# (region zeroing, heap init) and leaves the cost of N operations.
#   scripts/callgrind-per-op.sh WORKLOAD N [PEER...]
set -euo pipefail
workload="$1"; n="$2"; shift 2
peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(strata talc rlsf buddy_system_allocator linked_list_allocator system)
bin="$(dirname "$0")/../target/release/strata-bench"
count() {
    local out
    out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" --only "$1" "$workload" "$2" 2>&1)
    local ir ops
    ir=$(grep -o 'Collected : [0-9]*' <<<"$out" | grep -o '[0-9]*$')
    ops=$(grep -o 'ops: [0-9]*' <<<"$out" | grep -o '[0-9]*$')
    echo "$ir $ops"
}
for p in "${peers[@]}"; do
    m=$n
    [ "$p" = linked_list_allocator ] && m=$(( n / 10 ))
    read -r i1 o1 < <(count "$p" "$m")
    read -r i2 o2 < <(count "$p" $(( 2 * m )))
    awk -v p="$p" -v i1="$i1" -v i2="$i2" -v o1="$o1" -v o2="$o2" \
        'BEGIN { printf "%s %.1f\n", p, (i2 - i1) / (o2 - o1) }'
done
