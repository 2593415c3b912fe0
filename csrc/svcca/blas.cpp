// syrk/herk through the BLAS that libtorch already loads (CMake's FindBLAS; Debian: libblas.so.3,
// OpenBLAS). ATen has no symmetric product: at::mm(a^H, a) does all n p^2 multiply-adds.
#include "svcca/blas.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/complex.h>

#include <dlfcn.h>

#include <algorithm>
#include <climits>
#include <complex>

#ifdef SVCCA_HAVE_BLAS
// The Fortran interface: every BLAS has it (cblas.h is not installed by Debian's libblas-dev).
// Character arguments are single letters, so the hidden length arguments are not needed.
extern "C" {
void ssyrk_(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* beta, float* c, const int* ldc);
void dsyrk_(const char* uplo, const char* trans, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* beta, double* c, const int* ldc);
void cherk_(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
            const void* a, const int* lda, const float* beta, void* c, const int* ldc);
void zherk_(const char* uplo, const char* trans, const int* n, const int* k, const double* alpha,
            const void* a, const int* lda, const double* beta, void* c, const int* ldc);
}
#endif

namespace svcca {
namespace detail {
namespace {

template <typename T>
T conj_of(T v) {
  return v;
}
template <typename T>
c10::complex<T> conj_of(c10::complex<T> v) {
  return std::conj(v);
}

// Fills the upper triangle of the row-major [m, m] matrix c from its lower one (conjugated).
template <typename T>
void mirror_lower(T* c, int64_t m) {
  constexpr int64_t kBlock = 64;
  const int64_t nb = (m + kBlock - 1) / kBlock;
  // Block rows of the upper triangle: block (bi, bj), bj >= bi, reads the lower block (bj, bi).
  at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bi = begin; bi < end; ++bi) {
      const int64_t i0 = bi * kBlock;
      const int64_t i1 = std::min(m, i0 + kBlock);
      for (int64_t j0 = i0; j0 < m; j0 += kBlock) {
        const int64_t j1 = std::min(m, j0 + kBlock);
        for (int64_t i = i0; i < i1; ++i) {
          for (int64_t j = std::max(j0, i + 1); j < j1; ++j) c[i * m + j] = conj_of(c[j * m + i]);
        }
      }
    }
  });
}

}  // namespace

bool have_blas() {
#ifdef SVCCA_HAVE_BLAS
  return true;
#else
  return false;
#endif
}

