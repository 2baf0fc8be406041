#!/usr/bin/env bash
# Fuzzes the parsers on the proxy's path with cargo fuzz (libFuzzer, nightly): path, query
# and header rewriting (checked against the `url` crate), the SSE and JSON usage readers,
# and link rewriting. Each target runs for SECONDS (default 60); any crash fails the run
# and leaves its input in fuzz/artifacts/<target>/. Corpora persist in fuzz/corpus/.
#
#   scripts/fuzz.sh            # 60 s per target (what .ci/run does)
#   scripts/fuzz.sh 1800       # the long run whose figures go in the issue note
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
export CARGO_TARGET_DIR="${KEYWARD_FUZZ_TARGET_DIR:-$HOME/.cache/keyward-fuzz-target}"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "!!! cargo fuzz needs a nightly toolchain (rustup toolchain list shows none)" >&2
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2

targets=(rewrite sse_usage json_usage links)
cargo +nightly fuzz build -O
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log="$CARGO_TARGET_DIR/fuzz-$target.log"
  if ! cargo +nightly fuzz run -O "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "!!! fuzz target $target crashed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  echo "fuzz $target: ${runs:-?} executions in ${seconds} s, 0 crashes"
done
