// Permutation tests of independence of two layers, p-values with the (b + 1) / (m + 1) rule.
#include "svcca/inference/permutation.h"

#include <ATen/ATen.h>

#include <cmath>

#include "svcca/checks.h"
#include "svcca/inference/bootstrap.h"
#include "svcca/inference/resampling.h"

namespace svcca {
namespace detail {

void check_permutation_options(const char* fn, int64_t permutations) {
  TORCH_CHECK_VALUE(permutations >= 1, fn, ": permutations must be >= 1, but got ", permutations);
}

double permutation_p_value(double estimate, const at::Tensor& null, int64_t* exceed) {
  const at::Tensor v = null.to(at::kDouble).contiguous();
  const double* p = v.data_ptr<double>();
  const double cut = estimate - kPermutationTieRtol * std::max(std::abs(estimate), 1e-300);
  int64_t b = 0;
  for (int64_t i = 0; i < v.numel(); ++i) b += p[i] >= cut ? 1 : 0;
  if (exceed != nullptr) *exceed = b;
  return static_cast<double>(b + 1) / static_cast<double>(v.numel() + 1);
}

}  // namespace detail

PermutationResult permutation_test(const at::Tensor& x, const at::Tensor& y,
                                   const std::string& measure, const PermutationOptions& options) {
  constexpr const char* fn = "permutation_test";
  detail::check_pair(fn, x, y);
  detail::check_permutation_options(fn, options.permutations);
  detail::check_workers(fn, options.workers);
  auto r = detail::make_resampler(fn, measure, options.measure_options);
  auto lx = r->layer(fn, "x", x);
  auto ly = r->layer(fn, "y", y);
  const int64_t n = x.size(0);
  const int64_t workers = detail::resample_workers(
      *r, {lx.get(), ly.get()}, x.device(), options.measure_options.memory_bytes, options.workers);
  PermutationResult out;
  out.estimate = r->permuted(*lx, *ly, at::arange(n, at::kLong).unsqueeze(0))[0].item<double>();
  out.null = detail::permuted_values(
      *r, *lx, *ly, detail::Draws(options.seed).permutations(n, options.permutations), workers);
  TORCH_CHECK_VALUE(std::isfinite(out.estimate) && at::isfinite(out.null).all().item<bool>(), fn,
                    ": the measure must be defined on every permutation, but got a non-finite "
                    "value (estimate ",
                    out.estimate, ")");
  out.null_mean = out.null.mean().item<double>();
  out.p_value = detail::permutation_p_value(out.estimate, out.null, &out.exceed);
  return out;
}

}  // namespace svcca
