// Bootstrap intervals (percentile, BCa) of a measure and of a paired difference of two.
#include "svcca/inference/bootstrap.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "svcca/checks.h"
#include "svcca/inference/resampling.h"

namespace svcca {
namespace detail {
namespace {

double normal_cdf(double z) {
  return 0.5 * std::erfc(-z / std::sqrt(2.0));
}

// numpy's default quantile (linear interpolation between order statistics) of sorted values.
double quantile(const std::vector<double>& sorted, double q) {
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

}  // namespace

double normal_quantile(double p) {
  if (p <= 0.0) return -std::numeric_limits<double>::infinity();
  if (p >= 1.0) return std::numeric_limits<double>::infinity();
  // Acklam's coefficients.
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  const double lo = 0.02425;
  double x;
  if (p < lo) {
    const double q = std::sqrt(-2.0 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
  } else if (p <= 1.0 - lo) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0);
  } else {
    const double q = std::sqrt(-2.0 * std::log(1.0 - p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
  }
  // One Halley step against erfc brings it to full double precision.
  const double e = normal_cdf(x) - p;
  const double u = e * std::sqrt(2.0 * M_PI) * std::exp(x * x / 2.0);
  return x - u / (1.0 + x * u / 2.0);
}

void check_bootstrap_options(const char* fn, int64_t resamples, double level) {
  TORCH_CHECK_VALUE(resamples >= 2, fn,
                    ": resamples must be >= 2 (an interval needs two values), but got ", resamples);
  TORCH_CHECK_VALUE(std::isfinite(level) && level > 0.0 && level < 1.0, fn,
                    ": level must lie in (0, 1), but got ", level);
}

void check_workers(const char* fn, int64_t workers) {
  TORCH_CHECK_VALUE(workers >= 0, fn,
                    ": workers must be >= 0 (0: as many as the BLAS's threads), "
                    "but got ",
                    workers);
}

bool interval_of(double estimate, const at::Tensor& values, const at::Tensor& jackknife,
                 double level, IntervalMethod method, Interval* out, std::string* why) {
  const at::Tensor v = values.to(at::kDouble).contiguous();
  const double* p = v.data_ptr<double>();
  std::vector<double> sorted;
  for (int64_t i = 0; i < v.numel(); ++i) {
    if (std::isfinite(p[i])) sorted.push_back(p[i]);
  }
  out->invalid = v.numel() - static_cast<int64_t>(sorted.size());
  if (sorted.size() < 2 || !std::isfinite(estimate)) {
    std::ostringstream s;
    s << "only " << sorted.size() << " of " << v.numel()
      << " resamples have a defined value (the measure is undefined on the others, e.g. a "
         "layer constant on the examples drawn, fewer distinct examples than it needs, or, for "
         "cca / svcca / pwcca, layers keeping rx + ry directions above the distinct examples "
         "drawn - 1 (about 0.63 n), which would force correlations to 1: use more examples, "
         "fewer directions, or allow_forced_correlations)";
    *why = s.str();
    return false;
  }
  std::sort(sorted.begin(), sorted.end());
  const double count = static_cast<double>(sorted.size());
  double mean = 0.0;
  for (double x : sorted) mean += x;
  mean /= count;
  double ss = 0.0;
  for (double x : sorted) ss += (x - mean) * (x - mean);
  out->standard_error = std::sqrt(ss / (count - 1.0));
  const double alpha = (1.0 - level) / 2.0;
  double q_lo = alpha, q_hi = 1.0 - alpha;
  if (method == IntervalMethod::kBca) {
    double below = 0.0;
    for (double x : sorted) below += x < estimate ? 1.0 : (x == estimate ? 0.5 : 0.0);
    // A share of 0 or 1 (every resample on one side) is kept off the infinite z0.
    const double share = std::clamp(below / count, 0.5 / count, 1.0 - 0.5 / count);
    const double z0 = normal_quantile(share);
    const at::Tensor j = jackknife.to(at::kDouble).contiguous();
    const double* jp = j.data_ptr<double>();
    double jm = 0.0;
    int64_t jn = 0;
    for (int64_t i = 0; i < j.numel(); ++i) {
      if (std::isfinite(jp[i])) jm += jp[i], ++jn;
    }
    double num = 0.0, den = 0.0;
    if (jn > 0) {
      jm /= static_cast<double>(jn);
      for (int64_t i = 0; i < j.numel(); ++i) {
        if (!std::isfinite(jp[i])) continue;
        const double d = jm - jp[i];
        num += d * d * d;
        den += d * d;
      }
    }
    const double a = den > 0.0 ? num / (6.0 * std::pow(den, 1.5)) : 0.0;
    auto adjusted = [&](double q) {
      const double z = z0 + normal_quantile(q);
      return normal_cdf(z0 + z / (1.0 - a * z));
    };
    q_lo = adjusted(alpha);
    q_hi = adjusted(1.0 - alpha);
  }
  out->low = quantile(sorted, q_lo);
  out->high = quantile(sorted, q_hi);
  return true;
}

namespace {

constexpr const char* kBootstrapFn = "bootstrap";

// The cells' estimates, resamples and (BCa) jackknife values on `layers`.
struct CellSamples {
  at::Tensor estimate;   // [cells]
  at::Tensor resamples;  // [cells, B]
  at::Tensor jackknife;  // [cells, n] or undefined
};

CellSamples sample_cells(const Resampler& r, const std::vector<const ResampleLayer*>& layers,
                         const std::vector<std::pair<int64_t, int64_t>>& cells, int64_t n,
                         at::Device device, const BootstrapOptions& o) {
  CellSamples s;
  s.estimate =
      resampled_cells(r, layers, cells, at::ones({n, 1}, at::kDouble), device).select(1, 0);
  const int64_t workers =
      resample_workers(r, layers, device, o.measure_options.memory_bytes, o.workers);
  Draws draws(o.seed);
  s.resamples =
      resampled_cells(r, layers, cells, draws.bootstrap_weights(n, o.resamples), device, workers);
  if (o.method == IntervalMethod::kBca) {
    std::vector<at::Tensor> parts;
    // Jackknife weights in slices of at least 64 columns (n x 64 float64 each), so that the
    // workers have batches to share.
    const int64_t step = std::max<int64_t>(r.batch(), 64);
    for (int64_t start = 0; start < n; start += step) {
      const int64_t count = std::min(step, n - start);
      parts.push_back(
          resampled_cells(r, layers, cells, jackknife_weights(n, start, count), device, workers));
    }
    s.jackknife = at::cat(parts, 1);
  }
  return s;
}

BootstrapResult summarize(const char* fn, double estimate, const at::Tensor& resamples,
                          const at::Tensor& jackknife, const BootstrapOptions& o) {
  BootstrapResult r;
  r.estimate = estimate;
  r.resamples = resamples.contiguous();
  r.level = o.level;
  r.method = o.method;
  Interval iv;
  std::string why;
  TORCH_CHECK_VALUE(std::isfinite(estimate), fn,
                    ": the measure must be defined on all examples, but it is ", estimate);
  TORCH_CHECK_VALUE(interval_of(estimate, resamples, jackknife, o.level, o.method, &iv, &why), fn,
                    ": resamples must give at least 2 defined values for an interval, but ", why);
  r.low = iv.low;
  r.high = iv.high;
  r.standard_error = iv.standard_error;
  r.invalid = iv.invalid;
  return r;
}

}  // namespace
}  // namespace detail

IntervalMethod parse_interval_method(const char* fn, const std::string& name,
                                     const std::string& value) {
  if (value == "percentile") return IntervalMethod::kPercentile;
  if (value == "bca") return IntervalMethod::kBca;
  TORCH_CHECK_VALUE(false, fn, ": ", name, " must be one of \"percentile\", \"bca\", but got \"",
                    value, "\"");
}

std::string to_string(IntervalMethod method) {
  return method == IntervalMethod::kBca ? "bca" : "percentile";
}

BootstrapResult bootstrap(const at::Tensor& x, const at::Tensor& y, const std::string& measure,
                          const BootstrapOptions& options) {
  constexpr const char* fn = detail::kBootstrapFn;
  detail::check_pair(fn, x, y);
  detail::check_bootstrap_options(fn, options.resamples, options.level);
  detail::check_workers(fn, options.workers);
  auto r = detail::make_resampler(fn, measure, options.measure_options, false);
  auto lx = r->layer(fn, "x", x);
  auto ly = r->layer(fn, "y", y);
  auto s = detail::sample_cells(*r, {lx.get(), ly.get()}, {{0, 1}}, x.size(0), x.device(), options);
  return detail::summarize(fn, s.estimate[0].item<double>(), s.resamples[0],
                           s.jackknife.defined() ? s.jackknife[0] : at::Tensor(), options);
}

BootstrapResult bootstrap_difference(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                                     const std::string& measure, const BootstrapOptions& options) {
  constexpr const char* fn = "bootstrap_difference";
  detail::check_pair(fn, a, c);
  detail::check_pair(fn, b, c);
  detail::check_bootstrap_options(fn, options.resamples, options.level);
  detail::check_workers(fn, options.workers);
  auto r = detail::make_resampler(fn, measure, options.measure_options, false);
  auto la = r->layer(fn, "a", a);
  auto lb = r->layer(fn, "b", b);
  auto lc = r->layer(fn, "c", c);
  auto s = detail::sample_cells(*r, {la.get(), lb.get(), lc.get()}, {{0, 2}, {1, 2}}, a.size(0),
                                a.device(), options);
  auto diff = [](const at::Tensor& t) { return t[0] - t[1]; };
  return detail::summarize(fn, diff(s.estimate).item<double>(), diff(s.resamples),
                           s.jackknife.defined() ? diff(s.jackknife) : at::Tensor(), options);
}

}  // namespace svcca
