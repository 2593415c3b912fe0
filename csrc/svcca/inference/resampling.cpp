// Measures on resamples of the examples: Gram products for the CKA family, weighted moments for
// the CCA family and procrustes, the one-shot measure for pwcca; seeded draws.
#include "svcca/inference/resampling.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>

#include "svcca/blas.h"
#include "svcca/checks.h"
#include "svcca/factors.h"
#include "svcca/measures/cca.h"
#include "svcca/measures/cka.h"
#include "svcca/measures/pwcca.h"
#include "svcca/measures/svcca.h"

namespace svcca {

std::vector<std::string> inference_measure_names() {
  return {"cka", "debiased-cka", "rbf-cka", "cca", "svcca", "pwcca", "procrustes"};
}

namespace detail {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A drawn column whose weighted variance is at most screen(d) of its largest squared value is
// checked for constancy row by row: rounding leaves a constant column's variance within about
// 3 d eps of that bound (d rows summed), far below screen's 64 d eps (and at least 1e-8); a
// varying column that low is checked exactly too, so the screen only decides what is compared.
double constant_screen(int64_t rows, at::ScalarType dtype) {
  return std::max(1e-8, 64.0 * static_cast<double>(rows) * machine_eps(dtype));
}

// CCA and PWCCA need rows >= p + 2 (as the grid's rule; centered data has rank <= rows - 1).
void check_rows(const char* fn, const std::string& name, int64_t rows, int64_t p,
                const char* measure) {
  TORCH_CHECK_VALUE(rows >= p + 2, fn, ": ", name, " must have at least p + 2 = ", p + 2,
                    " examples for ", measure, " (centered data has rank <= n - 1), but got ", rows,
                    " examples of ", p, " features; use measure svcca or more examples");
}

// w_b^T (a o b) w_b for every column w_b of w ([n, B]), a and b symmetric [n, n] (b undefined:
// a o a), without forming the n x n product a o b: row blocks of its lower triangle, each one
// elementwise product of [r, s] blocks and one GEMM with the weights. n^2 B / 2 multiply-adds
// (symmetry), n^2 / 2 elementwise products and O(r n) memory per call.
at::Tensor hadamard_quadratic_forms(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w) {
  constexpr int64_t kRows = 1024;
  const int64_t n = a.size(0);
  auto block = [&](int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
    at::Tensor ab = a.narrow(0, r0, rows).narrow(1, c0, cols);
    return ab * (b.defined() ? b.narrow(0, r0, rows).narrow(1, c0, cols) : ab);  // mul: pow is slow
  };
  at::Tensor out = at::zeros({w.size(1)}, w.options());
  for (int64_t s = 0; s < n; s += kRows) {
    const int64_t r = std::min(kRows, n - s);
    const at::Tensor wi = w.narrow(0, s, r);
    at::Tensor t = at::mm(block(s, r, s, r), wi);  // the diagonal block, counted once
    // The blocks left of it (columns < s), counted twice: the upper triangle mirrors them.
    if (s > 0) t.addmm_(block(s, r, 0, s), w.narrow(0, 0, s), /*beta=*/1.0, /*alpha=*/2.0);
    out.add_((wi * t).sum(0));
  }
  return out;
}

// The examples a weight column draws, each repeated by its multiplicity. w: [n] (any device).
at::Tensor drawn_rows(const at::Tensor& w) {
  at::Tensor counts = w.to(at::kLong);
  return at::repeat_interleave(at::arange(w.size(0), counts.options()), counts);
}

// ---- CKA family: Gram matrices -----------------------------------------------------------------

// Biased linear CKA of a narrow layer (p^2 <= n, p <= kNarrowMaxFeatures) is taken from its
// features instead: a resample's centered cross-moments X_r^T Y_r = sum_i w_i x_i y_i^T -
// (X^T w)(Y^T w)^T / N for every resample at once as one GEMM of the row-wise products
// [n, p1 p2] with the weights [n, B]: O(n p1 p2) per resample instead of O(n^2), no n x n matrix.
constexpr int64_t kNarrowMaxFeatures = 64;
// Rows of the row-wise products formed at a time (memory: this many rows of p1 p2 doubles).
constexpr int64_t kProductBytes = int64_t{32} << 20;

struct KernelLayer : ResampleLayer {
  int64_t n = 0;
  bool narrow = false;
  at::Tensor xc;  // narrow: [n, p] centered / scale
  // The Gram side (narrow layers: formed from xc when a pair with a wide layer needs it).
  mutable at::Tensor g;       // [n, n] double-centered Gram (kernel) matrix of the full sample
  mutable at::Tensor c;       // the estimator's centering of it (g, or its U-centering)
  mutable at::Tensor c_self;  // 0-d <c, c>
  mutable at::Tensor diag;    // [n] diag(g)
  at::Tensor f;  // linear kernels with p <= n / 4: [n, p] with g = f f^T (K w = f (f^T w))
  int64_t bytes() const override {
    int64_t b = xc.defined() ? xc.numel() * xc.element_size() : 0;
    if (f.defined()) b += f.numel() * f.element_size();
    if (g.defined()) b += g.numel() * g.element_size();
    if (c.defined() && !c.is_same(g)) b += c.numel() * c.element_size();
    return b;
  }
  void ensure_gram() const {
    if (g.defined()) return;
    g = detail::gram(xc);
    c = g;
    c_self = sum_squares(g);
    diag = g.diagonal().clone();
  }
};

struct KernelDraw : ResampleDraw {
  at::Tensor kw;    // [n, B] K w
  at::Tensor self;  // [B] the layer's HSIC with itself on each resample (NaN: degenerate)
  at::Tensor m;     // narrow: [p, B] X^T w
};

// sum_i w_i a_i b_i^T for every column of w: [B, p1, p2], from row blocks of the row-wise
// products of a: [n, p1] and b: [n, p2].
at::Tensor weighted_products(const at::Tensor& a, const at::Tensor& b, const at::Tensor& w) {
  const int64_t n = a.size(0), p1 = a.size(1), p2 = b.size(1);
  const int64_t rows = std::clamp<int64_t>(kProductBytes / std::max<int64_t>(8 * p1 * p2, 1), 1, n);
  at::Tensor out = at::zeros({p1 * p2, w.size(1)}, w.options());
  for (int64_t s = 0; s < n; s += rows) {
    const int64_t r = std::min(rows, n - s);
    at::Tensor kr =
        (a.narrow(0, s, r).unsqueeze(2) * b.narrow(0, s, r).unsqueeze(1)).reshape({r, -1});
    out.addmm_(kr.t(), w.narrow(0, s, r));
  }
  return out.t().reshape({w.size(1), p1, p2});
}

// ||sum_i w_i a_i b_i^T - m_a m_b^T / N||_F^2 per resample (the centered resample's squared
// cross-moment norm), from the products [B, p1, p2] and the sums m_a: [p1, B], m_b: [p2, B].
at::Tensor centered_norm2(const at::Tensor& prod, const at::Tensor& ma, const at::Tensor& mb,
                          const at::Tensor& n) {
  at::Tensor outer = ma.t().unsqueeze(2) * mb.t().unsqueeze(1) / n.view({-1, 1, 1});
  return (prod - outer).square().sum({1, 2});
}

class KernelResampler : public Resampler {
 public:
  KernelResampler(bool rbf, bool debiased, RbfCkaOptions rbf_options, Precision precision)
      : rbf_(rbf),
        debiased_(debiased),
        rbf_options_(std::move(rbf_options)),
        precision_(precision) {}

