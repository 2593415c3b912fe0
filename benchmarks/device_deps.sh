#!/usr/bin/env bash
# Copies the build dependencies that a machine without Debian's packages lacks (the GPU machine of
# benchmarks/device_check.sh) into one small folder that travels with the tree (about 6 MB).
#   benchmarks/device_deps.sh [DIR]     default DIR: build-device-deps/ (ignored by .gitignore)
# Run it here, on the Debian machine, where scripts/common.sh's packages are installed. The
# folder is a CMake prefix (CMAKE_PREFIX_PATH=DIR):
#   include/      nlohmann/, fmt/, CLI/, spng.h
#   lib/          libspng.so.0 (the shared library itself: it needs only libc, libm and libz)
#   lib/cmake/fmt/fmt-config.cmake   fmt::fmt as header-only fmt (FMT_HEADER_ONLY), so no libfmt
#   share/cmake/  nlohmann_json/ and CLI11/ (Debian's relocatable configs)
#   src/googletest/  GoogleTest's sources: device_check.sh builds them with torch's ABI flag
# Google Benchmark and Gloo are not copied: device_check.sh configures with
# SVCCA_BUILD_BENCHMARKS=OFF, and the Gloo test is skipped where Gloo's headers are missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$root/build-device-deps}
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
libdir=/usr/lib/$multiarch

need() {
  if [ ! -e "$1" ]; then
    echo "device_deps.sh: $1 is missing: install $2 (scripts/common.sh lists the packages)" >&2
    exit 1
  fi
}
need /usr/include/nlohmann/json.hpp nlohmann-json3-dev
need /usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake nlohmann-json3-dev
need /usr/include/fmt/format-inl.h libfmt-dev
need /usr/include/CLI/CLI.hpp libcli11-dev
need /usr/share/cmake/CLI11/CLI11Config.cmake libcli11-dev
need /usr/include/spng.h libspng-dev
need "$libdir/libspng.so.0" libspng0
need /usr/src/googletest/CMakeLists.txt googletest

rm -rf "$dir"
mkdir -p "$dir/include" "$dir/lib/cmake/fmt" "$dir/share/cmake" "$dir/src"
cp -r /usr/include/nlohmann /usr/include/fmt /usr/include/CLI /usr/include/spng.h "$dir/include/"
# -L: the file itself under its soname (links do not travel reliably); CMake links it by path
# and puts lib/ on the build RPATH.
cp -L "$libdir/libspng.so.0" "$dir/lib/libspng.so.0"
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$dir/share/cmake/"
cp -r /usr/src/googletest "$dir/src/googletest"
v=$(sed -n 's/^#define FMT_VERSION \([0-9]*\).*/\1/p' /usr/include/fmt/core.h)
fmt_version="$((v / 10000)).$((v / 100 % 100)).$((v % 100))"
cat >"$dir/lib/cmake/fmt/fmt-config.cmake" <<EOF
# fmt $fmt_version (Debian's headers), header-only: written by benchmarks/device_deps.sh.
get_filename_component(_fmt_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET fmt::fmt)
  add_library(fmt::fmt INTERFACE IMPORTED)
  set_target_properties(fmt::fmt PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "\${_fmt_prefix}/include"
    INTERFACE_COMPILE_DEFINITIONS "FMT_HEADER_ONLY=1")
endif()
set(fmt_VERSION "$fmt_version")
set(fmt_FOUND TRUE)
EOF
cat >"$dir/README" <<EOF
Build dependencies for benchmarks/device_check.sh, copied from this Debian machine's packages by
benchmarks/device_deps.sh on $(date -u +%Y-%m-%d). Not committed; regenerate with that script.
EOF
du -sh "$dir"
