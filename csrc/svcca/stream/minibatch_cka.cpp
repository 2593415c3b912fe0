// Minibatch CKA accumulator: sums of per-batch unbiased HSIC_1.
#include "svcca/stream/minibatch_cka.h"

#include <ATen/ATen.h>

#include <cmath>

#include "svcca/checks.h"
#include "svcca/linalg.h"
#include "svcca/measures/cka.h"
#include "svcca/stream/scaling.h"
#include "svcca/stream/state_file.h"

namespace svcca {
namespace {

constexpr const char* kKind = "minibatch_cka";

// Centered x: [b, p] in float64, divided by 2^k with k (returned) such that its values are of
// order one (0 for ordinary data; see Scale in the header): first by the raw magnitude so that
// centering cannot overflow, then by the centered spread (a batch constant at 1e200 has none:
// `spread` is false). Exact: powers of two.
at::Tensor scaled_center(const at::Tensor& x, int* k, bool* spread) {
  const int k1 = detail::scale_exponent(x.abs().max().item<double>(), 64);
  at::Tensor xc = detail::center(detail::mul_pow2(x, -k1), at::kDouble).data;
  const double mc = xc.abs().max().item<double>();
  const int k2 = detail::scale_exponent(mc, 64);
  *k = k1 + k2;
  *spread = mc > 0.0;
  return detail::mul_pow2(xc, -k2);
}

// Kernel matrix [b, b] of centered xc (divided by 2^k) in float64. The RBF kernel does not
// depend on the scale: an absolute sigma is divided by 2^k too.
at::Tensor kernel(const char* fn, const char* name, const at::Tensor& xc, int k,
                  const MinibatchCkaOptions& o) {
  if (o.kernel == CkaKernel::kLinear) return detail::gram(xc);
  std::optional<double> sigma = o.sigma;
  if (sigma && k != 0) {
    const double scaled = std::ldexp(*sigma, -k);
    TORCH_CHECK_VALUE(std::isfinite(scaled) && scaled >= 2.3e-308, fn, ": sigma must be within ",
                      "the floating range of ", name, "'s scale, but got sigma ", *sigma,
                      " for values of magnitude 2^", k);
    sigma = scaled;
  }
  return detail::rbf_gram(fn, name, xc, o.threshold, sigma);
}

std::string dtype_name(const std::optional<at::ScalarType>& t) {
  return t ? std::string(c10::toString(*t)) : std::string("none");
}

}  // namespace

MinibatchCkaAccumulator::MinibatchCkaAccumulator(MinibatchCkaOptions options) : options_(options) {
  constexpr const char* fn = "MinibatchCkaAccumulator";
  TORCH_CHECK_VALUE(std::isfinite(options_.threshold) && options_.threshold > 0.0, fn,
                    ": threshold must be finite and > 0, but got ", options_.threshold);
  if (options_.sigma) {
    TORCH_CHECK_VALUE(std::isfinite(*options_.sigma) && *options_.sigma > 0.0, fn,
                      ": sigma must be finite and > 0, but got ", *options_.sigma);
  }
}

MinibatchCkaAccumulator::MinibatchCkaAccumulator(const MinibatchCkaAccumulator& other) {
  std::lock_guard<std::mutex> lock(other.mutex_);
  copy_from(other);
}

MinibatchCkaAccumulator& MinibatchCkaAccumulator::operator=(const MinibatchCkaAccumulator& other) {
  if (this == &other) return *this;
  std::scoped_lock lock(mutex_, other.mutex_);
  copy_from(other);
  return *this;
}

// Deep: update() adds into the sums in place.
void MinibatchCkaAccumulator::copy_from(const MinibatchCkaAccumulator& other) {
  options_ = other.options_;
  n_batches_ = other.n_batches_;
  n_ = other.n_;
  p1_ = other.p1_;
  p2_ = other.p2_;
  x_dtype_ = other.x_dtype_;
  y_dtype_ = other.y_dtype_;
  sum_xy_ = other.sum_xy_.defined() ? other.sum_xy_.clone() : at::Tensor();
  sum_xx_ = other.sum_xx_.defined() ? other.sum_xx_.clone() : at::Tensor();
  sum_yy_ = other.sum_yy_.defined() ? other.sum_yy_.clone() : at::Tensor();
  kx_ = other.kx_;
  ky_ = other.ky_;
}

int64_t MinibatchCkaAccumulator::n_batches() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return n_batches_;
}