  std::shared_ptr<const ResampleLayer> layer(const char* fn, const std::string& name,
                                             const at::Tensor& mat) const override {
    const int64_t n = mat.size(0), p = mat.size(1);
    TORCH_CHECK_VALUE(n >= 2, fn, ": ", name, " must have at least 2 examples, but got ", n);
    if (debiased_) check_debiased_examples(fn, n);
    auto l = std::make_shared<KernelLayer>();
    l->n = n;
    const at::ScalarType dtype = compute_dtype(mat, mat, precision_);
    if (!rbf_ && !debiased_ && p <= kNarrowMaxFeatures && p * p <= n) {
      check_not_constant(fn, name.c_str(), non_constant_columns(mat));
      at::Tensor xc = center(mat, dtype, /*rescale=*/true).data;
      const double scale = abs_max(xc);
      if (scale > 0.0 && std::isfinite(scale)) xc = xc / scale;
      l->narrow = true;
      l->xc = xc;
      return l;
    }
    GramStats gs = centered_gram(mat, dtype);
    check_not_constant(fn, name.c_str(), gs.non_constant);
    at::Tensor k = gs.gram;
    if (rbf_) {
      at::Tensor d = squared_distances_from_gram(gs.gram);
      if (rbf_options_.sigma) d = d * (gs.scale * gs.scale);
      k = rbf_kernel(fn, name.c_str(), d, rbf_options_.threshold, rbf_options_.sigma);
      l->g = center_gram(k, false);
    } else {
      l->g = k;  // the Gram of the centered data is centered already
      // A layer narrower than n / 4 keeps its centered columns too: K w = F (F^T w) is 2 n p
      // multiply-adds per resample instead of n^2 (the quadratic forms stay on the Gram).
      const int64_t kept = gs.kept.sum().item<int64_t>();
      if (4 * kept <= n) {
        const at::Tensor cols = gs.kept.nonzero().squeeze(1);
        l->f =
            mat.index_select(1, cols).to(dtype).div_(gs.scale).sub_(gs.mean.index_select(0, cols));
      }
    }
    l->c = debiased_ ? center_gram(k, true) : l->g;
    l->c_self = sum_squares(l->c);
    check_self_hsic(fn, name.c_str(), l->c_self, sum_squares(k), n, debiased_);
    l->diag = l->g.diagonal().clone();
    return l;
  }

