// Shared numerics: centering, covariance, and per-layer factors.
#include "svcca/linalg.h"

#include "svcca/blas.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <exception>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

namespace svcca {
namespace detail {

at::ScalarType compute_dtype(const at::Tensor& x, const at::Tensor& y, Precision precision) {
  if (precision == Precision::kFloat64) return at::kDouble;
  return at::promote_types(x.scalar_type(), y.scalar_type());
}

at::ScalarType result_dtype(const at::Tensor& x, const at::Tensor& y) {
  return at::promote_types(x.scalar_type(), y.scalar_type());
}

at::Tensor mh(const at::Tensor& t) {
  return t.transpose(-2, -1).conj();
}

double abs_max(const at::Tensor& x) {
  if (x.numel() == 0) return 0.0;
  if (x.is_complex()) return x.abs().max().item<double>();
  // Two reductions instead of abs(): no temporary of x's size (400 MB at [50000, 1024]).
  const at::Tensor d = x.detach();
  return std::max(d.amax().item<double>(), -d.amin().item<double>());
}

double unit_scale(const at::Tensor& x) {
  if (x.numel() == 0) return 1.0;
  const double m = abs_max(x);
  if (!(m > 0.0) || !std::isfinite(m)) return 1.0;
  int e = 0;
  std::frexp(m, &e);  // m = f 2^e, f in [1/2, 1)
  return std::ldexp(1.0, -e);
}

at::Tensor mul_pow2(const at::Tensor& t, int exponent, bool in_place) {
  at::Tensor r = t;
  bool copied = in_place;
  // Steps of at most 2^100: each factor is a normal float32 number.
  while (exponent != 0) {
    const int step = std::max(-100, std::min(100, exponent));
    r = copied ? r.mul_(std::ldexp(1.0, step)) : r * std::ldexp(1.0, step);
    copied = true;
    exponent -= step;
  }
  return r;
}

Centered center(const at::Tensor& x, at::ScalarType dtype, bool rescale) {
  at::Tensor xd = x.to(dtype);
  int e = 0;
  double scale = 1.0;
  if (rescale) {
    std::frexp(unit_scale(x), &e);
    e -= 1;  // unit_scale = 2^e
    scale = std::ldexp(1.0, -e);
    // The cast's copy (when it made one) is scaled in place.
    if (e != 0) xd = mul_pow2(xd, e, /*in_place=*/!xd.is_same(x));
  }
  at::Tensor mean = xd.mean(0);
  // When the cast (or the rescale) made a copy, center it in place: one [n, p] buffer instead of
  // two (not under autograd: the mean's backward keeps its input in LibTorch 1.13).
  if (!xd.is_same(x) && !xd.requires_grad()) return {xd.sub_(mean), mean, scale};
  return {xd - mean, mean, scale};
}

at::Tensor cross_covariance(const at::Tensor& a_centered, const at::Tensor& b_centered) {
  const int64_t n = a_centered.size(0);
  return at::mm(mh(a_centered), b_centered).div_(static_cast<double>(n - 1));
}

at::Tensor covariance(const at::Tensor& a_centered) {
  const int64_t n = a_centered.size(0);
  const int64_t p = a_centered.size(1);
  at::Tensor c = at::empty({p, p}, a_centered.options());
  if (hermitian_rank_k(c, a_centered, /*outer=*/false, 1.0 / static_cast<double>(n - 1), 0.0)) {
    return c;
  }
  // Without BLAS (CUDA, other dtypes): two column blocks, three products instead of four
  // quarters. Measured on [10000, 256] and [50000, 1024] float64 (2 threads), two blocks save 19%
  // and 24% with OpenBLAS's generic kernels and 2% and 13% with its Skylake-X kernels.
  if (p < 128) return cross_covariance(a_centered, a_centered);
  const int64_t block = (p + 1) / 2;
  const int64_t nb = (p + block - 1) / block;
  auto cols = [&](int64_t b) {
    return a_centered.narrow(1, b * block, std::min(block, p - b * block));
  };
  std::vector<std::vector<at::Tensor>> blocks(nb, std::vector<at::Tensor>(nb));
  for (int64_t i = 0; i < nb; ++i) {
    for (int64_t j = i; j < nb; ++j) {
      blocks[i][j] = at::mm(mh(cols(i)), cols(j));
      if (j > i) blocks[j][i] = mh(blocks[i][j]);  // the lower triangle mirrors the upper
    }
  }
  std::vector<at::Tensor> rows;
  for (const auto& row : blocks) rows.push_back(at::cat(row, 1));
  return at::cat(rows, 0).div_(static_cast<double>(n - 1));
}

at::Tensor gram(const at::Tensor& a) {
  const int64_t n = a.size(0);
  at::Tensor g = at::empty({n, n}, a.options());
  if (hermitian_rank_k(g, a, /*outer=*/true, 1.0, 0.0)) return g;
  return at::mm(a, mh(a));
}

at::Tensor column_gram(const at::Tensor& a) {
  const int64_t p = a.size(1);
  at::Tensor g = at::empty({p, p}, a.options());
  if (hermitian_rank_k(g, a, /*outer=*/false, 1.0, 0.0)) return g;
  return at::mm(mh(a), a);
}

at::Tensor sum_squares(const at::Tensor& t) {
  if (t.scalar_type() != at::kDouble || t.numel() == 0) return t.square().sum();
  at::Tensor flat = t.reshape({-1});
  return at::dot(flat, flat);
}

at::Tensor sum_products(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != at::kDouble || b.scalar_type() != at::kDouble || a.sizes() != b.sizes() ||
      a.numel() == 0) {
    return (a * b).sum();
  }
  return at::dot(a.reshape({-1}), b.reshape({-1}));
}

void add_product_(at::Tensor& c, const at::Tensor& a, bool outer, double alpha, double beta) {
  if (hermitian_rank_k(c, a, outer, alpha, beta)) return;
  if (outer) {
    c.addmm_(a, mh(a), beta, alpha);
  } else {
    c.addmm_(mh(a), a, beta, alpha);
  }
}

namespace {

// ---- pair_moments' blocked CPU path --------------------------------------------------------

constexpr int64_t kMomentBlockBytes = int64_t{32} << 20;
constexpr int64_t kMomentMinRows = 256;
// Layers of at least this many values in all have their statistics taken on two threads.
constexpr int64_t kParallelStatisticsValues = int64_t{1} << 22;

bool blocked_moments_apply(const at::Tensor& t, at::ScalarType dtype) {
  const auto st = t.scalar_type();
  return have_blas() && t.defined() && t.device().is_cpu() && t.dim() == 2 &&
         (st == at::kFloat || st == at::kDouble) && (dtype == at::kFloat || dtype == at::kDouble) &&
         !(at::GradMode::is_enabled() && t.requires_grad()) && !t.is_neg() && t.size(0) >= 2 &&
         t.size(1) >= 1 && t.size(0) <= INT_MAX && t.size(1) <= INT_MAX &&
         (t.stride(1) == 1 || t.size(1) == 1) && t.stride(0) >= t.size(1);
}

// One layer streamed by rows: its column statistics, then its blocks centered into a buffer.
struct RowStream {
  const at::Tensor* t = nullptr;
  int64_t n = 0, p = 0, ld = 0;
  double factor = 1.0;           // unit_scale(x): the data are taken in units of 1 / factor
  std::vector<double> mean_hat;  // column means of x * factor (the first pass's)
  std::vector<double> residual;  // column sums of the centered values (the second pass's)
  at::Tensor non_constant;       // [p] bool
  // float64 layers only: whether the raw products X^T X - n mu mu^T lose at most two bits to
  // cancellation against the centered ones (every non-constant column has mu^2 <= kRawShift
  // sigma^2 and the largest |x| is within 2^+-kRawExponent), so the centering copy can be skipped.
  bool raw = false;
};

// The raw products' rounding error relative to the centered ones' is at most
// sqrt((1 + mu_i^2 / sigma_i^2) (1 + mu_j^2 / sigma_j^2)) for entry (i, j): 4 (two bits) at
// mu^2 = 3 sigma^2. ReLU outputs of a normal pre-activation have mu^2 / sigma^2 = 1.75.
constexpr double kRawShift = 3.0;
constexpr int kRawExponent = 100;

// Column min, max and sum of a row-major [n, p] layer (leading dimension ld), one pass; the sums
// are formed per block of rows and then added (an error of (kRows + n / kRows) eps, not n eps).
template <typename S>
void column_statistics(RowStream& r) {
  const S* x = r.t->data_ptr<S>();
  const int64_t n = r.n, p = r.p, ld = r.ld;
  constexpr bool kSquares = std::is_same_v<S, double>;  // for the raw-products test
  std::vector<S> lo(x, x + p), hi(x, x + p);
  std::vector<double> sum(p, 0.0), part(p), sq(kSquares ? p : 0, 0.0), part_sq(sq.size());
  constexpr int64_t kRows = 256;
  for (int64_t r0 = 0; r0 < n; r0 += kRows) {
    std::fill(part.begin(), part.end(), 0.0);
    if constexpr (kSquares) std::fill(part_sq.begin(), part_sq.end(), 0.0);
    const int64_t r1 = std::min(n, r0 + kRows);
    for (int64_t i = r0; i < r1; ++i) {
      const S* row = x + i * ld;
      for (int64_t j = 0; j < p; ++j) {
        const S v = row[j];
        part[j] += static_cast<double>(v);
        if constexpr (kSquares) part_sq[j] += v * v;
        lo[j] = v < lo[j] ? v : lo[j];
        hi[j] = v > hi[j] ? v : hi[j];
      }
    }
    for (int64_t j = 0; j < p; ++j) sum[j] += part[j];
    if constexpr (kSquares) {
      for (int64_t j = 0; j < p; ++j) sq[j] += part_sq[j];
    }
  }
  double amax = 0.0;
  r.non_constant = at::empty({p}, at::kBool);
  bool* nc = r.non_constant.data_ptr<bool>();
  for (int64_t j = 0; j < p; ++j) {
    nc[j] = hi[j] != lo[j];
    amax = std::max(
        {amax, std::abs(static_cast<double>(lo[j])), std::abs(static_cast<double>(hi[j]))});
  }
  // unit_scale(x), from the same maximum.
  r.factor = 1.0;
  if (amax > 0.0 && std::isfinite(amax)) {
    int e = 0;
    std::frexp(amax, &e);
    r.factor = std::ldexp(1.0, -e);
  }
  r.mean_hat.resize(p);
  for (int64_t j = 0; j < p; ++j) r.mean_hat[j] = sum[j] * r.factor / static_cast<double>(n);
  r.residual.assign(p, 0.0);
  r.raw = false;
  if constexpr (kSquares) {
    int e = 0;
    std::frexp(amax, &e);
    r.raw = ld == p && amax > 0.0 && std::isfinite(amax) && std::abs(e) <= kRawExponent;
    const double dn = static_cast<double>(n);
    for (int64_t j = 0; j < p && r.raw; ++j) {
      if (!nc[j]) continue;
      const double mu = sum[j] / dn;
      // A rough variance (its own cancellation is harmless where the test passes).
      const double var = sq[j] / dn - mu * mu;
      r.raw = var > 0.0 && mu * mu <= kRawShift * var;
    }
  }
}

// Rows [r0, r0 + rows) of x, rescaled and centered at mean_hat, into out ([rows, p], compute
// dtype T) as center() would (the cast and the power of two are exact), their sums into residual.
template <typename S, typename T>
void center_rows(RowStream& r, int64_t r0, int64_t rows, const T* mean, T* out) {
  const S* x = r.t->data_ptr<S>() + r0 * r.ld;
  double* res = r.residual.data();
  const int64_t p = r.p;
  for (int64_t i = 0; i < rows; ++i) {
    const S* row = x + i * r.ld;
    T* o = out + i * p;
    for (int64_t j = 0; j < p; ++j) {
      const T v = static_cast<T>(static_cast<double>(row[j]) * r.factor) - mean[j];
      o[j] = v;
      res[j] += static_cast<double>(v);
    }
  }
}

template <typename T>
void center_block(RowStream& r, int64_t r0, int64_t rows, const at::Tensor& mean, at::Tensor& out) {
  if (r.t->scalar_type() == at::kFloat) {
    center_rows<float, T>(r, r0, rows, mean.data_ptr<T>(), out.data_ptr<T>());
  } else {
    center_rows<double, T>(r, r0, rows, mean.data_ptr<T>(), out.data_ptr<T>());
  }
}

void statistics(RowStream& r) {
  r.t->scalar_type() == at::kFloat ? column_statistics<float>(r) : column_statistics<double>(r);
}

template <typename T>
PairMoments blocked_pair_moments(const at::Tensor& x, const at::Tensor& y, at::ScalarType dtype,
                                 int64_t block_bytes) {
  RowStream sx, sy;
  for (auto [s, t] : {std::pair<RowStream*, const at::Tensor*>{&sx, &x}, {&sy, &y}}) {
    s->t = t;
    s->n = t->size(0);
    s->p = t->size(1);
    s->ld = t->size(1) == 1 ? 1 : t->stride(0);
  }
  // The first pass is a scan bound by memory bandwidth: y's on a second thread while x's runs here
  // (each layer's statistics are its own, so the result does not depend on it).
  if (sx.n * (sx.p + sy.p) >= kParallelStatisticsValues) {
    std::exception_ptr failure;
    std::thread other([&] {
      try {
        statistics(sy);
      } catch (...) {
        failure = std::current_exception();
      }
    });
    try {
      statistics(sx);
    } catch (...) {
      other.join();
      throw;
    }
    other.join();
    if (failure) std::rethrow_exception(failure);
  } else {
    statistics(sx);
    statistics(sy);
  }
  const int64_t n = sx.n, p1 = sx.p, p2 = sy.p;
  const auto opts = at::TensorOptions().dtype(dtype);
  const auto as_tensor = [&](const std::vector<double>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kDouble)).to(dtype);
  };
  const at::Tensor mx = as_tensor(sx.mean_hat), my = as_tensor(sy.mean_hat);
  PairMoments m;
  m.n = n;
  m.x_scale = 1.0 / sx.factor;
  m.y_scale = 1.0 / sy.factor;
  m.x_non_constant = sx.non_constant;
  m.y_non_constant = sy.non_constant;
  m.x_source = x;
  m.y_source = y;
  const double dn = static_cast<double>(n);
  if constexpr (std::is_same_v<T, double>) {
    if (sx.raw && sy.raw) {  // raw is only ever set for float64 layers
      // Nearly centered float64 layers: the products of the layers themselves, no centered copy.
      // S = (X^T X f^2 - n m m^T) / (n - 1) with m = mu f the mean in the moments' units (f a
      // power of two within 2^+-kRawExponent: exact).
      at::Tensor sxx = at::empty({p1, p1}, opts), syy = at::empty({p2, p2}, opts);
      const bool done = hermitian_rank_k(sxx, x, false, sx.factor * sx.factor, 0.0);
      TORCH_INTERNAL_ASSERT(done && hermitian_rank_k(syy, y, false, sy.factor * sy.factor, 0.0),
                            "pair_moments: syrk refused a layer it was checked for");
      at::Tensor sxy = at::mm(x.t(), y).mul_(sx.factor * sy.factor);
      // Constant columns are exactly zero once centered.
      const at::Tensor cx = mx * sx.non_constant, cy = my * sy.non_constant;
      const at::Tensor zx = sx.non_constant.to(at::kDouble), zy = sy.non_constant.to(at::kDouble);
      const auto corrected = [&](at::Tensor& s, const at::Tensor& a, const at::Tensor& b,
                                 const at::Tensor& za, const at::Tensor& zb) {
        s.sub_(at::outer(a, b), dn).mul_(at::outer(za, zb)).div_(dn - 1.0);
      };
      corrected(sxx, cx, cx, zx, zx);
      corrected(syy, cy, cy, zy, zy);
      corrected(sxy, cx, cy, zx, zy);
      m.sxx = sxx;
      m.syy = syy;
      m.sxy = sxy;
      m.x_mean = mx;
      m.y_mean = my;
      m.raw_products = true;
      return m;
    }
  }
  const int64_t row_bytes = (p1 + p2) * static_cast<int64_t>(sizeof(T));
  if (block_bytes <= 0) block_bytes = std::max(kMomentBlockBytes, kMomentMinRows * row_bytes);
  const int64_t block = std::max<int64_t>(1, std::min(n, block_bytes / row_bytes));
  at::Tensor bx = at::empty({block, p1}, opts), by = at::empty({block, p2}, opts);
  at::Tensor sxx = at::empty({p1, p1}, opts), syy = at::empty({p2, p2}, opts), sxy;
  for (int64_t r0 = 0; r0 < n; r0 += block) {
    const int64_t rows = std::min(block, n - r0);
    center_block<T>(sx, r0, rows, mx, bx);
    center_block<T>(sy, r0, rows, my, by);
    at::Tensor vx = bx.narrow(0, 0, rows), vy = by.narrow(0, 0, rows);
    const double beta = r0 == 0 ? 0.0 : 1.0;
    const bool last = r0 + rows >= n;
    const bool done = hermitian_rank_k(sxx, vx, false, 1.0, beta, last);
    TORCH_INTERNAL_ASSERT(done && hermitian_rank_k(syy, vy, false, 1.0, beta, last),
                          "pair_moments: syrk refused a block it was checked for");
    if (r0 == 0) {
      sxy = at::mm(vx.t(), vy);
    } else {
      sxy.addmm_(vx.t(), vy);
    }
  }
  // The first pass's means are rounded: S = B^T B - n r r^T with r the mean of the centered rows.
  std::vector<double> rxv(p1), ryv(p2);
  for (int64_t j = 0; j < p1; ++j) rxv[j] = sx.residual[j] / dn;
  for (int64_t j = 0; j < p2; ++j) ryv[j] = sy.residual[j] / dn;
  const at::Tensor rx = as_tensor(rxv), ry = as_tensor(ryv);
  m.sxx = sxx.sub_(at::outer(rx, rx), dn).div_(dn - 1.0);
  m.syy = syy.sub_(at::outer(ry, ry), dn).div_(dn - 1.0);
  m.sxy = sxy.sub_(at::outer(rx, ry), dn).div_(dn - 1.0);
  m.x_mean = mx + rx;
  m.y_mean = my + ry;
  return m;
}

}  // namespace

