#!/usr/bin/env bash
# Quick start, command 2: install Debian packages, build, and run every test through CTest
# (the gtest suite, the pytest suite, and the find_package(svcca) consumer).
#   scripts/test.sh             Release build in build/
#   scripts/test.sh --sanitize  AddressSanitizer + UBSan build in build-sanitize/, C++ tests only
# After CTest, the fuzz targets run briefly: tests/fuzz/run.sh, SVCCA_FUZZ_SECONDS per target
# (default 10; 0 skips), built with clang in build-fuzz/.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SVCCA_PACKAGES+=(clang-14 libclang-rt-14-dev)  # tests/fuzz (libFuzzer)
svcca_install_deps
if [ "${1:-}" = "--sanitize" ]; then
  dir="$SVCCA_ROOT/build-sanitize"
  svcca_build "$dir" -DSVCCA_BUILD_TESTS=ON -DSVCCA_SANITIZE=ON -DSVCCA_BUILD_BENCHMARKS=OFF \
    -DSVCCA_BUILD_TOOLS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  # Any sanitizer report fails the run: ASan aborts on the first error, UBSan is built with
  # -fno-sanitize-recover; LeakSanitizer reports leaks at exit.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  "$dir/tests/svcca_tests"
else
  dir="$SVCCA_ROOT/build"
  svcca_build "$dir" -DSVCCA_BUILD_TESTS=ON
  ctest --test-dir "$dir" --output-on-failure -j"$(nproc)"
  fuzz_seconds=${SVCCA_FUZZ_SECONDS:-10}
  # Linking the library just built means only the sources under test are compiled with clang.
  if [ "$fuzz_seconds" != 0 ]; then
    SVCCA_FUZZ_BUILD="$SVCCA_ROOT/build-fuzz-ci" SVCCA_FUZZ_CORE="$dir/csrc/libsvcca_core.a" \
      "$SVCCA_ROOT/tests/fuzz/run.sh" "$fuzz_seconds"
  fi
fi