  int64_t batch() const override { return 128; }

  std::shared_ptr<const ResampleDraw> draw(const ResampleLayer& layer,
                                           const at::Tensor& weights) const override {
    const auto& l = static_cast<const KernelLayer&>(layer);
    auto d = std::make_shared<KernelDraw>();
    at::Tensor quad, self;
    if (l.narrow) {
      const at::Tensor w = weights.to(l.xc.scalar_type());
      d->m = at::mm(l.xc.t(), w);
      d->kw = at::mm(l.xc, d->m);
      const at::Tensor prod = weighted_products(l.xc, l.xc, w);
      quad = prod.square().sum({1, 2});
      self = centered_norm2(prod, d->m, d->m, w.sum(0));
    } else {
      const at::Tensor w = weights.to(l.g.scalar_type());
      d->kw = l.f.defined() ? at::mm(l.f, at::mm(l.f.t(), w)) : at::mm(l.g, w);
      quad = hadamard_quadratic_forms(l.g, at::Tensor(), w);
      self = hsic(quad, d->kw, d->kw, l.diag, l.diag, w);
    }
    // A resample on which the layer is constant: its centered Gram is zero up to rounding.
    const double rtol = static_cast<double>(l.n) * machine_eps(self.scalar_type());
    d->self = self.masked_fill(self <= quad * rtol, kNaN);
    return d;
  }

  at::Tensor values(const ResampleLayer& x, const ResampleDraw& dx, const ResampleLayer& y,
                    const ResampleDraw& dy, const at::Tensor& weights) const override {
    const auto& a = static_cast<const KernelLayer&>(x);
    const auto& b = static_cast<const KernelLayer&>(y);
    const auto& da = static_cast<const KernelDraw&>(dx);
    const auto& db = static_cast<const KernelDraw&>(dy);
    if (&x == &y) return (da.self / da.self).to(at::kDouble).cpu();  // 1, NaN where degenerate
    const at::Tensor w = weights.to(da.self.scalar_type());
    at::Tensor hxy;
    if (a.narrow && b.narrow) {
      hxy = centered_norm2(weighted_products(a.xc, b.xc, w), da.m, db.m, w.sum(0));
    } else {
      a.ensure_gram();  // no-ops for wide layers
      b.ensure_gram();
      at::Tensor quad = hadamard_quadratic_forms(a.g, b.g, w);
      hxy = hsic(quad, da.kw, db.kw, a.diag, b.diag, w);
    }
    return (hxy / (da.self * db.self).sqrt()).to(at::kDouble).cpu();
  }

  at::Tensor permuted(const ResampleLayer& x, const ResampleLayer& y,
                      const at::Tensor& perms) const override {
    const auto& a = static_cast<const KernelLayer&>(x);
    const auto& b = static_cast<const KernelLayer&>(y);
    std::vector<at::Tensor> out;
    if (a.narrow && b.narrow) {
      // ||X^T Y[perm]||_F^2 / (||X^T X||_F ||Y^T Y||_F): the Gram formula in feature space.
      const at::Tensor p = perms.to(a.xc.device());
      const at::Tensor norm =
          (at::mm(a.xc.t(), a.xc).square().sum() * at::mm(b.xc.t(), b.xc).square().sum()).sqrt();
      for (int64_t i = 0; i < perms.size(0); ++i)
        out.push_back(at::mm(a.xc.t(), b.xc.index_select(0, p[i])).square().sum() / norm);
      return at::stack(out).to(at::kDouble).cpu();
    }
    a.ensure_gram();
    b.ensure_gram();
    const at::Tensor p = perms.to(a.c.device());
    const at::Tensor norm = (a.c_self * b.c_self).sqrt();
    for (int64_t i = 0; i < perms.size(0); ++i) {
      const at::Tensor pi = p[i];
      out.push_back((a.c * b.c.index_select(0, pi).index_select(1, pi)).sum() / norm);
    }
    return at::stack(out).to(at::kDouble).cpu();
  }

