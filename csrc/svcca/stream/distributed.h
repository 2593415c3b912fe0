// torch.distributed for the streaming accumulators: all_reduce over a c10d ProcessGroup.
#pragma once

#include <torch/version.h>  // TORCH_VERSION_MAJOR (macros only)

#include "svcca/stream/covariance_accumulator.h"
#include "svcca/stream/minibatch_cka.h"

// LibTorch 2.x split c10d: a backend (ProcessGroupGloo, ProcessGroupNCCL, ...) derives from
// c10d::Backend, and c10d::ProcessGroup is the dispatching wrapper over backends. 1.13 has only
// ProcessGroup, which the backends derive from. all_reduce takes either where both exist.
#if TORCH_VERSION_MAJOR >= 2
#define SVCCA_C10D_HAS_BACKEND 1
#endif

namespace c10d {
class ProcessGroup;
#ifdef SVCCA_C10D_HAS_BACKEND
class Backend;
#endif
}  // namespace c10d

namespace svcca {

// Combines the accumulators of every rank of `process_group` in place: afterwards each rank holds
// the accumulator of all ranks' rows (as if one process had seen them all; exact up to rounding).
// A collective: every rank must call it, in the same order as its other collectives. Works with
// any c10d backend that implements allreduce with SUM/MIN/MAX on float64 tensors of the
// accumulator's device: Gloo (CPU tensors; and CUDA through staging), NCCL (CUDA tensors, where
// LibTorch is built with it), MPI.
// Five small collectives: the ranks first agree on shapes and dtypes (a mismatch or an empty
// accumulator on any rank throws on every rank instead of hanging), then on each layer's
// power-of-two unit (MAX; every rank rescales its moments to it, exactly), then sum n and
// n * mean to get the global mean, sum the co-moments recentered to it
// (M_r + n_r (mean_r - mean)(mean_r - mean)^T: the Chan et al. update, all ranks at once), and
// reduce min/max with MIN (on [min, -max]). Throws when a collective fails or times out (the
// process group's timeout).
void all_reduce(CovarianceAccumulator& accumulator, c10d::ProcessGroup& process_group);

// The minibatch CKA state is a set of sums: one SUM all-reduce (after the same agreement step and
// a MAX of the linear kernel's units, to which every rank rescales its sums).
void all_reduce(MinibatchCkaAccumulator& accumulator, c10d::ProcessGroup& process_group);

#ifdef SVCCA_C10D_HAS_BACKEND
// The same over one c10d backend used directly (LibTorch 2.x, where c10d::ProcessGroupGloo and
// the other backends are a c10d::Backend, not a ProcessGroup).
void all_reduce(CovarianceAccumulator& accumulator, c10d::Backend& process_group);
void all_reduce(MinibatchCkaAccumulator& accumulator, c10d::Backend& process_group);
#endif

}  // namespace svcca
