#!/usr/bin/env bash
# Footprint of the same minimal firmware (a heap over an 8 KiB static, a Vec
# of 100 u32) with strata, linked_list_allocator and embedded-alloc's two
# heaps, on the Cortex-M0 (thumbv6m-none-eabi) and the Cortex-M4F
# (thumbv7em-none-eabihf):
# - `.text` bytes, built with the `size` profile (opt-level "s", LTO);
# - the heap static: its bytes and its section (`.bss` costs no flash);
# - the stack `init` takes, and the most the whole run takes (`init`, a
#   `Vec` grown by 100 pushes, its free), measured by painting the stack in
#   QEMU (micro:bit, mps2-an386), built at opt-level 0, 3, "s" (with and
#   without LTO) and "z". A run whose stack reached its end (or that failed
#   otherwise) shows "failed".
# Prints Markdown tables, then checks strata against the targets of the
# README (exit 1 if one is missed).
set -euo pipefail
cd "$(dirname "$0")/.."
bins=(size-strata size-linked-list size-embedded-alloc size-embedded-alloc-tlsf)
names=("strata" "linked_list_allocator" "embedded-alloc (LLFF)" "embedded-alloc (TLSF)")
profiles=(fw-0 fw-3 size fw-s-nolto fw-z)
bin_args=()
for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done
section_size() { # elf section
    local hex
    hex=$(readelf -S -W "$1" | awk -v s="$2" '{ for (i = 1; i <= NF; i++) if ($i == s) { print $(i + 4); exit } }')
    echo $((16#$hex))
}
static_of() { # elf -> "bytes section"
    local hex t
    read -r hex t < <(nm -S -C "$1" | awk '$4 ~ /::HEAP$/ { print $2, tolower($3); exit }')
    case $t in b) t=.bss ;; d) t=.data ;; esac
    echo "$((16#$hex)) $t"
}
fail=0
for target in thumbv6m-none-eabi thumbv7em-none-eabihf; do
    for p in "${profiles[@]}"; do
        cargo build -q -p strata-firmware --profile "$p" --target "$target" "${bin_args[@]}"
    done
    declare -A text stat stack run
    for i in "${!bins[@]}"; do
        b=${bins[$i]}
        text[$b]=$(section_size "target/$target/size/$b" .text)
        stat[$b]=$(static_of "target/$target/size/$b")
        for p in "${profiles[@]}"; do
            if out=$(firmware/run-qemu-arm.sh "target/$target/$p/$b" 2>&1); then
                stack[$b,$p]=$(sed -n 's/^init stack: //p' <<<"$out")
                run[$b,$p]=$(sed -n 's/^run stack: //p' <<<"$out")
            else
                stack[$b,$p]=failed
                run[$b,$p]=failed
            fi
        done
    done
    case $target in
        thumbv6m*) core="Cortex-M0 (thumbv6m-none-eabi, QEMU micro:bit)" ;;
        *) core="Cortex-M4F (thumbv7em-none-eabihf, QEMU mps2-an386)" ;;
    esac
    echo
    echo "**$core**"
    echo
    echo "| allocator | .text (s, LTO) | heap static | init stack: opt 0 | 3 | s | s, no LTO | z | run stack: opt 0 | 3 | s | s, no LTO | z |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for i in "${!bins[@]}"; do
        b=${bins[$i]}
        read -r bytes sec <<<"${stat[$b]}"
        row="| ${names[$i]} | ${text[$b]} | $bytes B in \`$sec\` |"
        for p in "${profiles[@]}"; do row+=" ${stack[$b,$p]} |"; done
        for p in "${profiles[@]}"; do row+=" ${run[$b,$p]} |"; done
        echo "$row"
    done
    # The targets: .text at most 2x embedded-alloc's TLSF heap, the heap
    # static no larger than its one and in .bss, init under 256 bytes of
    # stack at every level, and the whole run within 4 KiB of stack at
    # every level (a quarter of the micro:bit's RAM).
    read -r sbytes ssec <<<"${stat[size-strata]}"
    read -r tbytes _ <<<"${stat[size-embedded-alloc-tlsf]}"
    echo
    check() { if eval "$2"; then echo "- $1: met"; else echo "- $1: **not met**"; fail=1; fi; }
    check ".text ${text[size-strata]} ≤ 2 × ${text[size-embedded-alloc-tlsf]}" \
        "(( ${text[size-strata]} <= 2 * ${text[size-embedded-alloc-tlsf]} ))"
    check "heap static $sbytes B ≤ $tbytes B, in .bss" "(( sbytes <= tbytes )) && [[ $ssec == .bss ]]"
    worst=0 worst_run=0 failed_runs=0
    for p in "${profiles[@]}"; do
        # A failed run has no stack figures (both read "failed").
        if [[ ${run[size-strata,$p]} == failed ]]; then failed_runs=$((failed_runs + 1)); continue; fi
        (( stack[size-strata,$p] > worst )) && worst=${stack[size-strata,$p]}
        (( run[size-strata,$p] > worst_run )) && worst_run=${run[size-strata,$p]}
    done
    check "every run of strata's firmware passes" "(( failed_runs == 0 ))"
    check "init stack $worst B < 256 B at every level" "(( worst < 256 ))"
    check "run stack $worst_run B ≤ 4096 B at every level" "(( worst_run <= 4096 ))"
    unset text stat stack run
done
exit $fail
