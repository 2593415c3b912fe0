// Conv-layer recipes: fold, global average pooling, spatial resizing.
#include "svcca/conv/recipes.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "svcca/checks.h"

namespace svcca {
namespace detail {

void check_conv_acts(const char* fn, const char* name, const at::Tensor& acts) {
  TORCH_CHECK_VALUE(acts.defined(), fn, ": ", name,
                    " must be a defined tensor, but got an undefined one");
  TORCH_CHECK_TYPE(!acts.is_complex(), fn, ": ", name,
                   " must be a real floating tensor (float32 or float64), but got dtype ",
                   acts.scalar_type(),
                   " (conv activations are real; the Fourier recipe takes the FFT itself)");
  TORCH_CHECK_TYPE(acts.scalar_type() == at::kFloat || acts.scalar_type() == at::kDouble, fn, ": ",
                   name, " must be a floating tensor (float32 or float64), but got dtype ",
                   acts.scalar_type());
  TORCH_CHECK_VALUE(acts.dim() == 4, fn, ": ", name,
                    " must be a 4-D tensor of conv activations (NCHW or NHWC), but got a ",
                    acts.dim(), "-D tensor with shape ", shape_str(acts));
  TORCH_CHECK_VALUE(acts.numel() > 0, fn, ": ", name, " must be non-empty, but got shape ",
                    shape_str(acts));
  auto range = at::aminmax(acts);
  const bool finite =
      at::isfinite(at::stack({std::get<0>(range), std::get<1>(range)})).all().item<bool>();
  if (!finite) {
    TORCH_CHECK_VALUE(false, fn, ": ", name, " must contain only finite values, but got ",
                      at::isnan(acts).sum().item<int64_t>(), " NaN and ",
                      at::isinf(acts).sum().item<int64_t>(), " Inf entries (shape ",
                      shape_str(acts), ")");
  }
}

void check_conv_pair(const char* fn, const char* xname, const at::Tensor& x, const char* yname,
                     const at::Tensor& y) {
  check_conv_acts(fn, xname, x);
  check_conv_acts(fn, yname, y);
  TORCH_CHECK_VALUE(x.device() == y.device(), fn, ": ", xname, " and ", yname,
                    " must be on the same device, but got ", xname, " on ", x.device(), " and ",
                    yname, " on ", y.device());
  TORCH_CHECK_VALUE(x.size(0) == y.size(0), fn, ": ", xname, " and ", yname,
                    " must have the same batch size (dim 0), but got ", xname, " with shape ",
                    shape_str(x), " and ", yname, " with shape ", shape_str(y));
}

at::Tensor to_nchw(const at::Tensor& acts, ConvLayout layout) {
  return layout == ConvLayout::kNCHW ? acts : acts.permute({0, 3, 1, 2});
}

at::Tensor reference_interpolation_matrix(int64_t out, int64_t in) {
  at::Tensor a = at::zeros({out, in}, at::kDouble);
  auto acc = a.accessor<double, 2>();
  for (int64_t i = 0; i < out; ++i) {
    // scipy's interp2d on the grid 0..in-1, evaluated at linspace(0, in, out, endpoint=False).
    const double p =
        std::min(static_cast<double>(i) * static_cast<double>(in) / static_cast<double>(out),
                 static_cast<double>(in - 1));
    const int64_t i0 = static_cast<int64_t>(std::floor(p));
    const int64_t i1 = std::min(i0 + 1, in - 1);
    const double t = p - static_cast<double>(i0);
    acc[i][i0] += 1.0 - t;
    acc[i][i1] += t;
  }
  return a;
}

namespace {
template <typename E, size_t N>
E parse(const char* fn, const std::string& name, const std::string& value,
        const std::pair<const char*, E> (&table)[N]) {
  std::string allowed;
  for (const auto& entry : table) {
    if (value == entry.first) return entry.second;
    allowed += (allowed.empty() ? "\"" : ", \"") + std::string(entry.first) + "\"";
  }
  TORCH_CHECK_VALUE(false, fn, ": ", name, " must be one of ", allowed, ", but got \"", value,
                    "\"");
}
}  // namespace

ConvLayout parse_conv_layout(const char* fn, const std::string& name, const std::string& value) {
  static const std::pair<const char*, ConvLayout> table[] = {{"NCHW", ConvLayout::kNCHW},
                                                             {"NHWC", ConvLayout::kNHWC}};
  return parse(fn, name, value, table);
}

ResizeMode parse_resize_mode(const char* fn, const std::string& name, const std::string& value) {
  static const std::pair<const char*, ResizeMode> table[] = {
      {"reference", ResizeMode::kReference},
      {"nearest", ResizeMode::kNearest},
      {"bilinear", ResizeMode::kBilinear},
      {"bilinear_align_corners", ResizeMode::kBilinearAlignCorners},
      {"bicubic", ResizeMode::kBicubic},
      {"area", ResizeMode::kArea}};
  return parse(fn, name, value, table);
}

ConvReduction parse_conv_reduction(const char* fn, const std::string& name,
                                   const std::string& value) {
  static const std::pair<const char*, ConvReduction> table[] = {
      {"fold", ConvReduction::kFold}, {"global_avg_pool", ConvReduction::kGlobalAvgPool}};
  return parse(fn, name, value, table);
}

SpatialMatch parse_spatial_match(const char* fn, const std::string& name,
                                 const std::string& value) {
  static const std::pair<const char*, SpatialMatch> table[] = {
      {"interpolate", SpatialMatch::kInterpolateUp}, {"pool", SpatialMatch::kPoolDown}};
  return parse(fn, name, value, table);
}

}  // namespace detail

namespace {

at::Tensor from_nchw(const at::Tensor& nchw, ConvLayout layout) {
  return layout == ConvLayout::kNCHW ? nchw : nchw.permute({0, 2, 3, 1});
}

// resize_spatial without the checks, on NCHW.
at::Tensor resize_nchw(const at::Tensor& x, int64_t height, int64_t width, ResizeMode mode) {
  if (x.size(2) == height && x.size(3) == width) return x;
  const std::vector<int64_t> size = {height, width};
  switch (mode) {
    case ResizeMode::kReference: {
      auto opts = at::TensorOptions().dtype(x.scalar_type()).device(x.device());
      at::Tensor ah = detail::reference_interpolation_matrix(height, x.size(2)).to(opts);
      at::Tensor aw = detail::reference_interpolation_matrix(width, x.size(3)).to(opts);
      // Separable: rows with ah, then columns with aw.
      return at::matmul(at::matmul(ah, x), aw.t());
    }
    case ResizeMode::kNearest:
      return at::upsample_nearest2d(x, size, c10::nullopt, c10::nullopt);
    case ResizeMode::kBilinear:
      return at::upsample_bilinear2d(x, size, false, c10::nullopt, c10::nullopt);
    case ResizeMode::kBilinearAlignCorners:
      return at::upsample_bilinear2d(x, size, true, c10::nullopt, c10::nullopt);
    case ResizeMode::kBicubic:
      return at::upsample_bicubic2d(x, size, false, c10::nullopt, c10::nullopt);
    case ResizeMode::kArea:
      return at::adaptive_avg_pool2d(x, size);
  }
  TORCH_INTERNAL_ASSERT(false, "unknown ResizeMode");
}

at::Tensor fold_nchw(const at::Tensor& x, int64_t position_stride) {
  at::Tensor f = x.permute({0, 2, 3, 1}).reshape({-1, x.size(1)});
  return position_stride == 1 ? f : f.slice(0, 0, f.size(0), position_stride);
}

void check_stride(const char* fn, int64_t position_stride) {
  TORCH_CHECK_VALUE(position_stride >= 1, fn, ": position_stride must be >= 1, but got ",
                    position_stride);
}

}  // namespace

at::Tensor fold_positions(const at::Tensor& acts, ConvLayout layout, int64_t position_stride) {
  constexpr const char* fn = "fold_positions";
  detail::check_conv_acts(fn, "acts", acts);
  check_stride(fn, position_stride);
  return fold_nchw(detail::to_nchw(acts, layout), position_stride);
}

at::Tensor global_avg_pool(const at::Tensor& acts, ConvLayout layout) {
  detail::check_conv_acts("global_avg_pool", "acts", acts);
  return detail::to_nchw(acts, layout).mean({2, 3});
}

at::Tensor resize_spatial(const at::Tensor& acts, int64_t height, int64_t width, ResizeMode mode,
                          ConvLayout layout) {
  constexpr const char* fn = "resize_spatial";
  detail::check_conv_acts(fn, "acts", acts);
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, fn, ": size must be positive, but got [", height,
                    ", ", width, "]");
  at::Tensor x = detail::to_nchw(acts, layout);
  // torch's kernels want a contiguous NCHW input; the reference rule does not care.
  if (mode != ResizeMode::kReference) x = x.contiguous();
  return from_nchw(resize_nchw(x, height, width, mode), layout);
}