PairMoments pair_moments(const at::Tensor& x, const at::Tensor& y, Precision precision,
                         int64_t block_bytes) {
  const auto dtype = compute_dtype(x, y, precision);
  PairMoments m;
  if (blocked_moments_apply(x, dtype) && blocked_moments_apply(y, dtype) &&
      x.size(0) == y.size(0)) {
    m = dtype == at::kFloat ? blocked_pair_moments<float>(x, y, dtype, block_bytes)
                            : blocked_pair_moments<double>(x, y, dtype, block_bytes);
  } else {
    auto xc = center(x, dtype, /*rescale=*/true);
    auto yc = center(y, dtype, /*rescale=*/true);
    m.n = x.size(0);
    m.x_scale = xc.scale;
    m.y_scale = yc.scale;
    m.x_mean = xc.mean;
    m.y_mean = yc.mean;
    m.sxx = covariance(xc.data);
    m.syy = covariance(yc.data);
    m.sxy = cross_covariance(xc.data, yc.data);
    m.x_non_constant = non_constant_columns(x);
    m.y_non_constant = non_constant_columns(y);
    m.x_centered = xc.data;
    m.y_centered = yc.data;
  }
  m.result_dtype = result_dtype(x, y);
  m.x_input_dtype = x.scalar_type();
  m.y_input_dtype = y.scalar_type();
  return m;
}