int64_t MinibatchCkaAccumulator::n() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return n_;
}

void MinibatchCkaAccumulator::check_shapes(const char* fn, const at::Tensor& x,
                                           const at::Tensor& y) const {
  if (p1_ >= 0) {
    TORCH_CHECK_VALUE(x.size(1) == p1_, fn, ": x must have ", p1_,
                      " features (dim 1) as in earlier batches, but got shape ",
                      detail::shape_str(x));
    TORCH_CHECK_VALUE(y.size(1) == p2_, fn, ": y must have ", p2_,
                      " features (dim 1) as in earlier batches, but got shape ",
                      detail::shape_str(y));
  }
  if (x_dtype_) {
    TORCH_CHECK_TYPE(x.scalar_type() == *x_dtype_, fn, ": x must have dtype ", *x_dtype_,
                     " as in earlier batches, but got dtype ", x.scalar_type());
    TORCH_CHECK_TYPE(y.scalar_type() == *y_dtype_, fn, ": y must have dtype ", *y_dtype_,
                     " as in earlier batches, but got dtype ", y.scalar_type());
  }
}

void MinibatchCkaAccumulator::update(const at::Tensor& x, const at::Tensor& y) {
  constexpr const char* fn = "MinibatchCkaAccumulator::update";
  detail::check_pair(fn, x, y);
  const int64_t b = x.size(0);
  TORCH_CHECK_VALUE(b >= 4, fn,
                    ": x and y must have at least 4 rows per batch (the unbiased HSIC_1 divides by "
                    "b (b - 3)), but got ",
                    b);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    check_shapes(fn, x, y);
  }
  // Everything that can throw on user input (including the median rule) runs before the state
  // changes; the batch's HSIC terms are computed outside the lock, in the batch's own units.
  int kbx = 0, kby = 0;
  bool spread_x = false, spread_y = false;
  at::Tensor xc = scaled_center(x, &kbx, &spread_x);
  at::Tensor yc = scaled_center(y, &kby, &spread_y);
  at::Tensor k = detail::center_gram(kernel(fn, "x", xc, kbx, options_), /*unbiased=*/true);
  at::Tensor l = detail::center_gram(kernel(fn, "y", yc, kby, options_), /*unbiased=*/true);
  const double scale = 1.0 / (static_cast<double>(b) * static_cast<double>(b - 3));
  at::Tensor hxy = (k * l).sum() * scale;
  at::Tensor hxx = k.square().sum() * scale;
  at::Tensor hyy = l.square().sum() * scale;

  std::lock_guard<std::mutex> lock(mutex_);
  check_shapes(fn, x, y);  // another thread may have added the first batch meanwhile
  const bool first = !sum_xy_.defined();
  if (first) {
    sum_xy_ = at::zeros({}, hxy.options());
    sum_xx_ = at::zeros({}, hxy.options());
    sum_yy_ = at::zeros({}, hxy.options());
  }
  const at::Device device = sum_xy_.device();
  if (options_.kernel == CkaKernel::kLinear) {
    // The common units: the larger of the stored and the batch's (a side without spread, in the
    // state or the batch, has none).
    const bool has_x = !first && sum_xx_.item<double>() > 0.0;
    const bool has_y = !first && sum_yy_.item<double>() > 0.0;
    const int kx = !spread_x ? (has_x ? kx_ : kbx) : (has_x ? std::max(kx_, kbx) : kbx);
    const int ky = !spread_y ? (has_y ? ky_ : kby) : (has_y ? std::max(ky_, kby) : kby);
    const int dx = kx_ - kx, dy = ky_ - ky;
    if (dx != 0) sum_xx_ = detail::mul_pow2(sum_xx_, 4 * dx);
    if (dy != 0) sum_yy_ = detail::mul_pow2(sum_yy_, 4 * dy);
    if (dx != 0 || dy != 0) sum_xy_ = detail::mul_pow2(sum_xy_, 2 * dx + 2 * dy);
    hxx = detail::mul_pow2(hxx, 4 * (kbx - kx));
    hyy = detail::mul_pow2(hyy, 4 * (kby - ky));
    hxy = detail::mul_pow2(hxy, 2 * (kbx - kx) + 2 * (kby - ky));
    kx_ = kx;
    ky_ = ky;
  }
  sum_xy_ += hxy.to(device);
  sum_xx_ += hxx.to(device);
  sum_yy_ += hyy.to(device);
  p1_ = x.size(1);
  p2_ = y.size(1);
  x_dtype_ = x.scalar_type();
  y_dtype_ = y.scalar_type();
  n_batches_ += 1;
  n_ += b;
}

