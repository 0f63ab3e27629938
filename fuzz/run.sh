#!/usr/bin/env sh
# Build and run every fuzz target for a bounded number of iterations, so CI can
# call it: a crash or a failed assertion exits non-zero and leaves the input in
# fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh                 # 20000 runs per target
#   RUNS=200000 fuzz/run.sh     # longer
#   fuzz/run.sh sql_guard       # some targets only
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# The first build compiles wsync and its dependencies with coverage
# instrumentation (several minutes); later runs reuse fuzz/target.
set -eu
# cargo-fuzz finds fuzz/ from the project root.
cd "$(dirname "$0")/.."
RUNS="${RUNS:-20000}"
TARGETS="${*:-sql_guard config_load cron_expr path_template retry_after pg_copy_binary pg_values json_text}"
for target in $TARGETS; do
    cargo +nightly fuzz build "$target"
done
for target in $TARGETS; do
    mkdir -p "fuzz/corpus/$target"
    echo "== $target: $RUNS runs"
    # The corpus grows in fuzz/corpus/TARGET (not committed); fuzz/seeds/TARGET
    # start it.
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -runs="$RUNS" -max_len=4096 -timeout=10
done
