#!/usr/bin/env bash
# One run on a CUDA machine with PyTorch 2.x and none of Debian's packages (the device tool's GPU
# machine; benchmarks/README.md, "device_check.sh", says how to send it there): configure against
# that Python's torch, build, run the C++ tests and the Python tests (their CUDA cases run there),
# then benchmarks/gpu_bench.py. Each stage has its own timeout and is recorded whatever happens;
# a failed stage does not stop the next one (a stage whose inputs are missing reports that).
#
#   benchmarks/device_check.sh
#
# Writes under $OUT (default ./out): device_check.log (this output), results.json (every stage:
# status, exit code, seconds, timeout; gpu_bench's results inlined), build.log (CMake's output),
# gtest.xml, pytest.xml, gpu_bench.json. Exit status 0 when every stage passed.
# benchmarks/device_check.sh --digest prints the sources' digest that results.json records.
#
# Environment:
#   PYTHON                  the Python with torch (default python3)
#   SVCCA_DEPS              build-device-deps/ by default (benchmarks/device_deps.sh makes it);
#                           without it the packages must be installed (Debian: scripts/common.sh)
#   SVCCA_DEVICE_BUILD      build folder (default build-device/)
#   SVCCA_DEVICE_BUDGET     seconds for the whole run (default 560: the device tool stops a
#                           command at 600); each stage gets min(its timeout, what is left)
#   SVCCA_DEVICE_STAGES     comma-separated subset, in this order: env, gtest, configure, build,
#                           cpp_tests, gpu_bench, python_tests, distributed; cli_tests (tests/cli,
#                           CPU only, long) runs only when named
#   SVCCA_CXX_STANDARD      CMAKE_CXX_STANDARD (default: 20 for torch >= 2.12, whose headers need
#                           it, else the project's C++17)
#   SVCCA_PYTEST_ARGS       extra pytest arguments (e.g. "-k cuda", "-n 8")
#   SVCCA_GPU_BENCH_ARGS    extra gpu_bench.py arguments (e.g. "--skip-resnet")
#   JOBS                    build jobs (default nproc)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$ROOT/benchmarks/device_check.sh"
export ROOT
# Absolute paths: stages change directory.
OUT=$(realpath -m "${OUT:-$ROOT/out}")
DEPS=$(realpath -m "${SVCCA_DEPS:-$ROOT/build-device-deps}")
BUILD=$(realpath -m "${SVCCA_DEVICE_BUILD:-$ROOT/build-device}")
export OUT DEPS BUILD
export PY=${PYTHON:-python3}
export GTEST_PREFIX=$BUILD-gtest/install
export JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"

# ---- Stage bodies (each runs in its own process, under its own timeout) ---------------------

stage_env() {
  date -u
  uname -a
  echo "cores: $(nproc), memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  for t in "$PY" cmake ninja make c++ g++ nvcc pkg-config timeout; do
    printf '%-10s %s\n' "$t" "$(command -v "$t" || echo MISSING)"
  done
  cmake --version | head -1
  c++ --version | head -1
  "$PY" - <<'EOF'
import os, sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
print("cmake_prefix_path", torch.utils.cmake_prefix_path)
print("cxx11_abi", int(torch._C._GLIBCXX_USE_CXX11_ABI))
inc = os.path.join(os.path.dirname(torch.__file__), "include")
for d in ("gloo", "fmt", "nlohmann", "spng.h", "CLI", "gtest"):
    print("torch/include/%s:" % d, "present" if os.path.exists(os.path.join(inc, d)) else "absent")
try:
    import torchvision
    print("torchvision", torchvision.__version__)
except Exception as e:
    print("torchvision: not importable:", e)
for m in ("numpy", "pytest", "hypothesis", "xdist", "pytest_timeout"):
    try:
        mod = __import__(m)
        print(m, getattr(mod, "__version__", "present"))
    except Exception as e:
        print(m, "MISSING", e)
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False")
EOF
  local rc=$?
  if [ -d "$DEPS" ]; then
    echo "deps: $DEPS ($(du -sh "$DEPS" | cut -f1))"
  else
    echo "deps: $DEPS absent (using installed packages)"
  fi
  return $rc
}