void MinibatchCkaAccumulator::check_compatible(const char* fn,
                                               const MinibatchCkaAccumulator& other) const {
  const auto& a = options_;
  const auto& b = other.options_;
  TORCH_CHECK_VALUE(a.kernel == b.kernel && a.sigma == b.sigma && a.threshold == b.threshold, fn,
                    ": other must use the same kernel and bandwidth as this accumulator");
  if (p1_ >= 0 && other.p1_ >= 0) {
    TORCH_CHECK_VALUE(other.p1_ == p1_ && other.p2_ == p2_, fn, ": other must have seen ", p1_,
                      " and ", p2_, " features, but got ", other.p1_, " and ", other.p2_);
  }
  if (x_dtype_ && other.x_dtype_) {
    TORCH_CHECK_TYPE(*other.x_dtype_ == *x_dtype_ && *other.y_dtype_ == *y_dtype_, fn,
                     ": other must have seen dtypes ", dtype_name(x_dtype_), " and ",
                     dtype_name(y_dtype_), ", but got ", dtype_name(other.x_dtype_), " and ",
                     dtype_name(other.y_dtype_));
  }
}

void MinibatchCkaAccumulator::merge(const MinibatchCkaAccumulator& other) {
  constexpr const char* fn = "MinibatchCkaAccumulator::merge";
  if (&other == this) {
    const MinibatchCkaAccumulator copy(other);
    std::lock_guard<std::mutex> lock(mutex_);
    merge_locked(fn, copy);
    return;
  }
  std::scoped_lock lock(mutex_, other.mutex_);
  merge_locked(fn, other);
}

