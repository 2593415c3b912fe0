// Exact, mergeable covariance accumulator over one or more layers.
//
// Why centered co-moments with Chan et al.'s pairwise update, and not plain sums: the covariance
// from raw sums, (sum x x^T - n mean mean^T) / (n - 1), cancels catastrophically when a feature's
// mean is large against its spread (relative error ~ eps * mean^2 / variance). Instead every batch
// is centered on its own mean (two passes over the batch, as the one-shot path does), and batches
// are combined with
//   n = na + nb,  delta = mean_b - mean_a,  mean = mean_a + delta * nb / n,
//   M = M_a + M_b + delta delta^T * na nb / n      (and likewise for cross co-moments),
// (Chan, Golub and LeVeque 1979), which is backward stable: its error does not grow with the mean
// and does not depend on the order or sizes of the batches beyond rounding (~eps * log(#batches)),
// so any order and any batch sizes give the one-shot result to ~1e-12 relative in float64.
// Across ranks the same identity is applied all at once: recentering each rank's co-moments to
// the global mean makes them add up (stream/distributed.cpp).
#include "svcca/stream/covariance_accumulator.h"

#include <ATen/ATen.h>

#include <cmath>
#include <functional>
#include <set>
#include <sstream>

#include "svcca/checks.h"
#include "svcca/linalg.h"
#include "svcca/measures/cka.h"
#include "svcca/stream/scaling.h"
#include "svcca/stream/state_file.h"