  bool symmetric() const override { return true; }

 private:
  // The HSIC numerator of a pair on resamples of multiplicities w ([n, B]), from the products
  // quad = w^T (K o L) w ([B]), kw = K w, lw = L w ([n, B]) and the diagonals dk, dl ([n]):
  // the estimator applied to K[idx][:, idx] (see cka.h for both), with N = sum(w).
  //   biased:   tr(K_r H L_r H) = quad - 2/N sum_i w_i kw_i lw_i + (w.kw)(w.lw) / N^2
  //   debiased: n(n-3) HSIC_1 = A + sK sL / ((N-1)(N-2)) - 2/(N-2) C with A = quad - sum w dk dl,
  //             sK = w.kw - w.dk, C = sum_i w_i (kw_i - dk_i)(lw_i - dl_i)
  at::Tensor hsic(const at::Tensor& quad, const at::Tensor& kw, const at::Tensor& lw,
                  const at::Tensor& dk, const at::Tensor& dl, const at::Tensor& w) const {
    const at::Tensor n = w.sum(0);
    if (!debiased_) {
      return quad - (w * kw * lw).sum(0) * 2.0 / n + (w * kw).sum(0) * (w * lw).sum(0) / (n * n);
    }
    at::Tensor a = quad - at::mv(w.t(), dk * dl);
    at::Tensor sk = (w * kw).sum(0) - at::mv(w.t(), dk);
    at::Tensor sl = (w * lw).sum(0) - at::mv(w.t(), dl);
    at::Tensor c = (w * (kw - dk.unsqueeze(1)) * (lw - dl.unsqueeze(1))).sum(0);
    return a + sk * sl / ((n - 1.0) * (n - 2.0)) - c * 2.0 / (n - 2.0);
  }

  bool rbf_, debiased_;
  RbfCkaOptions rbf_options_;
  Precision precision_;
};

// ---- CCA family and procrustes: weighted moments -----------------------------------------------

enum class MomentKind { kCca, kSvcca, kProcrustes };

struct MomentLayer : ResampleLayer {
  std::string name;
  at::Tensor raw;         // svcca: the layer as given (pairs with a wide layer: one-shot resamples)
  at::Tensor xc;          // [n, p] centered at the full sample's mean, compute dtype
  at::Tensor mean;        // [p]
  at::Tensor z;           // cca / svcca: whitened basis of the full sample [n, r] (permutations)
  at::Tensor xn;          // procrustes: xc / ||xc||_F (permutations)
  at::Tensor max_square;  // [p] largest squared |xc| of each column (constant-column screen)
  at::ScalarType input_dtype = at::kDouble;
  bool wide = false;  // svcca with p > n: no p x p moments
  int64_t bytes() const override {
    int64_t b = xc.defined() ? xc.numel() * xc.element_size() : 0;
    if (z.defined()) b += z.numel() * z.element_size();
    if (xn.defined()) b += xn.numel() * xn.element_size();
    if (max_square.defined()) b += max_square.numel() * max_square.element_size();
    return b;
  }
};

// The duplicated rows of a resample add no dimension: its kept directions span at most
// distinct - 1, so rx + ry above that forces correlations to 1 as in the one-shot rule
// (check_forced_correlations), which the resample's n (duplicates counted) would not catch. The
// callers allow it for a layer against itself (a grid's diagonal), as the grid does.
bool forced_on_resample(bool allow, int64_t rx, int64_t ry, int64_t distinct) {
  return !allow && rx + ry > distinct - 1;
}

// One resample's moments of a layer.
struct MomentOne {
  bool ok = false;
  at::Tensor a;          // [d, p] drawn distinct rows times sqrt(multiplicity)
  at::Tensor m;          // [p] weighted mean of the (full-mean-centered) rows
  double n = 0;          // resample size
  int64_t distinct = 0;  // distinct examples drawn
  LayerFactors factors;
  double trace = 0;  // procrustes: trace of the resampled covariance
};

struct MomentDraw : ResampleDraw {
  std::vector<MomentOne> one;
};

class MomentResampler : public Resampler {
 public:
  MomentResampler(MomentKind kind, FactorOptions fopt, Precision precision, SvccaOptions svcca,
                  bool permutations, bool allow_forced)
      : kind_(kind),
        fopt_(std::move(fopt)),
        precision_(precision),
        svcca_(std::move(svcca)),
        permutations_(permutations),
        allow_forced_(allow_forced) {
    self_svcca_ = svcca_;
    self_svcca_.cca.allow_forced_correlations = true;  // a layer against itself is exempt
  }