void MinibatchCkaAccumulator::merge_locked(const char* fn, const MinibatchCkaAccumulator& other) {
  check_compatible(fn, other);
  if (other.n_batches_ == 0) return;
  if (n_batches_ == 0) {
    sum_xy_ = other.sum_xy_.clone();
    sum_xx_ = other.sum_xx_.clone();
    sum_yy_ = other.sum_yy_.clone();
    kx_ = other.kx_;
    ky_ = other.ky_;
  } else {
    const at::Device device = sum_xy_.device();
    at::Tensor oxy = other.sum_xy_.to(device), oxx = other.sum_xx_.to(device),
               oyy = other.sum_yy_.to(device);
    const bool has_x = sum_xx_.item<double>() > 0.0, other_x = oxx.item<double>() > 0.0;
    const bool has_y = sum_yy_.item<double>() > 0.0, other_y = oyy.item<double>() > 0.0;
    const int kx = !has_x ? other.kx_ : (!other_x ? kx_ : std::max(kx_, other.kx_));
    const int ky = !has_y ? other.ky_ : (!other_y ? ky_ : std::max(ky_, other.ky_));
    const int dx = kx_ - kx, dy = ky_ - ky, ox = other.kx_ - kx, oy = other.ky_ - ky;
    sum_xx_ = detail::mul_pow2(sum_xx_, 4 * dx) + detail::mul_pow2(oxx, 4 * ox);
    sum_yy_ = detail::mul_pow2(sum_yy_, 4 * dy) + detail::mul_pow2(oyy, 4 * oy);
    sum_xy_ = detail::mul_pow2(sum_xy_, 2 * dx + 2 * dy) + detail::mul_pow2(oxy, 2 * ox + 2 * oy);
    kx_ = kx;
    ky_ = ky;
  }
  if (other.p1_ >= 0) {
    p1_ = other.p1_;
    p2_ = other.p2_;
  }
  if (other.x_dtype_) {
    x_dtype_ = other.x_dtype_;
    y_dtype_ = other.y_dtype_;
  }
  n_batches_ += other.n_batches_;
  n_ += other.n_;
}

at::Tensor MinibatchCkaAccumulator::mean_of(const char* fn, const at::Tensor& sum,
                                            int k_scale) const {
  TORCH_CHECK_VALUE(n_batches_ >= 1, fn,
                    ": the accumulator must have seen at least 1 batch (of >= 4 rows), but got 0");
  return detail::mul_pow2(sum / static_cast<double>(n_batches_), k_scale);
}

at::Tensor MinibatchCkaAccumulator::hsic_xy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return mean_of("MinibatchCkaAccumulator::hsic_xy", sum_xy_, 2 * kx_ + 2 * ky_);
}
at::Tensor MinibatchCkaAccumulator::hsic_xx() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return mean_of("MinibatchCkaAccumulator::hsic_xx", sum_xx_, 4 * kx_);
}
at::Tensor MinibatchCkaAccumulator::hsic_yy() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return mean_of("MinibatchCkaAccumulator::hsic_yy", sum_yy_, 4 * ky_);
}

at::Tensor MinibatchCkaAccumulator::cka() const {
  constexpr const char* fn = "MinibatchCkaAccumulator::cka";
  std::lock_guard<std::mutex> lock(mutex_);
  // In the stored units: CKA does not depend on them.
  at::Tensor hxy = mean_of(fn, sum_xy_, 0);
  at::Tensor hxx = mean_of(fn, sum_xx_, 0);
  at::Tensor hyy = mean_of(fn, sum_yy_, 0);
  const double vx = hxx.item<double>();
  const double vy = hyy.item<double>();
  TORCH_CHECK_VALUE(vx > 0.0, fn, ": x must have a positive mean HSIC(K, K) over batches, but got ",
                    vx, " (a layer constant within every batch)");
  TORCH_CHECK_VALUE(vy > 0.0, fn, ": y must have a positive mean HSIC(L, L) over batches, but got ",
                    vy, " (a layer constant within every batch)");
  at::ScalarType out = x_dtype_ ? at::promote_types(*x_dtype_, *y_dtype_) : at::kDouble;
  return (hxy / (hxx.sqrt() * hyy.sqrt())).to(out);
}

std::map<std::string, at::Tensor> MinibatchCkaAccumulator::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::map<std::string, at::Tensor> s;
  if (n_batches_ == 0) return s;
  auto o = sum_xy_.options();
  s["n_batches"] = at::scalar_tensor(static_cast<double>(n_batches_), o);
  s["n"] = at::scalar_tensor(static_cast<double>(n_), o);
  s["hsic_xy"] = sum_xy_.clone();
  s["hsic_xx"] = sum_xx_.clone();
  s["hsic_yy"] = sum_yy_.clone();
  s["scale_x"] = at::scalar_tensor(detail::pow2(kx_), o);
  s["scale_y"] = at::scalar_tensor(detail::pow2(ky_), o);
  return s;
}

