#!/usr/bin/env bash
# `make bench`, strata-malloc: real programs on glibc's malloc and on
# strata (LD_PRELOAD), alternating, 3 runs each; median wall time and peak
# RSS (GNU time's maximum resident set size). Writes bench/MALLOC.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p strata-malloc
so="$PWD/target/release/libstrata_malloc.so"
cc -O2 -fno-builtin -pthread -o target/malloc-churn malloc/bench/churn.c
runs=${MALLOC_BENCH_RUNS:-3}

names=("CPython objects (4 threads)" "CPython sqlite3 (1M-row transaction)" "C churn (4 threads, contents checked)" "perl hash (2M keys)")
cmds=("python3 malloc/bench/objects.py"
      "python3 malloc/bench/sqlite_tx.py"
      "target/malloc-churn"
      "perl -e my%h;\$h{\"key\$_\"}=\$_*2for(1..2000000);die\"n\"unless(keys%h)==2000000")

# Prints "seconds kilobytes" for one run of $2 on allocator $1.
measure() {
    local out
    out=$(mktemp)
    if [ "$1" = strata ]; then
        env LD_PRELOAD="$so" PYTHONMALLOC=malloc /usr/bin/time -f "%e %M" -o "$out" $2 >/dev/null
    else
        env PYTHONMALLOC=malloc /usr/bin/time -f "%e %M" -o "$out" $2 >/dev/null
    fi
    cat "$out"
    rm -f "$out"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

table="| program | glibc s | strata s | time ratio | glibc peak RSS MiB | strata peak RSS MiB | RSS ratio |
|---|---|---|---|---|---|---|"
time_ratios=()
rss_ratios=()
for i in "${!names[@]}"; do
    g_t=(); g_m=(); s_t=(); s_m=()
    for _ in $(seq "$runs"); do
        read -r t m < <(measure glibc "${cmds[$i]}"); g_t+=("$t"); g_m+=("$m")
        read -r t m < <(measure strata "${cmds[$i]}"); s_t+=("$t"); s_m+=("$m")
    done
    gt=$(printf '%s\n' "${g_t[@]}" | median); st=$(printf '%s\n' "${s_t[@]}" | median)
    gm=$(printf '%s\n' "${g_m[@]}" | median); sm=$(printf '%s\n' "${s_m[@]}" | median)
    tr=$(awk -v a="$st" -v b="$gt" 'BEGIN {printf "%.2f", a / b}')
    rr=$(awk -v a="$sm" -v b="$gm" 'BEGIN {printf "%.2f", a / b}')
    time_ratios+=("$tr"); rss_ratios+=("$rr")
    table+="
| ${names[$i]} | $gt | $st | ${tr}× | $(awk -v k="$gm" 'BEGIN {printf "%.1f", k / 1024}') | $(awk -v k="$sm" 'BEGIN {printf "%.1f", k / 1024}') | ${rr}× |"
    echo "bench-malloc: ${names[$i]}: time ${tr}×, peak RSS ${rr}×"
done
mt=$(printf '%s\n' "${time_ratios[@]}" | median)
mr=$(printf '%s\n' "${rss_ratios[@]}" | median)
worst=$(printf '%s\n' "${time_ratios[@]}" | sort -n | tail -1)
verdict() { awk -v v="$1" -v g="$2" 'BEGIN {print (v <= g) ? "met" : "**not met**"}'; }
{
    echo "# strata-malloc against glibc's malloc"
    echo
    echo "Median of $runs runs each, alternating, same machine ($(nproc) cores), $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo "strata through \`LD_PRELOAD=libstrata_malloc.so\`; CPython with \`PYTHONMALLOC=malloc\` on both."
    echo
    echo "$table"
    echo
    echo "- median time ratio ${mt}× (goal ≤ 1.1×): $(verdict "$mt" 1.1); worst ${worst}× (goal ≤ 1.5× each): $(verdict "$worst" 1.5)"
    echo "- median peak RSS ratio ${mr}× (goal ≤ 1.15×): $(verdict "$mr" 1.15)"
} > bench/MALLOC.md
cat bench/MALLOC.md