  std::shared_ptr<const ResampleLayer> layer(const char* fn, const std::string& name,
                                             const at::Tensor& mat) const override {
    const int64_t n = mat.size(0), p = mat.size(1);
    TORCH_CHECK_VALUE(n >= 2, fn, ": ", name, " must have at least 2 examples, but got ", n);
    if (kind_ == MomentKind::kCca) check_rows(fn, name, n, p, "cca");
    auto l = std::make_shared<MomentLayer>();
    l->name = name;
    l->input_dtype = mat.scalar_type();
    l->wide = kind_ == MomentKind::kSvcca && p > n;
    const at::Tensor nc = non_constant_columns(mat);
    TORCH_CHECK_VALUE(nc.any().item<bool>(), fn, ": ", name,
                      " must have at least one non-constant feature, but all ", p,
                      " features are constant");
    if (kind_ != MomentKind::kProcrustes && (permutations_ || l->wide)) {
      l->z = whitened_factor(fn, name.c_str(), mat, fopt_, precision_, FactorSide::kAuto).z;
    }
    // svcca: a wide layer's resamples run the one-shot measure (on the pair's raw rows), so its
    // partner's raw rows are needed too.
    if (kind_ == MomentKind::kSvcca) l->raw = mat;
    if (l->wide) return l;
    // Rescaled by a power of two (every measure here is scale invariant): no overflow.
    Centered c = center(mat, compute_dtype(mat, mat, precision_), /*rescale=*/true);
    l->xc = c.data;
    l->mean = c.mean;
    l->max_square = c.data.abs().amax(0).square();
    if (kind_ == MomentKind::kProcrustes) l->xn = c.data / c.data.square().sum().sqrt();
    return l;
  }

  int64_t batch() const override { return 1; }

  std::shared_ptr<const ResampleDraw> draw(const ResampleLayer& layer,
                                           const at::Tensor& weights) const override {
    const auto& l = static_cast<const MomentLayer&>(layer);
    auto d = std::make_shared<MomentDraw>();
    d->one.resize(weights.size(1));
    if (l.wide) return d;
    const int64_t p = l.xc.size(1);
    for (int64_t b = 0; b < weights.size(1); ++b) {
      MomentOne& o = d->one[b];
      const at::Tensor w = weights.select(1, b).to(l.xc.scalar_type());
      const at::Tensor sel = at::nonzero(w).squeeze(1);
      const int64_t distinct = sel.numel();
      o.distinct = distinct;
      if (kind_ == MomentKind::kCca && distinct < p + 2) continue;  // CCA is degenerate there
      const at::Tensor ws = w.index_select(0, sel);
      at::Tensor xs = l.xc.index_select(0, sel);  // a copy of its own: scaled in place below
      o.n = ws.sum().item<double>();
      if (o.n < 2) continue;
      o.m = at::mv(xs.t(), ws) / o.n;
      o.a = xs.mul_(ws.sqrt().unsqueeze(1));
      // covariance(): the symmetric product on and above the diagonal blocks only.
      at::Tensor cov =
          (covariance(o.a).mul_(static_cast<double>(distinct - 1)) - at::outer(o.m, o.m) * o.n) /
          (o.n - 1.0);
      // The columns constant on the drawn rows, exactly: such a column's variance is rounding
      // (constant_screen()), so only the columns whose variance is that low are compared row by
      // row (a pass of min / max over all of xs had cost a tenth of a resample).
      at::Tensor nc = at::ones({p}, cov.options().dtype(at::kBool));
      const at::Tensor maybe =
          at::real(cov.diagonal()) <= l.max_square * constant_screen(distinct, cov.scalar_type());
      if (maybe.any().item<bool>()) {
        const at::Tensor cols = maybe.nonzero().squeeze(1);
        const at::Tensor part = l.xc.index_select(1, cols).index_select(0, sel);
        const auto range = at::aminmax(part, 0);
        nc.index_put_({cols}, std::get<1>(range) != std::get<0>(range));
      }
      if (!nc.any().item<bool>()) continue;
      if (kind_ == MomentKind::kProcrustes) {
        o.trace = cov.trace().item<double>();
        o.ok = o.trace > 0.0;
        continue;
      }
      try {
        o.factors = factor_layer(
            "bootstrap", l.name.c_str(), cov, nc,
            with_input_floor(fopt_, l.input_dtype, l.mean + o.m, cov, static_cast<int64_t>(o.n)));
        o.ok = true;
      } catch (const c10::Error&) {
        o.ok = false;  // no direction left on this resample: the measure is undefined there
      }
    }
    return d;
  }