void MinibatchCkaAccumulator::set_state(const std::map<std::string, at::Tensor>& state) {
  std::lock_guard<std::mutex> lock(mutex_);
  set_state_impl("MinibatchCkaAccumulator::set_state", state, "");
}

void MinibatchCkaAccumulator::set_state_impl(const char* fn,
                                             const std::map<std::string, at::Tensor>& state,
                                             const std::string& where) {
  if (state.empty()) {
    n_batches_ = n_ = 0;
    sum_xy_ = sum_xx_ = sum_yy_ = at::Tensor();
    kx_ = ky_ = 0;
    return;
  }
  const std::string in = where.empty() ? "" : " of \"" + where + "\"";
  auto name = [&](const std::string& key) { return "state[\"" + key + "\"]" + in; };
  const bool scaled = state.count("scale_x") || state.count("scale_y");
  const size_t expected = scaled ? 7 : 5;
  TORCH_CHECK_VALUE(state.size() == expected, fn,
                    ": state must hold exactly n_batches, n, hsic_xy, hsic_xx and hsic_yy (and "
                    "scale_x and scale_y, or neither), but got ",
                    state.size(), " tensors", where.empty() ? "" : " in \"" + where + "\"");
  std::map<std::string, at::Tensor> v;
  std::vector<const char*> keys{"n_batches", "n", "hsic_xy", "hsic_xx", "hsic_yy"};
  if (scaled) {
    keys.push_back("scale_x");
    keys.push_back("scale_y");
  }
  for (const char* key : keys) {
    auto it = state.find(key);
    TORCH_CHECK_VALUE(it != state.end() && it->second.defined(), fn,
                      ": state must hold the tensor \"", key, "\", but it is missing",
                      where.empty() ? "" : " in \"" + where + "\"");
    const at::Tensor& t = it->second;
    TORCH_CHECK_VALUE(t.numel() == 1, fn, ": ", name(key), " must have one element, but got shape ",
                      detail::shape_str(t));
    TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, fn, ": ", name(key),
                     " must be float64, but got ", t.scalar_type());
    v[key] = t.reshape({}).clone();
    const double x = v[key].item<double>();
    TORCH_CHECK_VALUE(std::isfinite(x), fn, ": ", name(key), " must be finite, but got ", x);
  }
  const double nb = v["n_batches"].item<double>();
  const double n = v["n"].item<double>();
  TORCH_CHECK_VALUE(nb >= 1 && nb == std::floor(nb) && n >= 4 * nb && n == std::floor(n) &&
                        n < 9007199254740992.0,
                    fn, ": ", name("n_batches"), " and ", name("n"),
                    " must be integers with n >= 4 n_batches >= 4, but got ", nb, " and ", n);
  const double xx = v["hsic_xx"].item<double>();
  const double yy = v["hsic_yy"].item<double>();
  const double xy = v["hsic_xy"].item<double>();
  TORCH_CHECK_VALUE(xx >= 0.0, fn, ": ", name("hsic_xx"),
                    " must be >= 0 (a sum of squared norms), but got ", xx);
  TORCH_CHECK_VALUE(yy >= 0.0, fn, ": ", name("hsic_yy"),
                    " must be >= 0 (a sum of squared norms), but got ", yy);
  // Every batch's terms satisfy |<U(K), U(L)>| <= ||U(K)|| ||U(L)||, so their sums do too.
  const double bound = std::sqrt(xx) * std::sqrt(yy);
  TORCH_CHECK_VALUE(std::abs(xy) <= bound * (1 + 1e-6) + nb * 1e-290, fn, ": ", name("hsic_xy"),
                    " must satisfy hsic_xy^2 <= hsic_xx hsic_yy (Cauchy-Schwarz, as the sums of "
                    "any batches do), but got |hsic_xy| = ",
                    std::abs(xy), " against sqrt(hsic_xx hsic_yy) = ", bound);
  int kx = 0, ky = 0;
  if (scaled) {
    kx = detail::parse_scale(fn, name("scale_x"), v["scale_x"].item<double>());
    ky = detail::parse_scale(fn, name("scale_y"), v["scale_y"].item<double>());
  }
  n_batches_ = static_cast<int64_t>(nb);
  n_ = static_cast<int64_t>(n);
  sum_xy_ = v["hsic_xy"];
  sum_xx_ = v["hsic_xx"];
  sum_yy_ = v["hsic_yy"];
  kx_ = kx;
  ky_ = ky;
}