namespace svcca {
namespace {

constexpr const char* kKind = "covariance";

std::string names_str(const std::vector<std::string>& names) {
  std::ostringstream out;
  for (size_t i = 0; i < names.size(); ++i) out << (i ? ", " : "") << names[i];
  return out.str();
}

at::ScalarType parse_dtype(const char* fn, const std::string& path, const std::string& s) {
  if (s == c10::toString(at::kDouble)) return at::kDouble;
  if (s == c10::toString(at::kFloat)) return at::kFloat;
  TORCH_CHECK_VALUE(false, fn, ": path must hold a float32 or float64 state, but \"", path,
                    "\" says dtype ", s, " (corrupt file)");
}

std::vector<at::Tensor> clone_all(const std::vector<at::Tensor>& v) {
  std::vector<at::Tensor> out;
  for (const auto& t : v) out.push_back(t.clone());
  return out;
}

// Largest magnitude of each layer's columns given their min and max: [L] doubles, one sync.
std::vector<double> magnitudes(const std::vector<at::Tensor>& mn,
                               const std::vector<at::Tensor>& mx) {
  std::vector<at::Tensor> m;
  for (size_t l = 0; l < mn.size(); ++l) {
    m.push_back(at::maximum(mn[l].abs(), mx[l].abs()).max().to(at::kDouble).cpu());
  }
  at::Tensor all = at::stack(m);
  return std::vector<double>(all.data_ptr<double>(), all.data_ptr<double>() + all.numel());
}

// The index of the first true entry of a bool tensor, as "j" or "(i, j)".
std::string first_index(const at::Tensor& bad) {
  at::Tensor idx = bad.nonzero().select(0, 0).cpu();
  std::ostringstream out;
  if (idx.numel() == 1) {
    out << idx[0].item<int64_t>();
  } else {
    out << "(" << idx[0].item<int64_t>() << ", " << idx[1].item<int64_t>() << ")";
  }
  return out.str();
}

double value_at(const at::Tensor& t, const at::Tensor& bad) {
  return t.masked_select(bad).select(0, 0).item<double>();
}

// Refuses a state that no data can give (see set_state in the header). All in float64 on the
// state's device, in the layers' scaled units. `name(key)` names an entry in messages.
void check_consistent(const char* fn, const std::function<std::string(const std::string&)>& name,
                      double n, const std::vector<at::Tensor>& mean,
                      const std::vector<at::Tensor>& comoment, const std::vector<at::Tensor>& mn,
                      const std::vector<at::Tensor>& mx, const std::vector<int>& kexp,
                      const std::vector<std::pair<int64_t, int64_t>>& pairs,
                      const std::vector<at::Tensor>& cross, at::ScalarType dtype) {
  const bool f32 = dtype == at::kFloat;
  const double tol = f32 ? 1e-3 : 1e-6;
  // Rounding of the sums, relative to the largest term, and an absolute floor for values whose
  // squares are subnormal (relative to the layer's largest magnitude, they are below 1e-250).
  const double eps = f32 ? 1.2e-7 : 2.3e-16;
  const double floor = n * (f32 ? 1e-30 : 1e-290);
  auto finite = [&](const std::string& key, const at::Tensor& t) {
    at::Tensor bad = at::isfinite(t).logical_not_();
    if (!bad.any().item<bool>()) return;
    TORCH_CHECK_VALUE(false, fn, ": ", name(key), " must be finite, but it holds ",
                      at::isnan(t).sum().item<int64_t>(), " NaN and ",
                      at::isinf(t).sum().item<int64_t>(), " Inf (first at ", first_index(bad), ")");
  };
  const size_t n_layers = mean.size();
  std::vector<at::Tensor> root(n_layers), mag(n_layers), frob(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    const std::string i = std::to_string(l);
    finite("mean." + i, mean[l]);
    finite("comoment." + i, comoment[l]);
    finite("min." + i, mn[l]);
    finite("max." + i, mx[l]);
    const at::Tensor lo = detail::mul_pow2(mn[l].to(at::kDouble), -kexp[l]);
    const at::Tensor hi = detail::mul_pow2(mx[l].to(at::kDouble), -kexp[l]);
    at::Tensor bad = lo > hi;
    TORCH_CHECK_VALUE(!bad.any().item<bool>(), fn, ": ", name("min." + i), " must not exceed ",
                      name("max." + i), ", but feature ", first_index(bad), " has min ",
                      value_at(mn[l].to(at::kDouble), bad), " > max ",
                      value_at(mx[l].to(at::kDouble), bad));
    const at::Tensor a = at::maximum(lo.abs(), hi.abs());
    const at::Tensor m = mean[l].to(at::kDouble);
    bad = (m < lo - tol * a) | (m > hi + tol * a);
    TORCH_CHECK_VALUE(!bad.any().item<bool>(), fn, ": ", name("mean." + i),
                      " must lie within each feature's [min, max], but feature ", first_index(bad),
                      " has mean ", detail::pow2(kexp[l]) * value_at(m, bad), " outside [",
                      value_at(mn[l].to(at::kDouble), bad), ", ",
                      value_at(mx[l].to(at::kDouble), bad), "]");
    const at::Tensor c = comoment[l].to(at::kDouble);
    const at::Tensor d = c.diagonal();
    const at::Tensor r2 = (hi - lo).square();
    const at::Tensor slack = tol * eps * n * a.square() + floor;
    bad = (d < r2 * (0.5 * (1 - tol)) - slack) | (d > r2 * (0.25 * n * (1 + tol)) + slack);
    TORCH_CHECK_VALUE(!bad.any().item<bool>(), fn, ": ", name("comoment." + i),
                      " must have each diagonal entry (n - 1 times a variance) within [(max - "
                      "min)^2 / 2, n (max - min)^2 / 4] of its feature, as any data of that range "
                      "has, but entry ",
                      first_index(bad), " is ", value_at(d, bad), " (in scaled units) for a range ",
                      value_at(hi - lo, bad), " and n = ", n);
    root[l] = d.clamp_min(0).sqrt();
    mag[l] = a;
    frob[l] = c.square().sum().sqrt();
    const at::Tensor bound =
        at::outer(root[l], root[l]) * (1 + tol) + tol * eps * n * at::outer(a, a) + floor;
    bad = c.abs() > bound;
    TORCH_CHECK_VALUE(!bad.any().item<bool>(), fn, ": ", name("comoment." + i),
                      " must satisfy the Cauchy-Schwarz inequality M_ij^2 <= M_ii M_jj, as any "
                      "data does, but entry ",
                      first_index(bad), " is ", value_at(c, bad),
                      " against sqrt(M_ii M_jj) = ", value_at(bound, bad) / (1 + tol));
  }
  for (size_t k = 0; k < pairs.size(); ++k) {
    const int64_t pa = pairs[k].first, pb = pairs[k].second;
    const std::string key = "cross." + std::to_string(pa) + "." + std::to_string(pb);
    finite(key, cross[k]);
    const at::Tensor c = cross[k].to(at::kDouble);
    const at::Tensor bound = at::outer(root[pa], root[pb]) * (1 + tol) +
                             tol * eps * n * at::outer(mag[pa], mag[pb]) + floor;
    at::Tensor bad = c.abs() > bound;
    TORCH_CHECK_VALUE(!bad.any().item<bool>(), fn, ": ", name(key),
                      " must satisfy the Cauchy-Schwarz inequality C_ij^2 <= M_ii M_jj with the "
                      "layers' co-moment diagonals, as any data does, but entry ",
                      first_index(bad), " is ", value_at(c, bad),
                      " against sqrt(M_ii M_jj) = ", value_at(bound, bad) / (1 + tol));
    // ||C||_F^2 <= ||M_a||_F ||M_b||_F: linear CKA <= 1 for any data.
    const double lhs = c.square().sum().item<double>();
    const double rhs = (frob[pa] * frob[pb]).item<double>();
    const double slack = tol * eps * n * n * mag[pa].square().sum().item<double>() *
                             mag[pb].square().sum().item<double>() +
                         floor;
    TORCH_CHECK_VALUE(lhs <= rhs * (1 + tol) + slack, fn, ": ", name(key),
                      " must satisfy ||C||_F^2 <= ||M_a||_F ||M_b||_F with the layers' "
                      "co-moments (linear CKA <= 1), as any data does, but got ",
                      lhs, " against ", rhs, " (in scaled units)");
  }
}

}  // namespace

CovarianceAccumulator::CovarianceAccumulator(const CovarianceAccumulator& other) {
  std::lock_guard<std::mutex> lock(other.mutex_);
  copy_from(other);
}

CovarianceAccumulator::CovarianceAccumulator(CovarianceAccumulator&& other) noexcept {
  std::lock_guard<std::mutex> lock(other.mutex_);
  move_from(other);
}

CovarianceAccumulator& CovarianceAccumulator::operator=(const CovarianceAccumulator& other) {
  if (this == &other) return *this;
  std::scoped_lock lock(mutex_, other.mutex_);
  copy_from(other);
  return *this;
}

CovarianceAccumulator& CovarianceAccumulator::operator=(CovarianceAccumulator&& other) noexcept {
  if (this == &other) return *this;
  std::scoped_lock lock(mutex_, other.mutex_);
  move_from(other);
  return *this;
}

void CovarianceAccumulator::move_from(CovarianceAccumulator& other) noexcept {
  options_ = std::move(other.options_);
  pairs_ = std::move(other.pairs_);
  n_ = other.n_;
  p_ = std::move(other.p_);
  input_dtypes_ = std::move(other.input_dtypes_);
  mean_ = std::move(other.mean_);
  comoment_ = std::move(other.comoment_);
  min_ = std::move(other.min_);
  max_ = std::move(other.max_);
  cross_ = std::move(other.cross_);
  scale_exp_ = std::move(other.scale_exp_);
  other.n_ = 0;
}

// Deep: a copy's tensors are its own (update() writes the state in place).
void CovarianceAccumulator::copy_from(const CovarianceAccumulator& other) {
  options_ = other.options_;
  pairs_ = other.pairs_;
  n_ = other.n_;
  p_ = other.p_;
  input_dtypes_ = other.input_dtypes_;
  mean_ = clone_all(other.mean_);
  comoment_ = clone_all(other.comoment_);
  min_ = clone_all(other.min_);
  max_ = clone_all(other.max_);
  cross_ = clone_all(other.cross_);
  scale_exp_ = other.scale_exp_;
}

void CovarianceAccumulator::reset() {
  n_ = 0;
  p_.clear();
  input_dtypes_.clear();
  mean_.clear();
  comoment_.clear();
  min_.clear();
  max_.clear();
  cross_.clear();
  scale_exp_.clear();
}

int64_t CovarianceAccumulator::n() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return n_;
}