  at::Tensor values(const ResampleLayer& x, const ResampleDraw& dx, const ResampleLayer& y,
                    const ResampleDraw& dy, const at::Tensor& weights) const override {
    const auto& a = static_cast<const MomentLayer&>(x);
    const auto& b = static_cast<const MomentLayer&>(y);
    const auto& da = static_cast<const MomentDraw&>(dx);
    const auto& db = static_cast<const MomentDraw&>(dy);
    const int64_t count = weights.size(1);
    std::vector<double> out(count, kNaN);
    for (int64_t k = 0; k < count; ++k) {
      if (a.wide || b.wide) {
        const at::Tensor w = weights.select(1, k);
        const at::Tensor rows = drawn_rows(w.to(a.raw.device()));
        try {
          const SvccaResult r =
              svcca::svcca(a.raw.index_select(0, rows), b.raw.index_select(0, rows),
                           &x == &y ? self_svcca_ : svcca_);
          if (!forced(x, y, r.x_dims, r.y_dims, at::count_nonzero(w).item<int64_t>())) {
            out[k] = r.score.item<double>();
          }
        } catch (const c10::Error&) {
        }
        continue;
      }
      const MomentOne& ox = da.one[k];
      const MomentOne& oy = db.one[k];
      if (!ox.ok || !oy.ok) continue;
      if (kind_ != MomentKind::kProcrustes &&
          forced(x, y, ox.factors.rank, oy.factors.rank, ox.distinct)) {
        continue;
      }
      at::Tensor sxy = (at::mm(ox.a.t(), oy.a) - at::outer(ox.m, oy.m) * ox.n) / (ox.n - 1.0);
      if (kind_ == MomentKind::kProcrustes) {
        out[k] = std::min(
            1.0, at::linalg_svdvals(sxy).sum().item<double>() / std::sqrt(ox.trace * oy.trace));
      } else {
        out[k] = cca_core(ox.factors, oy.factors, sxy, false).correlations.mean().item<double>();
      }
    }
    return at::tensor(out, at::kDouble);
  }

  at::Tensor permuted(const ResampleLayer& x, const ResampleLayer& y,
                      const at::Tensor& perms) const override {
    const auto& a = static_cast<const MomentLayer&>(x);
    const auto& b = static_cast<const MomentLayer&>(y);
    const bool proc = kind_ == MomentKind::kProcrustes;
    const at::Tensor& u = proc ? a.xn : a.z;
    const at::Tensor& v = proc ? b.xn : b.z;
    TORCH_INTERNAL_ASSERT(u.defined() && v.defined(), "permuted: layers made without permutations");
    const at::Tensor p = perms.to(u.device());
    const double scale = proc ? 1.0 : 1.0 / static_cast<double>(u.size(0) - 1);
    std::vector<at::Tensor> out;
    for (int64_t i = 0; i < perms.size(0); ++i) {
      at::Tensor s = at::linalg_svdvals(at::mm(u.t(), v.index_select(0, p[i])) * scale);
      out.push_back(proc ? s.sum().clamp(0.0, 1.0) : s.clamp(0.0, 1.0).mean());
    }
    return at::stack(out).to(at::kDouble).cpu();
  }

  bool symmetric() const override { return true; }
  bool concurrent() const override { return true; }

 private:
  bool forced(const ResampleLayer& x, const ResampleLayer& y, int64_t rx, int64_t ry,
              int64_t distinct) const {
    return forced_on_resample(allow_forced_ || &x == &y, rx, ry, distinct);
  }

