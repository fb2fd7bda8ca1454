#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS_PER_TARGET (default 10), starting from
# the seed corpus in fuzz/corpus/<target>/; fails on the first crash, leak, timeout or
# out-of-memory, whose input libFuzzer leaves in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      # default: every target
#   FUZZ_RUNS=10000000 fuzz/run.sh 0                  # 10^7 executions each, no time limit
#
# Needs cargo-fuzz (`cargo install --locked cargo-fuzz@0.13.2`). It runs on the stable
# toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z flags cargo-fuzz passes.
# Targets are built with debug assertions (integer overflow panics) and without
# AddressSanitizer: the decoders are safe Rust, and without it they run 2-3 times faster.
# New inputs the fuzzer finds go to fuzz/target/work-corpus/<target>/ (not committed), so a
# later run goes on from there. Set FUZZ_SKIP_BURN=1 to leave out the targets that build
# burn (enrolment_token, wire_convert, csv_rows: minutes more to build).
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-10}
shift || true
light=(secagg_messages secagg_params update_bytes ledger_lines ledger_heads receipts privacy_log proto_messages)
burn=(enrolment_token wire_convert csv_rows)
if [ $# -gt 0 ]; then
    targets=("$@")
elif [ -n "${FUZZ_SKIP_BURN:-}" ]; then
    targets=("${light[@]}")
else
    targets=("${light[@]}" "${burn[@]}")
fi
features=()
for t in "${targets[@]}"; do
    for b in "${burn[@]}"; do
        if [ "$t" = "$b" ]; then features=(--features burn); fi
    done
done

export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none --debug-assertions "${features[@]}")
start=$SECONDS
cargo fuzz build "${flags[@]}"
echo "fuzz: built in $((SECONDS - start)) s"

summary=()
for t in "${targets[@]}"; do
    work=target/work-corpus/$t
    mkdir -p "$work" "corpus/$t"
    log=$(mktemp)
    echo "fuzz: $t for $seconds s${FUZZ_RUNS:+ or $FUZZ_RUNS runs}"
    if ! cargo fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
            -max_total_time="$seconds" -runs="${FUZZ_RUNS:--1}" -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    summary+=("$(printf '%-16s %12s runs %8s exec/s  %s  0 crashes' "$t" "$runs" "$rate" "$cov")")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
echo "fuzz: ${#targets[@]} targets, $seconds s${FUZZ_RUNS:+ or $FUZZ_RUNS runs} each, no crash ($((SECONDS - start)) s in all)"