std::vector<int64_t> CovarianceAccumulator::n_features() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return p_;
}

std::vector<at::ScalarType> CovarianceAccumulator::input_dtypes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return input_dtypes_;
}

std::vector<double> CovarianceAccumulator::scales() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<double> out;
  for (int k : scale_exp_) out.push_back(detail::pow2(k));
  return out;
}

CovarianceAccumulator::CovarianceAccumulator(CovarianceAccumulatorOptions options)
    : options_(std::move(options)) {
  constexpr const char* fn = "CovarianceAccumulator";
  const auto& layers = options_.layers;
  TORCH_CHECK_VALUE(!layers.empty(), fn, ": layers must name at least one layer, but got none");
  std::set<std::string> unique(layers.begin(), layers.end());
  TORCH_CHECK_VALUE(unique.size() == layers.size(), fn, ": layers must be unique, but got [",
                    names_str(layers), "]");
  TORCH_CHECK_TYPE(options_.dtype == at::kDouble || options_.dtype == at::kFloat, fn,
                   ": dtype must be float32 or float64, but got ", options_.dtype);
  if (options_.pairs.empty()) {
    for (int64_t a = 0; a < static_cast<int64_t>(layers.size()); ++a) {
      for (int64_t b = a + 1; b < static_cast<int64_t>(layers.size()); ++b)
        pairs_.push_back({a, b});
    }
  } else {
    for (const auto& pr : options_.pairs) {
      const int64_t a = layer_index(fn, pr.first);
      const int64_t b = layer_index(fn, pr.second);
      TORCH_CHECK_VALUE(a != b, fn, ": pairs must join two different layers, but got (", pr.first,
                        ", ", pr.second, ") (a layer's own moments are always kept)");
      TORCH_CHECK_VALUE(pair_index_or_none(a, b) < 0, fn, ": pairs must be unique, but (", pr.first,
                        ", ", pr.second, ") is repeated");
      pairs_.push_back({a, b});
    }
  }
}

int64_t CovarianceAccumulator::pair_index_or_none(int64_t a, int64_t b) const {
  for (size_t i = 0; i < pairs_.size(); ++i) {
    if ((pairs_[i].first == a && pairs_[i].second == b) ||
        (pairs_[i].first == b && pairs_[i].second == a)) {
      return static_cast<int64_t>(i);
    }
  }
  return -1;
}

int64_t CovarianceAccumulator::layer_index(const char* fn, const std::string& name) const {
  const auto& layers = options_.layers;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] == name) return static_cast<int64_t>(i);
  }
  TORCH_CHECK_VALUE(false, fn, ": layer must be one of [", names_str(layers), "], but got \"", name,
                    "\"");
}

void CovarianceAccumulator::update(const at::Tensor& x, const at::Tensor& y) {
  update(std::vector<at::Tensor>{x, y});
}

void CovarianceAccumulator::update(const std::map<std::string, at::Tensor>& batches) {
  constexpr const char* fn = "CovarianceAccumulator::update";
  std::vector<at::Tensor> ordered;
  for (const auto& name : options_.layers) {
    auto it = batches.find(name);
    TORCH_CHECK_VALUE(it != batches.end(), fn, ": batches must hold every layer [",
                      names_str(options_.layers), "], but \"", name, "\" is missing");
    ordered.push_back(it->second);
  }
  TORCH_CHECK_VALUE(batches.size() == ordered.size(), fn, ": batches must hold only the layers [",
                    names_str(options_.layers), "], but got ", batches.size(), " entries");
  update(ordered);
}