at::Tensor centered_data(const PairMoments& m, bool y_side) {
  const at::Tensor& c = y_side ? m.y_centered : m.x_centered;
  if (c.defined()) return c;
  const at::Tensor& src = y_side ? m.y_source : m.x_source;
  if (!src.defined()) return {};
  const at::Tensor& mean = y_side ? m.y_mean : m.x_mean;
  // The scale is 2^-e for the factor 2^e that pair_moments applied.
  const int e = -std::ilogb(y_side ? m.y_scale : m.x_scale);
  at::Tensor xd = src.to(mean.scalar_type());
  if (e != 0) xd = mul_pow2(xd, e, /*in_place=*/!xd.is_same(src));
  return xd.is_same(src) ? xd - mean : xd.sub_(mean);
}

at::Tensor non_constant_columns(const at::Tensor& x) {
  // amax/amin along dim 0 are 4x faster than aminmax(x, 0) in ATen 1.13.
  return x.amax(0) != x.amin(0);
}

double machine_eps(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
    case at::kComplexHalf:
      return 0.0009765625;  // 2^-10
    case at::kBFloat16:
      return 0.0078125;  // 2^-7
    case at::kFloat:
    case at::kComplexFloat:
      return std::numeric_limits<float>::epsilon();
    default:
      return std::numeric_limits<double>::epsilon();
  }
}