void MinibatchCkaAccumulator::save(const std::string& path) const {
  auto payload = detail::make_payload(kKind);
  payload.insert(std::string("kernel"),
                 std::string(options_.kernel == CkaKernel::kLinear ? "linear" : "rbf"));
  payload.insert(std::string("threshold"), options_.threshold);
  if (options_.sigma) payload.insert(std::string("sigma"), *options_.sigma);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    payload.insert(std::string("n_features"), c10::List<int64_t>({p1_, p2_}));
    payload.insert(std::string("dtypes"),
                   c10::List<std::string>({dtype_name(x_dtype_), dtype_name(y_dtype_)}));
  }
  detail::put_state(payload, state());
  detail::save_stream_file("MinibatchCkaAccumulator::save", path, payload);
}

MinibatchCkaAccumulator MinibatchCkaAccumulator::load(const std::string& path, at::Device device) {
  constexpr const char* fn = "MinibatchCkaAccumulator::load";
  auto payload = detail::load_stream_file(fn, path, kKind);
  auto corrupt = [&](const char* what) { detail::throw_corrupt(fn, path, what); };
  MinibatchCkaOptions o;
  auto kernel_v = detail::payload_get(fn, path, payload, "kernel");
  if (!kernel_v.isString()) corrupt("kernel");
  if (kernel_v.toStringRef() == "linear") {
    o.kernel = CkaKernel::kLinear;
  } else if (kernel_v.toStringRef() == "rbf") {
    o.kernel = CkaKernel::kRbf;
  } else {
    corrupt("kernel");
  }
  auto threshold = detail::payload_get(fn, path, payload, "threshold");
  if (!threshold.isDouble()) corrupt("threshold");
  o.threshold = threshold.toDouble();
  if (payload.contains(std::string("sigma"))) {
    auto sigma = payload.at(std::string("sigma"));
    if (!sigma.isDouble()) corrupt("sigma");
    o.sigma = sigma.toDouble();
  }
  MinibatchCkaAccumulator acc(o);
  auto p = detail::payload_get(fn, path, payload, "n_features");
  if (!p.isIntList() || p.toIntList().size() != 2) corrupt("feature counts");
  acc.p1_ = p.toIntVector()[0];
  acc.p2_ = p.toIntVector()[1];
  auto dtypes = detail::payload_get(fn, path, payload, "dtypes");
  if (!dtypes.isList() || dtypes.toListRef().size() != 2) corrupt("dtypes");
  std::optional<at::ScalarType> parsed[2];
  for (size_t i = 0; i < 2; ++i) {
    const auto& d = dtypes.toListRef()[i];
    if (!d.isString()) corrupt("dtypes");
    if (d.toStringRef() == c10::toString(at::kDouble))
      parsed[i] = at::kDouble;
    else if (d.toStringRef() == c10::toString(at::kFloat))
      parsed[i] = at::kFloat;
    else if (d.toStringRef() != "none")
      corrupt("dtypes");
  }
  acc.x_dtype_ = parsed[0];
  acc.y_dtype_ = parsed[1];
  auto tensors = detail::get_state(fn, path, payload, device);
  acc.set_state_impl(fn, tensors, path);
  return acc;
}

}  // namespace svcca