void CovarianceAccumulator::update(const std::vector<at::Tensor>& batches) {
  constexpr const char* fn = "CovarianceAccumulator::update";
  const auto& layers = options_.layers;
  const size_t n_layers = layers.size();
  TORCH_CHECK_VALUE(batches.size() == n_layers, fn, ": batches must hold one tensor per layer (",
                    n_layers, ": ", names_str(layers), "), but got ", batches.size());

  // Validate everything before touching the state, so a rejected batch leaves it unchanged.
  // The checks of the batches alone (a full pass for finiteness) run before taking the lock.
  for (size_t l = 0; l < n_layers; ++l) {
    const at::Tensor& t = batches[l];
    detail::check_matrix(fn, layers[l].c_str(), t);
    if (l > 0) {
      TORCH_CHECK_VALUE(t.device() == batches[0].device(), fn, ": ", layers[0], " and ", layers[l],
                        " must be on the same device, but got ", layers[0], " on ",
                        batches[0].device(), " and ", layers[l], " on ", t.device());
      TORCH_CHECK_VALUE(t.size(0) == batches[0].size(0), fn, ": ", layers[0], " and ", layers[l],
                        " must have the same number of rows (dim 0), but got ", layers[0],
                        " with shape ", detail::shape_str(batches[0]), " and ", layers[l],
                        " with shape ", detail::shape_str(t));
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (!p_.empty()) {
    for (size_t l = 0; l < n_layers; ++l) {
      const at::Tensor& t = batches[l];
      TORCH_CHECK_VALUE(t.size(1) == p_[l], fn, ": ", layers[l], " must have ", p_[l],
                        " features (dim 1) as in earlier batches, but got shape ",
                        detail::shape_str(t));
      TORCH_CHECK_TYPE(t.scalar_type() == input_dtypes_[l], fn, ": ", layers[l],
                       " must have dtype ", input_dtypes_[l],
                       " as in earlier batches, but got dtype ", t.scalar_type());
    }
  }

  const bool first = p_.empty();
  const at::Device device = first ? batches[0].device() : mean_[0].device();
  // Each layer's unit: the larger of the stored one and the batch's (see Scale in the header).
  const int K = detail::safe_exponent(options_.dtype);
  std::vector<at::Tensor> bmin(n_layers), bmax(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    at::Tensor t = batches[l].to(device);
    bmin[l] = t.amin(0);
    bmax[l] = t.amax(0);
  }
  const std::vector<double> m = magnitudes(bmin, bmax);
  const std::vector<double> r = first ? std::vector<double>(n_layers, 0.0) : magnitudes(min_, max_);
  std::vector<int> k(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    const int kb = detail::scale_exponent(m[l], K);
    k[l] = first || r[l] == 0.0 ? kb : (m[l] == 0.0 ? scale_exp_[l] : std::max(scale_exp_[l], kb));
  }
  if (first) {
    const auto opts = batches[0].options().dtype(options_.dtype);
    for (size_t l = 0; l < n_layers; ++l) {
      const int64_t p = batches[l].size(1);
      p_.push_back(p);
      input_dtypes_.push_back(batches[l].scalar_type());
      mean_.push_back(at::zeros({p}, opts));
      comoment_.push_back(at::zeros({p, p}, opts));
      min_.push_back(bmin[l]);
      max_.push_back(bmax[l]);
    }
    for (const auto& pr : pairs_) cross_.push_back(at::zeros({p_[pr.first], p_[pr.second]}, opts));
    scale_exp_ = k;
  } else {
    // A larger unit: the stored moments shrink by a power of two (exact, barring underflow of
    // terms that are negligible at the new scale).
    for (size_t i = 0; i < pairs_.size(); ++i) {
      const int d = (scale_exp_[pairs_[i].first] - k[pairs_[i].first]) +
                    (scale_exp_[pairs_[i].second] - k[pairs_[i].second]);
      if (d != 0) cross_[i] = detail::mul_pow2(cross_[i], d);
    }
    for (size_t l = 0; l < n_layers; ++l) {
      const int d = scale_exp_[l] - k[l];
      if (d == 0) continue;
      mean_[l] = detail::mul_pow2(mean_[l], d);
      comoment_[l] = detail::mul_pow2(comoment_[l], 2 * d);
    }
    scale_exp_ = k;
  }
  const int64_t b = batches[0].size(0);
  const double na = static_cast<double>(n_);
  const double nb = static_cast<double>(b);
  const double n = na + nb;
  const double weight = na * nb / n;

  std::vector<at::Tensor> centered(n_layers), delta(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    // Scaled in the input dtype (exact: a power of two), then converted: a float64 batch at
    // 1e200 would overflow a float32 accumulator before scaling.
    at::Tensor x = detail::mul_pow2(batches[l].to(device), -k[l]).to(options_.dtype);
    at::Tensor mb = x.mean(0);
    // Center in place when the conversion made a copy (saves one [b, p] buffer per layer).
    centered[l] = x.is_same(batches[l]) ? x - mb : x.sub_(mb);
    delta[l] = mb - mean_[l];
  }
  for (size_t l = 0; l < n_layers; ++l) {
    detail::add_product_(comoment_[l], centered[l], /*outer=*/false);
    if (n_ > 0) comoment_[l].addr_(delta[l], delta[l], /*beta=*/1.0, /*alpha=*/weight);
    mean_[l].add_(delta[l], nb / n);
    if (!first) {
      min_[l] = at::minimum(min_[l], bmin[l]);
      max_[l] = at::maximum(max_[l], bmax[l]);
    }
  }
  for (size_t i = 0; i < pairs_.size(); ++i) {
    const auto a = pairs_[i].first;
    const auto c = pairs_[i].second;
    cross_[i].addmm_(centered[a].t(), centered[c]);
    if (n_ > 0) cross_[i].addr_(delta[a], delta[c], /*beta=*/1.0, /*alpha=*/weight);
  }
  n_ += b;
}

void CovarianceAccumulator::check_compatible(const char* fn, const char* name,
                                             const CovarianceAccumulator& other) const {
  TORCH_CHECK_VALUE(other.options_.layers == options_.layers, fn, ": ", name,
                    " must have the same layers [", names_str(options_.layers), "], but got [",
                    names_str(other.options_.layers), "]");
  TORCH_CHECK_VALUE(other.pairs_ == pairs_, fn, ": ", name,
                    " must keep the same pairs of layers, but got ", other.pairs_.size(),
                    " pairs against ", pairs_.size(), " (or in another order)");
  TORCH_CHECK_TYPE(other.options_.dtype == options_.dtype, fn, ": ", name,
                   " must accumulate in dtype ", options_.dtype, ", but got ",
                   other.options_.dtype);
  if (p_.empty() || other.p_.empty()) return;
  for (size_t l = 0; l < p_.size(); ++l) {
    TORCH_CHECK_VALUE(other.p_[l] == p_[l], fn, ": ", name, " must have ", p_[l],
                      " features in layer ", options_.layers[l], ", but got ", other.p_[l]);
    TORCH_CHECK_TYPE(other.input_dtypes_[l] == input_dtypes_[l], fn, ": ", name,
                     " must have seen dtype ", input_dtypes_[l], " in layer ", options_.layers[l],
                     ", but got ", other.input_dtypes_[l]);
  }
}

void CovarianceAccumulator::merge(const CovarianceAccumulator& other) {
  constexpr const char* fn = "CovarianceAccumulator::merge";
  if (&other == this) {
    const CovarianceAccumulator copy(other);  // the same rows twice
    std::lock_guard<std::mutex> lock(mutex_);
    merge_locked(fn, copy);
    return;
  }
  std::scoped_lock lock(mutex_, other.mutex_);  // deadlock-free for a.merge(b) || b.merge(a)
  merge_locked(fn, other);
}

void CovarianceAccumulator::merge_locked(const char* fn, const CovarianceAccumulator& other) {
  check_compatible(fn, "other", other);
  if (other.n_ == 0) return;
  if (n_ == 0) {
    // Adopt other's state (copies, on other's device).
    copy_from(other);
    return;
  }
  const at::Device device = mean_[0].device();
  const double na = static_cast<double>(n_);
  const double nb = static_cast<double>(other.n_);
  const double n = na + nb;
  const size_t n_layers = p_.size();
  // The common unit: the larger of the two (a side that has seen only zeros has none).
  const std::vector<double> r_this = magnitudes(min_, max_);
  const std::vector<double> r_other = magnitudes(other.min_, other.max_);
  std::vector<int> k(n_layers), d_this(n_layers), d_other(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    const int kt = scale_exp_[l], ko = other.scale_exp_[l];
    k[l] = r_this[l] == 0.0 ? ko : (r_other[l] == 0.0 ? kt : std::max(kt, ko));
    d_this[l] = kt - k[l];
    d_other[l] = ko - k[l];
  }
  std::vector<at::Tensor> delta(n_layers);
  for (size_t l = 0; l < n_layers; ++l) {
    if (d_this[l] != 0) {
      mean_[l] = detail::mul_pow2(mean_[l], d_this[l]);
      comoment_[l] = detail::mul_pow2(comoment_[l], 2 * d_this[l]);
    }
    const at::Tensor other_mean = detail::mul_pow2(other.mean_[l].to(device), d_other[l]);
    const at::Tensor other_comoment =
        detail::mul_pow2(other.comoment_[l].to(device), 2 * d_other[l]);
    delta[l] = other_mean - mean_[l];
    comoment_[l].add_(other_comoment).addr_(delta[l], delta[l], 1.0, na * nb / n);
    mean_[l].add_(delta[l], nb / n);
    min_[l] = at::minimum(min_[l], other.min_[l].to(device));
    max_[l] = at::maximum(max_[l], other.max_[l].to(device));
  }
  for (size_t i = 0; i < pairs_.size(); ++i) {
    const int64_t a = pairs_[i].first, c = pairs_[i].second;
    if (d_this[a] + d_this[c] != 0) cross_[i] = detail::mul_pow2(cross_[i], d_this[a] + d_this[c]);
    cross_[i]
        .add_(detail::mul_pow2(other.cross_[i].to(device), d_other[a] + d_other[c]))
        .addr_(delta[a], delta[c], 1.0, na * nb / n);
  }
  scale_exp_ = k;
  n_ += other.n_;
}

void CovarianceAccumulator::check_enough(const char* fn, int64_t a, int64_t b,
                                         bool cca_like) const {
  TORCH_CHECK_VALUE(n_ >= 2, fn, ": the accumulator must have seen at least 2 rows, but got ", n_);
  if (!cca_like) return;
  for (int64_t l : {a, b}) {
    const int64_t needed = p_[l] + 2;
    TORCH_CHECK_VALUE(n_ >= needed, fn, ": ", options_.layers[l],
                      " must have more examples than features (at least ", needed, " rows for ",
                      p_[l], " features), but the accumulator has seen ", n_,
                      " rows. Centered, n examples span at most n - 1 directions, so with "
                      "n - 1 <= p CCA reports perfect correlations for any data; stream more rows "
                      "or use svcca");
  }
}

detail::PairMoments CovarianceAccumulator::pair_moments(const std::string& x_layer,
                                                        const std::string& y_layer) const {
  return moments("CovarianceAccumulator::pair_moments", x_layer, y_layer, /*cca_like=*/false);
}

detail::PairMoments CovarianceAccumulator::moments(const char* fn, const std::string& x_layer,
                                                   const std::string& y_layer,
                                                   bool cca_like) const {
  const int64_t a = layer_index(fn, x_layer);
  const int64_t b = layer_index(fn, y_layer);
  // Everything the result needs is copied under the lock; the measure runs outside it.
  std::lock_guard<std::mutex> lock(mutex_);
  at::Tensor cross;
  if (a == b) {
    cross = n_ > 0 ? comoment_[a] : at::Tensor();
  } else {
    const int64_t i = pair_index_or_none(a, b);
    TORCH_CHECK_VALUE(i >= 0, fn, ": the pair (", x_layer, ", ", y_layer,
                      ") must be among the accumulator's pairs, but its cross-products were not "
                      "kept (see CovarianceAccumulatorOptions::pairs)");
    if (n_ > 0) cross = pairs_[i].first == a ? cross_[i] : cross_[i].t();
  }
  check_enough(fn, a, b, cca_like);
  const double scale = 1.0 / static_cast<double>(n_ - 1);
  detail::PairMoments m;
  m.n = n_;
  m.x_mean = mean_[a].clone();
  m.y_mean = mean_[b].clone();
  m.sxx = comoment_[a] * scale;
  m.syy = comoment_[b] * scale;
  m.sxy = cross * scale;
  m.x_non_constant = max_[a] != min_[a];
  m.y_non_constant = max_[b] != min_[b];
  m.result_dtype = at::promote_types(input_dtypes_[a], input_dtypes_[b]);
  m.x_input_dtype = input_dtypes_[a];
  m.y_input_dtype = input_dtypes_[b];
  // The moments' units, as detail::pair_moments reports its own (weights come back in data
  // units through them).
  m.x_scale = detail::pow2(scale_exp_[a]);
  m.y_scale = detail::pow2(scale_exp_[b]);
  return m;
}

CcaResult CovarianceAccumulator::cca(const CcaOptions& options) const {
  return cca(default_x(), default_y(), options);
}

CcaResult CovarianceAccumulator::cca(const std::string& x_layer, const std::string& y_layer,
                                     const CcaOptions& options) const {
  constexpr const char* fn = "CovarianceAccumulator::cca";
  detail::check_cca_options(fn, options);
  return detail::cca_from_moments(fn, moments(fn, x_layer, y_layer, true), options);
}

SvccaResult CovarianceAccumulator::svcca(const SvccaOptions& options) const {
  return svcca(default_x(), default_y(), options);
}

SvccaResult CovarianceAccumulator::svcca(const std::string& x_layer, const std::string& y_layer,
                                         const SvccaOptions& options) const {
  constexpr const char* fn = "CovarianceAccumulator::svcca";
  detail::check_svcca_options(fn, options);
  return detail::svcca_from_moments(fn, moments(fn, x_layer, y_layer, false), options);
}

PwccaResult CovarianceAccumulator::pwcca(const PwccaOptions& options) const {
  return pwcca(default_x(), default_y(), options);
}

PwccaResult CovarianceAccumulator::pwcca(const std::string& x_layer, const std::string& y_layer,
                                         const PwccaOptions& options) const {
  constexpr const char* fn = "CovarianceAccumulator::pwcca";
  detail::check_cca_options(fn, options.cca);
  return detail::pwcca_from_moments(fn, moments(fn, x_layer, y_layer, true), options);
}

at::Tensor CovarianceAccumulator::r2_cca(const CcaOptions& options) const {
  return r2_cca(default_x(), default_y(), options);
}

at::Tensor CovarianceAccumulator::r2_cca(const std::string& x_layer, const std::string& y_layer,
                                         const CcaOptions& options) const {
  constexpr const char* fn = "CovarianceAccumulator::r2_cca";
  detail::check_cca_options(fn, options);
  auto r = detail::cca_from_moments(fn, moments(fn, x_layer, y_layer, true), options);
  return mean_squared_correlation(r.correlations);
}

at::Tensor CovarianceAccumulator::linear_cka() const {
  return linear_cka(default_x(), default_y());
}

at::Tensor CovarianceAccumulator::linear_cka(const std::string& x_layer,
                                             const std::string& y_layer) const {
  constexpr const char* fn = "CovarianceAccumulator::linear_cka";
  // The one moment formula of measures/cka (biased HSIC, feature space); the debiased estimate
  // needs the data's row norms, which a covariance accumulator does not keep.
  return detail::linear_cka_from_moments(fn, moments(fn, x_layer, y_layer, false),
                                         /*debiased=*/false);
}

std::map<std::string, at::Tensor> CovarianceAccumulator::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::map<std::string, at::Tensor> s;
  if (n_ == 0) return s;
  const auto o64 = mean_[0].options().dtype(at::kDouble);
  s["n"] = at::scalar_tensor(static_cast<double>(n_), o64);
  for (size_t l = 0; l < p_.size(); ++l) {
    const std::string i = std::to_string(l);
    s["mean." + i] = mean_[l].clone();
    s["comoment." + i] = comoment_[l].clone();
    s["min." + i] = min_[l].clone();
    s["max." + i] = max_[l].clone();
    s["scale." + i] = at::scalar_tensor(detail::pow2(scale_exp_[l]), o64);
  }
  for (size_t i = 0; i < pairs_.size(); ++i) {
    s["cross." + std::to_string(pairs_[i].first) + "." + std::to_string(pairs_[i].second)] =
        cross_[i].clone();
  }
  return s;
}

std::map<std::string, at::Tensor> CovarianceAccumulator::unscaled_state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::map<std::string, at::Tensor> s;
  if (n_ == 0) return s;
  s["n"] = at::scalar_tensor(static_cast<double>(n_), mean_[0].options().dtype(at::kDouble));
  for (size_t l = 0; l < p_.size(); ++l) {
    const std::string i = std::to_string(l);
    s["mean." + i] = detail::mul_pow2(mean_[l], scale_exp_[l]).clone();
    s["comoment." + i] = detail::mul_pow2(comoment_[l], 2 * scale_exp_[l]).clone();
    s["min." + i] = min_[l].clone();
    s["max." + i] = max_[l].clone();
  }
  for (size_t i = 0; i < pairs_.size(); ++i) {
    const int k = scale_exp_[pairs_[i].first] + scale_exp_[pairs_[i].second];
    s["cross." + std::to_string(pairs_[i].first) + "." + std::to_string(pairs_[i].second)] =
        detail::mul_pow2(cross_[i], k).clone();
  }
  return s;
}

