# Shared by scripts/demo.sh and scripts/test.sh: Debian packages, configure, build.
set -euo pipefail

SVCCA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SVCCA_PACKAGES=(cmake g++ make libtorch-dev python3-torch libblas-dev libfmt-dev nlohmann-json3-dev
  libgtest-dev libbenchmark-dev libgloo-dev libopenblas0-pthread python3-numpy python3-pytest
  libcli11-dev libspng-dev python3-torchvision python3-hypothesis)

# Installs the Debian packages that are missing (as root, or through sudo).
svcca_install_deps() {
  local missing=()
  for p in "${SVCCA_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "svcca: installing Debian packages: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# svcca_build BUILD_DIR [cmake args...]: configure and build everything.
svcca_build() {
  local dir=$1
  shift
  cmake -S "$SVCCA_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@"
  cmake --build "$dir" -j"$(nproc)"
}
