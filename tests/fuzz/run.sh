#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in their own build dir and runs each on its committed
# corpus (tests/fuzz/corpus/<target>) for a bounded time; a crash, an ASan report, a hang past
# -timeout or an unexpected exception fails the run and leaves the input in <build>/findings/.
#   tests/fuzz/run.sh [SECONDS_PER_TARGET]   default 20 (scripts/test.sh runs 10)
# Environment: SVCCA_FUZZ_BUILD (build dir, default build-fuzz/), SVCCA_FUZZ_CXX (clang++-14),
# SVCCA_FUZZ_TARGETS (default "npy state cli"), SVCCA_FUZZ_CORE (a libsvcca_core.a of the main
# build to link, so that only the sources under test are compiled with clang; scripts/test.sh
# passes build/csrc/libsvcca_core.a; default: svcca_core is built with clang, instrumented).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${1:-20}
dir=${SVCCA_FUZZ_BUILD:-$root/build-fuzz}
cxx=${SVCCA_FUZZ_CXX:-clang++-14}
targets=${SVCCA_FUZZ_TARGETS:-npy state cli}

if ! command -v "$cxx" >/dev/null; then
  echo "tests/fuzz/run.sh: $cxx not found (apt-get install clang-14 libclang-rt-14-dev)" >&2
  exit 1
fi
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$cxx" \
  -DSVCCA_BUILD_FUZZERS=ON -DSVCCA_BUILD_TESTS=OFF -DSVCCA_BUILD_TOOLS=OFF \
  -DSVCCA_BUILD_TORCH_EXT=OFF -DSVCCA_BUILD_BENCHMARKS=OFF \
  -DSVCCA_FUZZ_CORE_LIBRARY="${SVCCA_FUZZ_CORE:-}" "${launcher[@]}" >/dev/null
build_targets=()
for t in $targets; do build_targets+=(--target "svcca_fuzz_$t"); done
cmake --build "$dir" -j"$(nproc)" "${build_targets[@]}"

# LeakSanitizer off: libtorch keeps static allocations alive to the end of the process.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:alloc_dealloc_mismatch=0}
mkdir -p "$dir/findings"
for t in $targets; do
  work=$(mktemp -d)  # new inputs go here, never into the committed corpus
  trap 'rm -rf "$work"' EXIT
  echo "== svcca_fuzz_$t: $seconds s" >&2
  # -rss_limit_mb: the readers must refuse what does not fit, never allocate it.
  "$dir/tests/fuzz/svcca_fuzz_$t" -max_total_time="$seconds" -max_len=8192 -timeout=20 \
    -rss_limit_mb=3072 -print_final_stats=1 -artifact_prefix="$dir/findings/$t-" \
    "$work" "$here/corpus/$t"
  rm -rf "$work"
  trap - EXIT
done
