// Umbrella header of svcca: representation similarity measures on at::Tensor.
//
// Layout: activations are [n_examples, n_features]; axis 0 is always examples (the
// svcca::compat functions are the one exception: they keep google/svcca's
// [n_neurons, n_datapoints] layout).
//
// dtype and device policy (every measure follows it; tests check it):
//   * inputs may be float32 or float64, on any device; both inputs of a call must share the
//     device. Integer, bool and complex inputs are rejected with a TypeError-style c10::Error.
//   * centering, covariance products and decompositions run in float64 by default
//     (Precision::kFloat64); Precision::kInput keeps the input's dtype (for float32 on GPUs).
//   * results come back in the input dtype (float64 when the inputs' dtypes differ), on the
//     input device. Nothing is moved to the CPU; a measure reads a few scalars (ranks, kept
//     feature counts) back to size its outputs.
//   * measures are compositions of ATen ops, so autograd flows through them.
#pragma once

#include "svcca/checks.h"
#include "svcca/compat/compat.h"
#include "svcca/conv/fourier.h"
#include "svcca/conv/recipes.h"
#include "svcca/inference/bootstrap.h"
#include "svcca/inference/grid_inference.h"
#include "svcca/inference/permutation.h"
#include "svcca/inference/resampling.h"
#include "svcca/linalg.h"
#include "svcca/measures/cca.h"
#include "svcca/measures/cka.h"
#include "svcca/measures/procrustes.h"
#include "svcca/measures/pwcca.h"
#include "svcca/measures/svcca.h"
#include "svcca/stream/covariance_accumulator.h"
#include "svcca/stream/distributed.h"
#include "svcca/stream/minibatch_cka.h"