namespace {

// Number of leading entries of the descending, non-negative `values` to keep under `options`.
int64_t truncated_count(const at::Tensor& values, int64_t rank, const FactorOptions& options) {
  switch (options.truncation) {
    case Truncation::kRank:
      return rank;
    case Truncation::kDims:
      return std::min(options.dims, rank);
    case Truncation::kVarianceFraction:
    case Truncation::kSingularValueMassFraction: {
      at::Tensor w = options.truncation == Truncation::kVarianceFraction ? values : values.sqrt();
      at::Tensor cum = w.cumsum(0);
      at::Tensor total = cum[-1];
      // Smallest k >= 1 with cum[k-1] >= fraction * total; count the prefixes below it.
      const int64_t below = (cum < total * options.fraction).sum().item<int64_t>();
      return std::min(std::max<int64_t>(below + 1, 1), rank);
    }
  }
  return rank;
}

}  // namespace

double input_noise_floor(at::ScalarType input_dtype, const at::Tensor& mean, const at::Tensor& cov,
                         int64_t n) {
  return input_noise_floor(input_dtype, mean, at::real(cov.diagonal(0, -2, -1)), cov.size(-1), n);
}

double input_noise_floor(at::ScalarType input_dtype, const at::Tensor& mean,
                         const at::Tensor& variance, int64_t n_features, int64_t n) {
  if (input_dtype == at::ScalarType::Undefined || variance.numel() == 0) return 0.0;
  const double eps = machine_eps(input_dtype);
  const double edge = 1.0 + std::sqrt(static_cast<double>(n_features) /
                                      static_cast<double>(std::max<int64_t>(n - 1, 1)));
  at::Tensor second = variance + at::real(mean * mean.conj());
  return eps * eps * edge * edge * second.max().item<double>();
}