void CovarianceAccumulator::set_state(const std::map<std::string, at::Tensor>& state) {
  std::lock_guard<std::mutex> lock(mutex_);
  set_state_impl("CovarianceAccumulator::set_state", state, "");
}

void CovarianceAccumulator::set_state_impl(const char* fn,
                                           const std::map<std::string, at::Tensor>& state,
                                           const std::string& where) {
  if (state.empty()) {
    reset();
    return;
  }
  // state["key"], and the file it came from when loading.
  auto name = [&](const std::string& key) {
    return "state[\"" + key + "\"]" + (where.empty() ? "" : " of \"" + where + "\"");
  };
  auto get = [&](const std::string& key) -> const at::Tensor& {
    auto it = state.find(key);
    TORCH_CHECK_VALUE(it != state.end() && it->second.defined(), fn,
                      ": state must hold the tensor \"", key, "\", but it is missing",
                      where.empty() ? "" : " in \"" + where + "\"");
    return it->second;
  };
  // Copies, so that the caller's tensors (e.g. all_reduce buffers) never alias the state.
  const at::Tensor& n_t = get("n");
  TORCH_CHECK_VALUE(n_t.numel() == 1 && n_t.is_floating_point(), fn, ": ", name("n"),
                    " must be a one-element floating tensor, but got shape ",
                    detail::shape_str(n_t), " and dtype ", n_t.scalar_type());
  const double n_d = n_t.item<double>();
  TORCH_CHECK_VALUE(n_d >= 1 && n_d == std::floor(n_d) && n_d < 9007199254740992.0, fn, ": ",
                    name("n"), " must be a positive integer, but got ", n_d);
  const at::Device device = n_t.device();
  const size_t n_layers = options_.layers.size();
  std::vector<int64_t> p(n_layers);
  std::vector<at::ScalarType> in_dtypes(n_layers);
  std::vector<at::Tensor> mean(n_layers), comoment(n_layers), mn(n_layers), mx(n_layers);
  std::vector<int> kexp(n_layers, 0);
  auto check = [&](const std::string& key, const at::Tensor& t, std::vector<int64_t> shape,
                   c10::optional<at::ScalarType> dtype) {
    TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(shape), fn, ": ", name(key), " must have shape ",
                      at::IntArrayRef(shape), ", but got ", detail::shape_str(t));
    if (dtype) {
      TORCH_CHECK_TYPE(t.scalar_type() == *dtype, fn, ": ", name(key), " must have dtype ", *dtype,
                       ", but got ", t.scalar_type());
    }
    TORCH_CHECK_VALUE(t.device() == device, fn, ": ", name(key), " must be on ", device,
                      " as state[\"n\"], but got ", t.device());
  };
  // Scales: one per layer, or none (a state from before file format 2: every scale 1).
  size_t n_scales = 0;
  for (size_t l = 0; l < n_layers; ++l) n_scales += state.count("scale." + std::to_string(l));
  TORCH_CHECK_VALUE(n_scales == 0 || n_scales == n_layers, fn,
                    ": state must hold a \"scale.l\" entry for every layer or for none, but got ",
                    n_scales, " for ", n_layers, " layers",
                    where.empty() ? "" : " in \"" + where + "\"");
  for (size_t l = 0; l < n_layers; ++l) {
    const std::string i = std::to_string(l);
    mean[l] = get("mean." + i).clone();
    TORCH_CHECK_VALUE(mean[l].dim() == 1, fn, ": ", name("mean." + i),
                      " must be 1-D, but got shape ", detail::shape_str(mean[l]));
    p[l] = mean[l].size(0);
    check("mean." + i, mean[l], {p[l]}, options_.dtype);
    comoment[l] = get("comoment." + i).clone();
    check("comoment." + i, comoment[l], {p[l], p[l]}, options_.dtype);
    mn[l] = get("min." + i).clone();
    mx[l] = get("max." + i).clone();
    in_dtypes[l] = mn[l].scalar_type();
    TORCH_CHECK_TYPE(in_dtypes[l] == at::kFloat || in_dtypes[l] == at::kDouble, fn, ": ",
                     name("min." + i), " must be float32 or float64 (the input dtype), but got ",
                     in_dtypes[l]);
    check("min." + i, mn[l], {p[l]}, in_dtypes[l]);
    check("max." + i, mx[l], {p[l]}, in_dtypes[l]);
    if (n_scales > 0) {
      const at::Tensor& sc = get("scale." + i);
      TORCH_CHECK_VALUE(sc.numel() == 1 && sc.is_floating_point(), fn, ": ", name("scale." + i),
                        " must be a one-element floating tensor, but got shape ",
                        detail::shape_str(sc), " and dtype ", sc.scalar_type());
      kexp[l] = detail::parse_scale(fn, name("scale." + i), sc.item<double>());
    }
    if (!p_.empty()) {
      TORCH_CHECK_VALUE(p[l] == p_[l], fn, ": state must have ", p_[l], " features in layer ",
                        options_.layers[l], " as this accumulator, but got ", p[l]);
    }
  }
  std::vector<at::Tensor> cross;
  for (const auto& pr : pairs_) {
    const std::string key = "cross." + std::to_string(pr.first) + "." + std::to_string(pr.second);
    cross.push_back(get(key).clone());
    check(key, cross.back(), {p[pr.first], p[pr.second]}, options_.dtype);
  }
  const size_t expected_keys = 1 + 4 * n_layers + n_scales + pairs_.size();
  TORCH_CHECK_VALUE(state.size() == expected_keys, fn, ": state must hold exactly ", expected_keys,
                    " tensors for ", n_layers, " layers and ", pairs_.size(), " pairs, but got ",
                    state.size(), where.empty() ? "" : " in \"" + where + "\"");
  check_consistent(fn, name, n_d, mean, comoment, mn, mx, kexp, pairs_, cross, options_.dtype);
  n_ = static_cast<int64_t>(n_d);
  p_ = p;
  input_dtypes_ = in_dtypes;
  mean_ = mean;
  comoment_ = comoment;
  min_ = mn;
  max_ = mx;
  cross_ = cross;
  scale_exp_ = kexp;
}

