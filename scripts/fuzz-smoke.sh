#!/usr/bin/env bash
# CI's fuzz step (issue 16): builds the fuzz targets of fuzz/ and runs each for a few seconds
# from its committed corpus, so a target that no longer builds, or a crash the corpus or a
# short run reaches, fails CI. Finding new bugs takes longer runs: README "Fuzzing".
#
# cargo-fuzz needs nightly's -Z flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
# FUZZ_SECONDS (default 10) is each target's run time.
#
# Built unoptimized and without AddressSanitizer (`--dev -s none`): from scratch on two
# cores that build takes 1 min 50 s where cargo-fuzz's default (optimized, ASan) took 9 min
# 37 s, a third of CI's 25-minute budget. A target then runs about a third as many inputs a
# second (`request`: 24,899 in 6 s against 79,893), which a smoke test can spare; ASan adds
# little to safe Rust parsers. The long runs of README "Fuzzing" keep cargo-fuzz's defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-10}"
flags=(--dev --sanitizer none)

cargo fuzz build "${flags[@]}"
for target in $(cargo fuzz list); do
    echo "fuzz-smoke: $target for ${seconds}s"
    # A scratch corpus directory: what the run adds is not committed (`cargo fuzz cmin` does
    # that on purpose); the committed seeds are read from fuzz/corpus/$target.
    scratch="$(mktemp -d)"
    log="$scratch.log"
    if ! cargo fuzz run "${flags[@]}" "$target" "$scratch" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz-smoke: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done' "$log" || true
    rm -rf "$scratch" "$log"
done