FactorOptions with_input_floor(const FactorOptions& options, at::ScalarType input_dtype,
                               const at::Tensor& mean, const at::Tensor& cov, int64_t n) {
  FactorOptions f = options;
  if (!options.rank_rtol) {
    f.noise_floor = std::max(f.noise_floor, input_noise_floor(input_dtype, mean, cov, n));
  }
  return f;
}

KeptDirections kept_directions(const char* fn, const char* name, const at::Tensor& lam,
                               int64_t dims, double max_var, const FactorOptions& options) {
  const double lam_max = lam[0].item<double>();
  const double rtol =
      options.rank_rtol.value_or(static_cast<double>(dims) * machine_eps(lam.scalar_type()));
  const int64_t rank = ((lam > rtol * lam_max) & (lam > options.noise_floor)).sum().item<int64_t>();
  TORCH_CHECK_VALUE(rank > 0, fn, ": ", name,
                    " must have a covariance of rank >= 1, but all its eigenvalues are <= ", rtol,
                    " times the largest",
                    lam_max <= options.noise_floor
                        ? " or below the rounding level of its input dtype (its variation is "
                          "rounding noise)"
                        : "");
  KeptDirections kd;
  kd.rank = truncated_count(lam.narrow(0, 0, rank).clamp_min(0), rank, options);
  // Ridge relative to the largest variance of what the CCA sees: the features for plain CCA,
  // the kept directions (largest eigenvalue) after an SVD reduction, as google/svcca's recipe.
  const double scale = options.truncation == Truncation::kRank ? max_var : lam_max;
  kd.ridge = options.epsilon * scale;
  return kd;
}

