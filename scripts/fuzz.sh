#!/usr/bin/env bash
# Run the load+decode fuzz target (fuzz/fuzz_targets/load_decode.rs) for N seconds (default 600)
# from the seed corpus, with a 2 GB RSS limit (an allocation beyond what an image needs is a
# finding). Uses cargo-fuzz on the stable toolchain without a sanitizer.
#   scripts/fuzz.sh [SECONDS [LIBFUZZER OPTIONS…]]   e.g. -fork=1 -ignore_crashes=1 to collect every
#   crash of a run instead of stopping at the first
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
secs=${1:-600}
mkdir -p corpus/load_decode
cp -n seeds/* corpus/load_decode/ 2>/dev/null || true
cargo fuzz run --sanitizer none load_decode corpus/load_decode -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1 "${@:2}"
