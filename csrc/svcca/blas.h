// Symmetric (Hermitian) rank-k products through BLAS syrk/herk: half the multiply-adds of a general
// matrix product, the floor for covariances and Gram matrices (internal).
#pragma once

#include <ATen/core/Tensor.h>

namespace svcca {
namespace detail {

// c = beta * c + alpha * a^H a (outer = false; c is [p, p] for a: [n, p]) or alpha * a a^H
// (outer = true; c is [n, n]), the whole Hermitian matrix filled in. Returns false, touching
// nothing, where BLAS can't do it: a CUDA tensor, a dtype other than float32/64 and complex64/128,
// a dimension over INT_MAX, inputs that need autograd, or a build without BLAS
// (SVCCA_HAVE_BLAS unset); the caller then uses at::mm. With beta != 0, c must already hold a
// Hermitian matrix (only its lower triangle is read). `c` must be contiguous, of a's dtype and
// device.
// fill_upper = false leaves c's row-major upper triangle as it was (a caller accumulating over
// several calls with beta = 1 fills it once, on the last).
bool hermitian_rank_k(at::Tensor& c, const at::Tensor& a, bool outer, double alpha, double beta,
                      bool fill_upper = true);

// Whether this build calls BLAS directly (for the benchmarks' headers).
bool have_blas();

// The threads the process's BLAS runs a call on: OpenBLAS's openblas_get_num_threads() where the
// loaded BLAS is OpenBLAS (found at run time, so any BLAS links), else 0 (unknown: the caller
// keeps to one thread of its own).
int blas_threads();

// While alive, the BLAS runs each call on its calling thread (openblas_set_num_threads(1)), so
// that several threads of the caller can each run their own calls without the BLAS's own threads
// contending for the same cores; the count is restored on destruction. A no-op where
// blas_threads() is 0. The setting is process-wide: BLAS calls of other threads also run
// single-threaded meanwhile.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int saved_ = 0;
};

}  // namespace detail
}  // namespace svcca