void CovarianceAccumulator::save(const std::string& path) const {
  auto payload = detail::make_payload(kKind);
  payload.insert(std::string("layers"), c10::List<std::string>(options_.layers));
  std::vector<int64_t> flat_pairs;
  for (const auto& pr : pairs_) {
    flat_pairs.push_back(pr.first);
    flat_pairs.push_back(pr.second);
  }
  payload.insert(std::string("pairs"), c10::List<int64_t>(flat_pairs));
  payload.insert(std::string("dtype"), std::string(c10::toString(options_.dtype)));
  detail::put_state(payload, state());
  detail::save_stream_file("CovarianceAccumulator::save", path, payload);
}

CovarianceAccumulator CovarianceAccumulator::load(const std::string& path, at::Device device) {
  constexpr const char* fn = "CovarianceAccumulator::load";
  auto payload = detail::load_stream_file(fn, path, kKind);
  auto corrupt = [&](const char* what) { detail::throw_corrupt(fn, path, what); };
  CovarianceAccumulatorOptions options;
  auto layers = detail::payload_get(fn, path, payload, "layers");
  if (!layers.isList()) corrupt("layer list");
  options.layers.clear();
  for (const auto& v : layers.toListRef()) {
    if (!v.isString()) corrupt("layer list");
    options.layers.push_back(v.toStringRef());
  }
  auto pairs = detail::payload_get(fn, path, payload, "pairs");
  if (!pairs.isIntList() || pairs.toIntList().size() % 2 != 0) corrupt("pair list");
  auto flat = pairs.toIntVector();
  for (size_t i = 0; i < flat.size(); i += 2) {
    if (flat[i] < 0 || flat[i + 1] < 0 || flat[i] >= static_cast<int64_t>(options.layers.size()) ||
        flat[i + 1] >= static_cast<int64_t>(options.layers.size())) {
      corrupt("pair list");
    }
    options.pairs.push_back({options.layers[flat[i]], options.layers[flat[i + 1]]});
  }
  auto dtype = detail::payload_get(fn, path, payload, "dtype");
  if (!dtype.isString()) corrupt("dtype");
  options.dtype = parse_dtype(fn, path, dtype.toStringRef());
  auto tensors = detail::get_state(fn, path, payload, device);
  CovarianceAccumulator acc(options);
  {
    std::lock_guard<std::mutex> lock(acc.mutex_);
    acc.set_state_impl(fn, tensors, path);
  }
  return acc;
}

}  // namespace svcca