LayerFactors factor_layer(const char* fn, const char* name, const at::Tensor& cov,
                          const at::Tensor& non_constant, const FactorOptions& options) {
  LayerFactors f;
  f.n_features = cov.size(0);
  at::Tensor var = at::real(cov.diagonal());
  const double max_var = var.max().item<double>();
  at::Tensor kept = non_constant.defined() ? non_constant.clone() : (var > 0);
  kept = kept & (var > options.variance_cutoff * max_var);
  f.kept = kept;
  f.kept_index = kept.nonzero().view({-1});
  const int64_t k = f.kept_index.numel();
  TORCH_CHECK_VALUE(k > 0, fn, ": ", name, " must have at least one non-constant feature, but all ",
                    f.n_features, " features are constant",
                    options.variance_cutoff > 0 ? " or below variance_cutoff" : "",
                    " (largest variance ", max_var, ")");
  f.all_kept = k == f.n_features;
  f.cov = f.all_kept ? cov : select_kept(cov, f, &f);

  // eigh returns ascending eigenvalues; flip to descending so truncation keeps a prefix.
  auto eig = at::linalg_eigh(f.cov);
  at::Tensor lam = std::get<0>(eig).flip(0);
  at::Tensor vec = std::get<1>(eig).flip(1);
  const KeptDirections kd = kept_directions(fn, name, lam, k, max_var, options);
  f.rank = kd.rank;
  f.eigenvalues = lam.narrow(0, 0, kd.rank);
  f.eigenvectors = vec.narrow(1, 0, kd.rank);
  f.ridge = kd.ridge;
  f.whitening = f.eigenvectors * (f.eigenvalues + f.ridge).rsqrt();
  return f;
}