  MomentKind kind_;
  FactorOptions fopt_;
  Precision precision_;
  SvccaOptions svcca_;
  SvccaOptions self_svcca_;  // svcca_ with the forced-correlation rule off (the diagonal)
  bool permutations_;
  bool allow_forced_;
};

// ---- pwcca: the one-shot measure on the resampled rows -----------------------------------------

struct RawLayer : ResampleLayer {
  at::Tensor mat;
  int64_t bytes() const override { return mat.numel() * mat.element_size(); }
};
struct NoDraw : ResampleDraw {};

class PwccaResampler : public Resampler {
 public:
  explicit PwccaResampler(PwccaOptions o) : o_(std::move(o)) {}
  std::shared_ptr<const ResampleLayer> layer(const char* fn, const std::string& name,
                                             const at::Tensor& mat) const override {
    check_rows(fn, name, mat.size(0), mat.size(1), "pwcca");
    TORCH_CHECK_VALUE(non_constant_columns(mat).any().item<bool>(), fn, ": ", name,
                      " must have at least one non-constant feature, but all ", mat.size(1),
                      " features are constant");
    auto l = std::make_shared<RawLayer>();
    l->mat = mat;
    return l;
  }
  int64_t batch() const override { return 1; }
  std::shared_ptr<const ResampleDraw> draw(const ResampleLayer&, const at::Tensor&) const override {
    return std::make_shared<NoDraw>();
  }
  at::Tensor values(const ResampleLayer& x, const ResampleDraw&, const ResampleLayer& y,
                    const ResampleDraw&, const at::Tensor& weights) const override {
    const at::Tensor& a = static_cast<const RawLayer&>(x).mat;
    const at::Tensor& b = static_cast<const RawLayer&>(y).mat;
    const int64_t need = std::max(a.size(1), b.size(1)) + 2;
    std::vector<double> out(weights.size(1), kNaN);
    for (int64_t k = 0; k < weights.size(1); ++k) {
      const at::Tensor w = weights.select(1, k);
      if (at::count_nonzero(w).item<int64_t>() < need) continue;  // degenerate, as check_rows
      const at::Tensor rows = drawn_rows(w.to(a.device()));
      try {
        PwccaOptions o = o_;
        o.cca.allow_forced_correlations = o.cca.allow_forced_correlations || &x == &y;
        const PwccaResult r = pwcca(a.index_select(0, rows), b.index_select(0, rows), o);
        if (!forced_on_resample(o.cca.allow_forced_correlations, r.x_rank, r.y_rank,
                                at::count_nonzero(w).item<int64_t>())) {
          out[k] = r.score.item<double>();
        }
      } catch (const c10::Error&) {
      }
    }
    return at::tensor(out, at::kDouble);
  }
  at::Tensor permuted(const ResampleLayer& x, const ResampleLayer& y,
                      const at::Tensor& perms) const override {
    const at::Tensor& a = static_cast<const RawLayer&>(x).mat;
    const at::Tensor& b = static_cast<const RawLayer&>(y).mat;
    const at::Tensor p = perms.to(a.device());
    std::vector<double> out;
    for (int64_t i = 0; i < perms.size(0); ++i)
      out.push_back(pwcca(a, b.index_select(0, p[i]), o_).score.item<double>());
    return at::tensor(out, at::kDouble);
  }
  bool symmetric() const override { return false; }
  bool concurrent() const override { return true; }