bool hermitian_rank_k(at::Tensor& c, const at::Tensor& a, bool outer, double alpha, double beta,
                      bool fill_upper) {
#ifndef SVCCA_HAVE_BLAS
  (void)c, (void)a, (void)outer, (void)alpha, (void)beta, (void)fill_upper;
  return false;
#else
  if (a.dim() != 2 || !a.device().is_cpu() || !c.device().is_cpu()) return false;
  if (c.scalar_type() != a.scalar_type() || !c.is_contiguous() || c.is_conj()) return false;
  const auto st = a.scalar_type();
  if (st != at::kFloat && st != at::kDouble && st != at::kComplexFloat &&
      st != at::kComplexDouble) {
    return false;
  }
  if (at::GradMode::is_enabled() && (a.requires_grad() || c.requires_grad())) return false;
  const int64_t n = a.size(0);
  const int64_t p = a.size(1);
  const int64_t m = outer ? n : p;
  if (c.dim() != 2 || c.size(0) != m || c.size(1) != m) return false;
  if (n > INT_MAX || p > INT_MAX) return false;
  if (m == 0) return true;
  if (a.numel() == 0) {  // no terms: c = beta c
    beta == 0.0 ? c.zero_() : c.mul_(beta);
    return true;
  }

  // A row-major [n, p] `a` is the column-major p x n matrix A = a^T (lda = p). With "U", BLAS
  // writes the column-major upper triangle, which is the row-major lower one.
  //   a^H a: herk("N") gives A A^H, read row-major (A A^H)^T = a^H a.
  //   a a^H: herk("C") gives A^H A, read row-major (A^H A)^T = a a^H.
  // A column-major `a` (a transposed view) is the row-major b = a^T: a^H a = conj(b b^H), so the
  // product with b and the other side gives the conjugate (the same matrix when real).
  at::Tensor src = a.is_conj() ? a.resolve_conj() : a;  // a lazy conjugate is not in memory
  bool flip = false;
  if (!src.is_contiguous()) {
    if (src.t().is_contiguous()) {
      src = src.t();
      flip = true;
    } else {
      src = src.contiguous();
    }
  }
  const bool complex = a.is_complex();
  const bool side_outer = flip ? !outer : outer;
  const int rows = static_cast<int>(src.size(0));
  const int cols = static_cast<int>(src.size(1));
  const int nn = static_cast<int>(m);
  const int kk = side_outer ? cols : rows;
  const int lda = std::max(1, cols);
  const int ldc = nn;
  const char uplo = 'U';
  const char trans = side_outer ? (complex ? 'C' : 'T') : 'N';
  if (flip && complex) c.conj_physical_();  // conj(beta c + alpha conj(P)) = beta conj(c) + ...
  switch (st) {
    case at::kFloat: {
      const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
      ssyrk_(&uplo, &trans, &nn, &kk, &al, src.data_ptr<float>(), &lda, &be, c.data_ptr<float>(),
             &ldc);
      if (fill_upper) mirror_lower(c.data_ptr<float>(), m);
      break;
    }
    case at::kDouble:
      dsyrk_(&uplo, &trans, &nn, &kk, &alpha, src.data_ptr<double>(), &lda, &beta,
             c.data_ptr<double>(), &ldc);
      if (fill_upper) mirror_lower(c.data_ptr<double>(), m);
      break;
    case at::kComplexFloat: {
      const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
      cherk_(&uplo, &trans, &nn, &kk, &al, src.data_ptr<c10::complex<float> >(), &lda, &be,
             c.data_ptr<c10::complex<float> >(), &ldc);
      if (fill_upper) mirror_lower(c.data_ptr<c10::complex<float> >(), m);
      break;
    }
    default:
      zherk_(&uplo, &trans, &nn, &kk, &alpha, src.data_ptr<c10::complex<double> >(), &lda, &beta,
             c.data_ptr<c10::complex<double> >(), &ldc);
      if (fill_upper) mirror_lower(c.data_ptr<c10::complex<double> >(), m);
      break;
  }
  if (flip && complex) c.conj_physical_();
  return true;
#endif
}

namespace {

// OpenBLAS's thread control, looked up in the process (absent from other BLAS and from builds that
// link a BLAS statically into libtorch).
struct OpenBlasThreads {
  int (*get)() = nullptr;
  void (*set)(int) = nullptr;
  OpenBlasThreads() {
    find(RTLD_DEFAULT);
    // Loaded with RTLD_LOCAL (as Python loads libtorch and torch.ops.load_library the op
    // library), OpenBLAS is not in the global scope: ask for it by name, without loading it.
    for (const char* lib : {"libopenblas.so.0", "libopenblas.so"}) {
      if (get) break;
      if (void* h = dlopen(lib, RTLD_NOW | RTLD_NOLOAD)) find(h);  // kept open: the process's
    }
  }
  void find(void* handle) {
    get = reinterpret_cast<int (*)()>(dlsym(handle, "openblas_get_num_threads"));
    set = reinterpret_cast<void (*)(int)>(dlsym(handle, "openblas_set_num_threads"));
    if (!get || !set) get = nullptr, set = nullptr;
  }
};

const OpenBlasThreads& openblas_threads() {
  static const OpenBlasThreads t;
  return t;
}

}  // namespace

int blas_threads() {
  const OpenBlasThreads& t = openblas_threads();
  return t.get ? std::max(1, t.get()) : 0;
}

SingleThreadedBlas::SingleThreadedBlas() {
  const OpenBlasThreads& t = openblas_threads();
  if (!t.get) return;
  saved_ = t.get();
  if (saved_ > 1) t.set(1);
}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (saved_ > 1) openblas_threads().set(saved_);
}

}  // namespace detail
}  // namespace svcca
