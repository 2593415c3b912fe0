// Minibatch CKA accumulator: sums of per-batch unbiased HSIC_1.
#include "svcca/stream/minibatch_cka.h"

#include <ATen/ATen.h>

#include <cmath>

#include "svcca/checks.h"
#include "svcca/linalg.h"
#include "svcca/measures/cka.h"
#include "svcca/stream/state_file.h"

namespace svcca {
namespace {

constexpr const char* kKind = "minibatch_cka";

// Kernel matrix [b, b] of centered xc: [b, p] in float64 (centering changes no HSIC_1 but keeps
// the linear Gram and the distances well conditioned).
at::Tensor kernel(const char* fn, const char* name, const at::Tensor& xc,
                  const MinibatchCkaOptions& o) {
  if (o.kernel == CkaKernel::kLinear) return at::mm(xc, xc.t());
  return detail::rbf_gram(fn, name, xc, o.threshold, o.sigma);
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

void MinibatchCkaAccumulator::update(const at::Tensor& x, const at::Tensor& y) {
  constexpr const char* fn = "MinibatchCkaAccumulator::update";
  detail::check_pair(fn, x, y);
  const int64_t b = x.size(0);
  TORCH_CHECK_VALUE(b >= 4, fn,
                    ": x and y must have at least 4 rows per batch (the unbiased HSIC_1 divides by "
                    "b (b - 3)), but got ",
                    b);
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
  // Everything that can throw on user input (including the median rule) runs before the state
  // changes.
  at::Tensor xc = detail::center(x, at::kDouble).data;
  at::Tensor yc = detail::center(y, at::kDouble).data;
  at::Tensor k = detail::center_gram(kernel(fn, "x", xc, options_), /*unbiased=*/true);
  at::Tensor l = detail::center_gram(kernel(fn, "y", yc, options_), /*unbiased=*/true);
  const double scale = 1.0 / (static_cast<double>(b) * static_cast<double>(b - 3));
  at::Tensor hxy = (k * l).sum() * scale;
  at::Tensor hxx = k.square().sum() * scale;
  at::Tensor hyy = l.square().sum() * scale;

  if (n_batches_ == 0 && !sum_xy_.defined()) {
    sum_xy_ = at::zeros({}, hxy.options());
    sum_xx_ = at::zeros({}, hxy.options());
    sum_yy_ = at::zeros({}, hxy.options());
  }
  const at::Device device = sum_xy_.device();
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
  check_compatible("MinibatchCkaAccumulator::merge", other);
  if (other.n_batches_ == 0) return;
  if (n_batches_ == 0) {
    sum_xy_ = other.sum_xy_.clone();
    sum_xx_ = other.sum_xx_.clone();
    sum_yy_ = other.sum_yy_.clone();
  } else {
    sum_xy_ += other.sum_xy_.to(sum_xy_.device());
    sum_xx_ += other.sum_xx_.to(sum_xy_.device());
    sum_yy_ += other.sum_yy_.to(sum_xy_.device());
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

at::Tensor MinibatchCkaAccumulator::mean_of(const char* fn, const at::Tensor& sum) const {
  TORCH_CHECK_VALUE(n_batches_ >= 1, fn,
                    ": the accumulator must have seen at least 1 batch (of >= 4 rows), but got 0");
  return sum / static_cast<double>(n_batches_);
}

at::Tensor MinibatchCkaAccumulator::hsic_xy() const {
  return mean_of("MinibatchCkaAccumulator::hsic_xy", sum_xy_);
}
at::Tensor MinibatchCkaAccumulator::hsic_xx() const {
  return mean_of("MinibatchCkaAccumulator::hsic_xx", sum_xx_);
}
at::Tensor MinibatchCkaAccumulator::hsic_yy() const {
  return mean_of("MinibatchCkaAccumulator::hsic_yy", sum_yy_);
}

at::Tensor MinibatchCkaAccumulator::cka() const {
  constexpr const char* fn = "MinibatchCkaAccumulator::cka";
  at::Tensor hxy = mean_of(fn, sum_xy_);
  at::Tensor hxx = mean_of(fn, sum_xx_);
  at::Tensor hyy = mean_of(fn, sum_yy_);
  const double vx = hxx.item<double>();
  const double vy = hyy.item<double>();
  TORCH_CHECK_VALUE(vx > 0.0, fn, ": x must have a positive mean HSIC(K, K) over batches, but got ",
                    vx, " (a layer constant within every batch)");
  TORCH_CHECK_VALUE(vy > 0.0, fn, ": y must have a positive mean HSIC(L, L) over batches, but got ",
                    vy, " (a layer constant within every batch)");
  at::ScalarType out = x_dtype_ ? at::promote_types(*x_dtype_, *y_dtype_) : at::kDouble;
  return (hxy / (hxx * hyy).sqrt()).to(out);
}

std::map<std::string, at::Tensor> MinibatchCkaAccumulator::state() const {
  std::map<std::string, at::Tensor> s;
  if (n_batches_ == 0) return s;
  auto o = sum_xy_.options();
  s["n_batches"] = at::scalar_tensor(static_cast<double>(n_batches_), o);
  s["n"] = at::scalar_tensor(static_cast<double>(n_), o);
  s["hsic_xy"] = sum_xy_.clone();
  s["hsic_xx"] = sum_xx_.clone();
  s["hsic_yy"] = sum_yy_.clone();
  return s;
}

void MinibatchCkaAccumulator::set_state(const std::map<std::string, at::Tensor>& state) {
  set_state_impl("MinibatchCkaAccumulator::set_state", state);
}

void MinibatchCkaAccumulator::set_state_impl(const char* fn,
                                             const std::map<std::string, at::Tensor>& state) {
  if (state.empty()) {
    n_batches_ = n_ = 0;
    sum_xy_ = sum_xx_ = sum_yy_ = at::Tensor();
    return;
  }
  TORCH_CHECK_VALUE(
      state.size() == 5, fn,
      ": state must hold exactly n_batches, n, hsic_xy, hsic_xx and hsic_yy, but got ",
      state.size(), " tensors");
  std::map<std::string, at::Tensor> v;
  for (const char* key : {"n_batches", "n", "hsic_xy", "hsic_xx", "hsic_yy"}) {
    auto it = state.find(key);
    TORCH_CHECK_VALUE(it != state.end() && it->second.defined(), fn,
                      ": state must hold the tensor \"", key, "\", but it is missing");
    const at::Tensor& t = it->second;
    TORCH_CHECK_VALUE(t.numel() == 1, fn, ": state[\"", key,
                      "\"] must have one element, but got shape ", detail::shape_str(t));
    TORCH_CHECK_TYPE(t.scalar_type() == at::kDouble, fn, ": state[\"", key,
                     "\"] must be float64, but got ", t.scalar_type());
    v[key] = t.reshape({}).clone();
  }
  const double nb = v["n_batches"].item<double>();
  const double n = v["n"].item<double>();
  TORCH_CHECK_VALUE(
      nb >= 1 && nb == std::floor(nb) && n >= 4 * nb && n == std::floor(n), fn,
      ": state[\"n_batches\"] and state[\"n\"] must be integers with n >= 4 n_batches "
      ">= 4, but got ",
      nb, " and ", n);
  n_batches_ = static_cast<int64_t>(nb);
  n_ = static_cast<int64_t>(n);
  sum_xy_ = v["hsic_xy"];
  sum_xx_ = v["hsic_xx"];
  sum_yy_ = v["hsic_yy"];
}

void MinibatchCkaAccumulator::save(const std::string& path) const {
  auto payload = detail::make_payload(kKind);
  payload.insert(std::string("kernel"),
                 std::string(options_.kernel == CkaKernel::kLinear ? "linear" : "rbf"));
  payload.insert(std::string("threshold"), options_.threshold);
  if (options_.sigma) payload.insert(std::string("sigma"), *options_.sigma);
  payload.insert(std::string("n_features"), c10::List<int64_t>({p1_, p2_}));
  payload.insert(std::string("dtypes"),
                 c10::List<std::string>({dtype_name(x_dtype_), dtype_name(y_dtype_)}));
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
  acc.set_state_impl(fn, tensors);
  return acc;
}

}  // namespace svcca