std::pair<at::Tensor, at::Tensor> conv_features(const at::Tensor& x, const at::Tensor& y,
                                                const ConvRecipe& recipe) {
  constexpr const char* fn = "conv_features";
  detail::check_conv_pair(fn, "x", x, "y", y);
  check_stride(fn, recipe.position_stride);
  at::Tensor a = detail::to_nchw(x, recipe.layout);
  at::Tensor b = detail::to_nchw(y, recipe.layout);
  if (recipe.reduction == ConvReduction::kGlobalAvgPool) {
    return {a.mean({2, 3}), b.mean({2, 3})};
  }
  const bool up = recipe.match == SpatialMatch::kInterpolateUp;
  const int64_t h = up ? std::max(a.size(2), b.size(2)) : std::min(a.size(2), b.size(2));
  const int64_t w = up ? std::max(a.size(3), b.size(3)) : std::min(a.size(3), b.size(3));
  const ResizeMode mode = up ? recipe.upsample : ResizeMode::kArea;
  auto match = [&](const at::Tensor& t) {
    if (t.size(2) == h && t.size(3) == w) return t;
    return resize_nchw(mode == ResizeMode::kReference ? t : t.contiguous(), h, w, mode);
  };
  return {fold_nchw(match(a), recipe.position_stride), fold_nchw(match(b), recipe.position_stride)};
}

at::Tensor conv_similarity(const at::Tensor& x, const at::Tensor& y, const PairMeasure& measure,
                           const ConvRecipe& recipe) {
  TORCH_CHECK_VALUE(static_cast<bool>(measure),
                    "conv_similarity: measure must be a callable, but got an empty function");
  auto f = conv_features(x, y, recipe);
  return measure(f.first, f.second);
}

}  // namespace svcca