torch_abi() { "$PY" -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))'; }

# GoogleTest from the copied sources, with torch's _GLIBCXX_USE_CXX11_ABI (gtest's API passes
# std::string: a mismatch fails at link time).
stage_gtest() {
  if [ ! -f "$DEPS/src/googletest/CMakeLists.txt" ]; then
    echo "no $DEPS/src/googletest: using an installed GoogleTest"
    return 0
  fi
  local abi
  abi=$(torch_abi) || return 1
  echo "GoogleTest with -D_GLIBCXX_USE_CXX11_ABI=$abi into $GTEST_PREFIX"
  cmake -S "$DEPS/src/googletest" -B "$BUILD-gtest" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON -DCMAKE_INSTALL_PREFIX="$GTEST_PREFIX" \
    -DCMAKE_CXX_FLAGS="-D_GLIBCXX_USE_CXX11_ABI=$abi" -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
    >>"$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD-gtest" -j"$JOBS" >>"$OUT/build.log" 2>&1 &&
    cmake --install "$BUILD-gtest" >>"$OUT/build.log" 2>&1 &&
    ls "$GTEST_PREFIX"/lib*/cmake/GTest/GTestConfig.cmake
}

stage_configure() {
  local torch_prefix std gen=() args=()
  torch_prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  std=${SVCCA_CXX_STANDARD:-$("$PY" -c 'import torch
v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
print(20 if v >= (2, 12) else "")')}
  command -v ninja >/dev/null && gen=(-G Ninja)
  [ -n "$std" ] && args+=(-DCMAKE_CXX_STANDARD="$std")
  if [ -d "$DEPS" ]; then
    args+=(-DCMAKE_PREFIX_PATH="$torch_prefix;$DEPS;$GTEST_PREFIX")
    # No pkg-config there: libspng by path (the top-level CMakeLists then skips pkg-config).
    args+=(-DSPNG_INCLUDE_DIRS="$DEPS/include" -DSPNG_LINK_LIBRARIES="$DEPS/lib/libspng.so.0")
  else
    args+=(-DCMAKE_PREFIX_PATH="$torch_prefix")
  fi
  echo "cmake ${gen[*]} ${args[*]}"
  cmake -S "$ROOT" -B "$BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DSVCCA_BUILD_TESTS=ON \
    -DSVCCA_BUILD_BENCHMARKS=OFF -DSVCCA_PYTHON="$(command -v "$PY")" "${args[@]}" \
    >>"$OUT/build.log" 2>&1
  local rc=$?
  grep -E '^(CMake (Error|Warning)|-- (Found|Could NOT|svcca))' "$OUT/build.log" | tail -40
  return $rc
}

# Everything (the tools and examples too: that they compile against this torch is part of the
# check), in one parallel build that keeps going past a failed object, so that one run lists
# every error and a failure stops only the targets that need that object.
stage_build() {
  local keep=(-k)
  [ -f "$BUILD/build.ninja" ] && keep=(-k 0)
  cmake --build "$BUILD" -j"$JOBS" -- "${keep[@]}" >>"$OUT/build.log" 2>&1
  local rc=$?
  grep -E 'error:|Error [0-9]|FAILED:|undefined reference' "$OUT/build.log" | head -60
  return $rc
}

stage_cpp_tests() {
  [ -x "$BUILD/tests/svcca_tests" ] || {
    echo "no $BUILD/tests/svcca_tests (build failed)"; return 2; }
  local rc=0
  (cd "$BUILD/tests" && ./svcca_tests --gtest_brief=1 --gtest_output=xml:"$OUT/gtest.xml") || rc=$?
  [ -s "$OUT/gtest.xml" ] || { echo "no gtest.xml (svcca_tests exit $rc)"; return 1; }
  # The CUDA cases must have run: a skip here while torch sees the GPU means libtorch_cuda was not
  # loaded into the test program (linker --as-needed), not that there is no GPU.
  if ! "$PY" - "$OUT/gtest.xml" <<'EOF'
import sys, xml.etree.ElementTree as ET
import torch
cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
skipped = [c for c in cases if c.find("skipped") is not None or c.get("result") == "skipped"]
failed = [c for c in cases if c.find("failure") is not None]
cuda = [c for c in cases if "cuda" in (c.get("name", "") + c.get("value_param", "")).lower()]
cuda_skipped = [c for c in cuda if c in skipped]
print("gtest: %d cases, %d failed, %d skipped; %d CUDA cases, %d of them skipped"
      % (len(cases), len(failed), len(skipped), len(cuda), len(cuda_skipped)))
for c in failed[:40]:
    print("  FAILED %s.%s" % (c.get("classname"), c.get("name")))
if torch.cuda.is_available() and (not cuda or cuda_skipped):
    sys.exit("CUDA cases did not run although torch.cuda.is_available() (libtorch_cuda not "
             "loaded by svcca_tests?)")
EOF
  then
    [ $rc = 0 ] && rc=1
  fi
  return $rc
}

stage_distributed() {
  [ -x "$BUILD/tests/svcca_stream_distributed" ] || {
    echo "no svcca_stream_distributed (not built: see configure / build)"; return 2; }
  "$BUILD/tests/svcca_stream_distributed"
}

pytest_cmd() {
  local extra=()
  "$PY" -c 'import pytest_timeout' 2>/dev/null && extra+=(--timeout=300)
  # shellcheck disable=SC2206
  extra+=(${SVCCA_PYTEST_ARGS:-})
  PYTHONPATH="$BUILD/torch_ext/python" SVCCA_RUN_SCRIPT="$BUILD/tests/svcca_run_script" \
    SVCCA_GOLDEN_DIR="$ROOT/tests/golden" PYTHONUNBUFFERED=1 \
    "$PY" -m pytest -q -rfEs -p no:cacheprovider "${extra[@]}" "$@"
}

stage_python_tests() {
  [ -f "$BUILD/torch_ext/python/svcca/libsvcca_ops.so" ] || {
    echo "no $BUILD/torch_ext/python/svcca/libsvcca_ops.so (build failed)"; return 2; }
  cd "$ROOT" && pytest_cmd tests/python --junitxml="$OUT/pytest.xml"
}

stage_cli_tests() {
  [ -x "$BUILD/tools/svcca-inspect" ] || {
    echo "no $BUILD/tools/svcca-inspect (build failed)"; return 2; }
  cd "$ROOT" && SVCCA_INSPECT="$BUILD/tools/svcca-inspect" \
    SVCCA_WRITE_TENSORS="$BUILD/tests/svcca_cli_write_tensors" pytest_cmd tests/cli
}

stage_gpu_bench() {
  [ -f "$BUILD/torch_ext/python/svcca/libsvcca_ops.so" ] || {
    echo "no $BUILD/torch_ext/python/svcca/libsvcca_ops.so (build failed)"; return 2; }
  # shellcheck disable=SC2086
  PYTHONPATH="$BUILD/torch_ext/python" PYTHONUNBUFFERED=1 \
    "$PY" "$ROOT/benchmarks/gpu_bench.py" --out "$OUT" ${SVCCA_GPU_BENCH_ARGS:-}
}

# Which sources ran (the copy on the device machine has no .git; what .gitignore ignores is left
# out, as the device tool leaves it behind): benchmarks/device_check.sh --digest prints the same
# value for a checkout here.
sources_digest() {
  (cd "$ROOT" && find CMakeLists.txt cmake csrc torch_ext tools tests examples benchmarks models \
    -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*/.pytest_cache/*' \
    ! -path '*/out/*' ! -path '*/build*/*' -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum | sha256sum | cut -c1-16)
}

if [ "${1:-}" = "__stage" ]; then
  "stage_$2"
  exit $?
elif [ "${1:-}" = "--digest" ]; then
  sources_digest
  exit 0
fi

# ---- Driver ---------------------------------------------------------------------------------

# One run, one set of files: the logs start empty.
: >"$OUT/build.log"
exec > >(tee "$OUT/device_check.log") 2>&1
tee_pid=$!
budget=${SVCCA_DEVICE_BUDGET:-560}
digest=$(sources_digest)
start=$(date +%s)
deadline=$((start + budget))
all_stages=env,gtest,configure,build,cpp_tests,gpu_bench,python_tests,distributed
stages=${SVCCA_DEVICE_STAGES:-$all_stages}
# name:timeout, in run order: the GPU benchmarks before the long CPU-bound Python suite, which
# gets what is left.
plan="env:60 gtest:120 configure:150 build:360 cpp_tests:150 gpu_bench:240 python_tests:300
      distributed:60 cli_tests:400"
records=()
all_ok=1
bench_ran=0

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr '\n\t' '  ')"; }

write_results() {
  local f="$OUT/results.json" bench=null
  [ "$bench_ran" = 1 ] && [ -s "$OUT/gpu_bench.json" ] && bench=$(cat "$OUT/gpu_bench.json")
  {
    printf '{\n "script": "benchmarks/device_check.sh",\n "commit": %s,\n "sources_digest": %s,\n' \
      "$(json_str "$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)")" \
      "$(json_str "$digest")"
    printf ' "started": %s,\n "budget_s": %d,\n "elapsed_s": %d,\n "ok": %s,\n "stages": [\n' \
      "$(json_str "$(date -u -d "@$start" +%FT%TZ)")" "$budget" $(($(date +%s) - start)) \
      "$([ $all_ok = 1 ] && echo true || echo false)"
    local i
    for i in "${!records[@]}"; do
      printf '  %s%s\n' "${records[$i]}" "$([ "$i" -lt $((${#records[@]} - 1)) ] && echo ,)"
    done
    printf ' ],\n "gpu_bench": %s\n}\n' "$bench"
  } >"$f.tmp" && mv "$f.tmp" "$f"
}

echo "device_check.sh: $(date -u +%FT%TZ), sources $digest, budget ${budget}s, stages $stages"
echo "out: $OUT"
for entry in $plan; do
  name=${entry%%:*}
  limit=${entry##*:}
  case ",$stages," in *",$name,"*) ;; *) continue ;; esac
  left=$((deadline - $(date +%s) - 25))
  t=$((limit < left ? limit : left))
  echo
  if [ "$t" -lt 5 ]; then
    echo "==== $name: skipped, out of time (${left}s left of the ${budget}s budget) ===="
    records+=("{\"stage\": \"$name\", \"status\": \"skipped\", \"why\": \"out of time\"}")
    all_ok=0
    write_results
    continue
  fi
  echo "==== $name (timeout ${t}s) ===="
  case $name in  # no stale results from an earlier run in the same folder
    cpp_tests) rm -f "$OUT/gtest.xml" ;;
    python_tests) rm -f "$OUT/pytest.xml" ;;
    gpu_bench) rm -f "$OUT/gpu_bench.json" && bench_ran=1 ;;
  esac
  t0=$(date +%s)
  # SIGINT first (to the stage's whole process group): pytest then still writes its summary and
  # pytest.xml, gpu_bench.py its JSON; whatever is left gets SIGKILL 20 s later.
  timeout --signal=INT --kill-after=20 "$t" "$SELF" __stage "$name"
  rc=$?
  secs=$(($(date +%s) - t0))
  echo
  if [ $rc = 0 ]; then
    status=passed
  elif [ $rc = 124 ] || [ $rc = 137 ]; then
    status=timeout
  else
    status=failed
  fi
  [ $rc = 0 ] || all_ok=0
  echo "---- $name: $status (exit $rc, ${secs}s)"
  records+=("$(printf '{"stage": "%s", "status": "%s", "rc": %d, "seconds": %d, "timeout_s": %d}' \
    "$name" "$status" "$rc" "$secs" "$t")")
  write_results
done
write_results
echo
summary="some stages failed"
[ $all_ok = 1 ] && summary="all stages passed"
echo "device_check.sh: $summary; $(($(date +%s) - start))s; results in $OUT/results.json"
exec >&- 2>&-
wait "$tee_pid" 2>/dev/null
[ $all_ok = 1 ]