 private:
  PwccaOptions o_;
};

}  // namespace

std::unique_ptr<Resampler> make_resampler(const char* fn, const std::string& measure,
                                          const GridOptions& o, bool permutations) {
  if (measure == "cka" || measure == "debiased-cka") {
    return std::make_unique<KernelResampler>(false, measure == "debiased-cka", o.rbf, o.precision);
  }
  if (measure == "rbf-cka") {
    check_bandwidth_options(fn, o.rbf);
    return std::make_unique<KernelResampler>(true, o.rbf.debiased, o.rbf, o.rbf.precision);
  }
  if (measure == "cca") {
    check_cca_options(fn, o.cca);
    return std::make_unique<MomentResampler>(MomentKind::kCca, factor_options(o.cca),
                                             o.cca.precision, o.svcca, permutations,
                                             o.cca.allow_forced_correlations);
  }
  if (measure == "svcca") {
    check_svcca_options(fn, o.svcca);
    return std::make_unique<MomentResampler>(MomentKind::kSvcca, svcca_factor_options(o.svcca),
                                             o.svcca.cca.precision, o.svcca, permutations,
                                             o.svcca.cca.allow_forced_correlations);
  }
  if (measure == "procrustes") {
    return std::make_unique<MomentResampler>(MomentKind::kProcrustes, FactorOptions{}, o.precision,
                                             o.svcca, permutations, true);
  }
  if (measure == "pwcca") {
    check_cca_options(fn, o.pwcca.cca);
    return std::make_unique<PwccaResampler>(o.pwcca);
  }
  std::string names;
  for (const auto& m : inference_measure_names())
    names += (names.empty() ? "\"" : ", \"") + m + "\"";
  TORCH_CHECK_VALUE(false, fn, ": measure must be one of ", names, ", but got \"", measure, "\"");
}

// ---- Draws -------------------------------------------------------------------------------------

Draws::Draws(uint64_t seed) : rng_(seed) {}

uint64_t Draws::below(uint64_t n) {
  // Lemire's multiply-shift: (r * n) >> 64, exact on every platform; the bias (n / 2^64) is far
  // below anything a bootstrap can see.
  return static_cast<uint64_t>((static_cast<unsigned __int128>(rng_()) * n) >> 64);
}

at::Tensor Draws::bootstrap_weights(int64_t n, int64_t count) {
  at::Tensor w = at::zeros({count, n}, at::kDouble);
  double* p = w.data_ptr<double>();
  for (int64_t b = 0; b < count; ++b) {
    for (int64_t i = 0; i < n; ++i) p[b * n + static_cast<int64_t>(below(n))] += 1.0;
  }
  return w.t().contiguous();
}

at::Tensor Draws::permutations(int64_t n, int64_t count) {
  at::Tensor out = at::empty({count, n}, at::kLong);
  int64_t* p = out.data_ptr<int64_t>();
  for (int64_t b = 0; b < count; ++b) {
    int64_t* row = p + b * n;
    for (int64_t i = 0; i < n; ++i) row[i] = i;
    for (int64_t i = n - 1; i > 0; --i) std::swap(row[i], row[below(i + 1)]);
  }
  return out;
}

namespace {

// Runs task(k) for k in [0, tasks) on `workers` threads (the caller's among them), each taking
// the next k; workers <= 1: in order on the caller's thread. The BLAS runs each call on the thread
// that makes it, so the threads share the cores the BLAS would have split one call over; ATen's
// thread-local state (grad mode and the like) is the caller's on every thread. The first error is
// rethrown once all threads have stopped.
void run_tasks(int64_t tasks, int64_t workers, const std::function<void(int64_t)>& task) {
  workers = std::min(workers, tasks);
  if (workers <= 1) {
    for (int64_t k = 0; k < tasks; ++k) task(k);
    return;
  }
  SingleThreadedBlas single;
  const at::ThreadLocalState state;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t k = next++; k < tasks && !failed; k = next++) {
      try {
        task(k);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        failed = true;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int64_t t = 1; t < workers; ++t) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

int64_t resample_workers(const Resampler& r, const std::vector<const ResampleLayer*>& layers,
                         at::Device device, int64_t budget_bytes, int64_t requested) {
  if (!r.concurrent() || !device.is_cpu() || requested == 1) return 1;
  int64_t w = requested > 0 ? requested : blas_threads() / std::max(1, at::get_num_threads());
  if (w <= 1) return 1;
  if (budget_bytes > 0) {
    // The layers' state is held already; one batch's draws hold at most as much again.
    int64_t held = 0;
    for (const ResampleLayer* l : layers) held += l->bytes();
    if (held > 0) w = std::min(w, std::max<int64_t>(1, (budget_bytes - held) / held));
  }
  return w;
}

at::Tensor resampled_cells(const Resampler& r, const std::vector<const ResampleLayer*>& layers,
                           const std::vector<std::pair<int64_t, int64_t>>& cells,
                           const at::Tensor& weights, at::Device device, int64_t workers) {
  const int64_t total = weights.size(1);
  at::Tensor out = at::full({static_cast<int64_t>(cells.size()), total}, kNaN, at::kDouble);
  std::vector<bool> used(layers.size(), false);
  for (const auto& [i, j] : cells) used[i] = used[j] = true;
  const int64_t step = std::max<int64_t>(r.batch(), 1);
  const int64_t batches = (total + step - 1) / step;
  auto run = [&](int64_t k) {
    const int64_t start = k * step;
    const int64_t count = std::min(step, total - start);
    const at::Tensor w = weights.narrow(1, start, count).to(device);
    std::vector<std::shared_ptr<const ResampleDraw>> draws(layers.size());
    for (size_t l = 0; l < layers.size(); ++l) {
      if (used[l]) draws[l] = r.draw(*layers[l], w);
    }
    for (size_t c = 0; c < cells.size(); ++c) {
      const auto [i, j] = cells[c];
      out[c]
          .narrow(0, start, count)
          .copy_(r.values(*layers[i], *draws[i], *layers[j], *draws[j], w));
    }
  };
  run_tasks(batches, workers, run);
  return out;
}

at::Tensor permuted_values(const Resampler& r, const ResampleLayer& x, const ResampleLayer& y,
                           const at::Tensor& perms, int64_t workers) {
  const int64_t total = perms.size(0);
  const int64_t chunks = std::min<int64_t>(total, std::max<int64_t>(workers, 1) * 4);
  if (chunks <= 1) return r.permuted(x, y, perms);
  const int64_t step = (total + chunks - 1) / chunks;
  std::vector<at::Tensor> parts((total + step - 1) / step);
  run_tasks(static_cast<int64_t>(parts.size()), workers, [&](int64_t k) {
    parts[k] = r.permuted(x, y, perms.narrow(0, k * step, std::min(step, total - k * step)));
  });
  return at::cat(parts);
}

at::Tensor jackknife_weights(int64_t n, int64_t start, int64_t count) {
  at::Tensor w = at::ones({n, count}, at::kDouble);
  for (int64_t j = 0; j < count; ++j) w[start + j][j] = 0.0;
  return w;
}

}  // namespace detail
}  // namespace svcca