at::Tensor select_kept(const at::Tensor& m, const LayerFactors& rows, const LayerFactors* cols) {
  at::Tensor out = rows.all_kept ? m : m.index_select(0, rows.kept_index);
  if (cols != nullptr && !cols->all_kept) out = out.index_select(1, cols->kept_index);
  return out;
}

at::Tensor scatter_rows(const at::Tensor& a, const LayerFactors& f) {
  if (f.all_kept) return a;
  return at::zeros({f.n_features, a.size(1)}, a.options()).index_copy(0, f.kept_index, a);
}

at::Tensor batched_cross_covariance(const at::Tensor& a_centered, const at::Tensor& b_centered) {
  const int64_t n = a_centered.size(-2);
  return at::matmul(mh(a_centered), b_centered).div_(static_cast<double>(n - 1));
}

at::Tensor batched_covariance(const at::Tensor& a_centered) {
  const int64_t batches = a_centered.size(0);
  const int64_t n = a_centered.size(1);
  const int64_t p = a_centered.size(2);
  at::Tensor c = at::empty({batches, p, p}, a_centered.options());
  const double alpha = 1.0 / static_cast<double>(n - 1);
  for (int64_t b = 0; b < batches; ++b) {
    at::Tensor cb = c.select(0, b);
    if (!hermitian_rank_k(cb, a_centered.select(0, b), /*outer=*/false, alpha, 0.0)) {
      return batched_cross_covariance(a_centered, a_centered);
    }
  }
  return c;
}

BatchedWhitening batched_whitening(const at::Tensor& cov, const at::Tensor& feature_mask,
                                   const FactorOptions& options, double noise_floor) {
  const int64_t p = cov.size(-1);
  noise_floor = std::max(noise_floor, options.noise_floor);
  at::Tensor var = at::real(cov.diagonal(0, -2, -1));  // [B, p]
  at::Tensor max_var = var.amax(-1, /*keepdim=*/true);
  at::Tensor kept = (var > max_var * options.variance_cutoff) & (var > noise_floor);
  if (feature_mask.defined()) kept = kept & feature_mask;
  // Masking rows and columns (instead of cropping) keeps one shape for the whole batch: a dropped
  // feature becomes an exact zero eigenvalue, which the rank test below removes.
  at::Tensor m = kept.to(cov.scalar_type());
  auto eig = at::linalg_eigh(cov * m.unsqueeze(-1) * m.unsqueeze(-2));
  const at::Tensor& lam = std::get<0>(eig);  // [B, p] ascending
  const at::Tensor& vec = std::get<1>(eig);  // [B, p, p]
  const double rtol =
      options.rank_rtol.value_or(static_cast<double>(p) * machine_eps(cov.scalar_type()));
  at::Tensor lam_max = lam.amax(-1, /*keepdim=*/true);
  at::Tensor keep_dir = (lam > lam_max * rtol) & (lam > noise_floor);
  // where() before rsqrt: no inf/NaN even in the branch that is not taken (clean gradients).
  at::Tensor safe = at::where(keep_dir, lam + max_var * options.epsilon, at::ones_like(lam));
  at::Tensor scale = safe.rsqrt() * keep_dir.to(lam.scalar_type());
  BatchedWhitening w;
  w.kept = kept;
  // Zero rows for dropped features: their eigenvector entries are zero only up to rounding.
  w.whitening = vec * scale.unsqueeze(-2).to(vec.scalar_type()) * m.unsqueeze(-1);
  w.rank = keep_dir.sum(-1);
  return w;
}

}  // namespace detail
}  // namespace svcca
