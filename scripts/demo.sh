#!/usr/bin/env bash
# Quick start, command 1: install Debian packages, build (tests and benchmarks off), and run
# svcca-inspect on the bundled digits CNN (models/digits) and activation sets (data/). The JSON,
# CSV and heatmaps (SVG, PNG) go to out/demo/ (or the folder given as the first argument).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
svcca_install_deps
svcca_build "$SVCCA_ROOT/build" -DSVCCA_BUILD_TESTS=OFF -DSVCCA_BUILD_BENCHMARKS=OFF

inspect="$SVCCA_ROOT/build/tools/svcca-inspect"
digits="$SVCCA_ROOT/models/digits"
probe="$digits/probe.pt"
out=${1:-"$SVCCA_ROOT/out/demo"}
bold='' plain=''
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; fi  # bold only on a terminal
step() { printf '\n%s$ svcca-inspect %s%s\n' "$bold" "$*" "$plain"; "$inspect" "$@"; }

# The layers of the trained CNN, their module types and output shapes for one 8x8 image.
step layers "$digits/cnn_epoch8.pt" --input-shape 1,1,8,8
# Linear CKA between every pair of its layers, over the 359 probe images.
step grid "$digits/cnn_epoch8.pt" --input "$probe" --measure cka --out "$out/grid"
# The same layers after 4 and after 8 epochs of training: SVCCA, fed 64 images at a time.
step grid "$digits/cnn_epoch4.pt" "$digits/cnn_epoch8.pt" --input "$probe" --measure svcca \
  --batch-size 64 --out "$out/epoch4_vs_epoch8"
# How far each layer is from its final form over training (layers x checkpoints).
step dynamics "$digits"/cnn_epoch{0,1,2,4,8}.pt --input "$probe" --measure cka --out "$out/dynamics"
# Two saved activation sets, no model: two MLPs trained from different seeds (data/README.md).
step compare "$SVCCA_ROOT/data/net_a.pt" "$SVCCA_ROOT/data/net_b.pt" --measure svcca \
  --out "$out/compare"
echo
echo "svcca: wrote JSON, CSV, SVG and PNG heatmaps to $out/{grid,epoch4_vs_epoch8,dynamics,compare}"
