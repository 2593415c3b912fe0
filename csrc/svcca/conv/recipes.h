// Conv-layer recipes: turn [N, C, H, W] activations into [examples, features] matrices that any
// measure accepts (fold positions into examples, global average pooling, spatial resizing).
//
// Layout: PyTorch's NCHW by default; NHWC (google/svcca's tutorials) with ConvLayout::kNHWC.
// dtype/device policy: real float32/float64 on any device (complex inputs are rejected: conv
// activations are real, and the Fourier recipe lives in conv/fourier.h); results keep the input
// dtype and device. The recipes are compositions of ATen ops, so autograd flows through them.
//
//   auto mean_cca = [](const at::Tensor& x, const at::Tensor& y) {
//     return svcca::cca(x, y).correlations.mean(); };
//   at::Tensor s = svcca::conv_similarity(conv1, conv2, mean_cca);  // default recipe: fold
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

namespace svcca {

// Memory layout of 4-D conv activations.
enum class ConvLayout {
  kNCHW,  // PyTorch (default)
  kNHWC,  // TensorFlow / google/svcca's tutorials and dft_ccas
};

// How spatial maps are resized to a target size.
enum class ResizeMode {
  // google/svcca tutorial 002 (scipy interp2d, linear): bilinear at source position i * h / H,
  // clamped to [0, h - 1] (edge replicate), applied per axis. Neither of torch's align_corners
  // modes. The tutorial only used square maps; for non-square maps each axis follows the rule.
  kReference,
  kNearest,               // torch: interpolate(mode="nearest")
  kBilinear,              // torch: interpolate(mode="bilinear", align_corners=False)
  kBilinearAlignCorners,  // torch: interpolate(mode="bilinear", align_corners=True)
  kBicubic,               // torch: interpolate(mode="bicubic", align_corners=False)
  kArea,                  // torch: adaptive_avg_pool2d (average pooling; meant for shrinking)
};

// How a conv layer becomes an [examples, features] matrix.
enum class ConvReduction {
  // Every spatial position is an example: [N*H*W, C] (tutorial 002's main recipe; default).
  kFold,
  // Global average pooling over space: [N, C]. Works for any pair of spatial sizes.
  kGlobalAvgPool,
};

// How two layers of different spatial size are brought to a common size before kFold.
enum class SpatialMatch {
  kInterpolateUp,  // resize the smaller map up to the larger one with `upsample` (default)
  kPoolDown,       // adaptive-average-pool the larger map down to the smaller one
};

struct ConvRecipe {
  ConvLayout layout = ConvLayout::kNCHW;              // layout of both inputs
  ConvReduction reduction = ConvReduction::kFold;     // fold positions into examples (default)
  SpatialMatch match = SpatialMatch::kInterpolateUp;  // for kFold with unequal spatial sizes
  ResizeMode upsample = ResizeMode::kReference;       // mode of kInterpolateUp
  // kFold: keep every stride-th row of the folded [N*H*W, C] matrix (tutorial 002's
  // f.T[:, ::2]); >= 1. 1 keeps every position.
  int64_t position_stride = 1;
};

// A measure of two [n, p1], [n, p2] matrices returning a tensor (usually 0-d), e.g. a lambda
// around svcca::cca, svcca::svcca, svcca::pwcca or the CKA family.
using PairMeasure = std::function<at::Tensor(const at::Tensor& x, const at::Tensor& y)>;

// [N*H*W, C] (rows ordered n, h, w as NHWC's reshape), keeping every position_stride-th row.
// acts: 4-D real. Throws when acts is not 4-D, complex/integer, or position_stride < 1.
at::Tensor fold_positions(const at::Tensor& acts, ConvLayout layout = ConvLayout::kNCHW,
                          int64_t position_stride = 1);

// [N, C]: mean over the spatial axes. Throws when acts is not 4-D real.
at::Tensor global_avg_pool(const at::Tensor& acts, ConvLayout layout = ConvLayout::kNCHW);

// acts resized to [height, width] spatially (same layout out as in). Throws when acts is not 4-D
// real or the size is not positive.
at::Tensor resize_spatial(const at::Tensor& acts, int64_t height, int64_t width,
                          ResizeMode mode = ResizeMode::kReference,
                          ConvLayout layout = ConvLayout::kNCHW);

// The pair of [n, C1], [n, C2] matrices the recipe feeds to a measure. x: [N, C1, H1, W1] and
// y: [N, C2, H2, W2] (or NHWC) on one device with the same N. For kFold, unequal spatial sizes
// are matched first: kInterpolateUp resizes each axis of the smaller map to the larger size
// (per axis, so a 4x8 and an 8x4 map both become 8x8), kPoolDown pools each axis down.
// Throws on bad rank, dtype, device, batch sizes or options.
std::pair<at::Tensor, at::Tensor> conv_features(const at::Tensor& x, const at::Tensor& y,
                                                const ConvRecipe& recipe = {});

// measure(conv_features(x, y, recipe)). Default recipe: fold positions into examples, smaller
// map interpolated up with the reference rule.
at::Tensor conv_similarity(const at::Tensor& x, const at::Tensor& y, const PairMeasure& measure,
                           const ConvRecipe& recipe = {});

namespace detail {
// acts is a defined 4-D real float32/float64 tensor with finite values, named `name` in errors.
void check_conv_acts(const char* fn, const char* name, const at::Tensor& acts);
// Both are valid conv activations on one device with the same batch size (dim 0).
void check_conv_pair(const char* fn, const char* xname, const at::Tensor& x, const char* yname,
                     const at::Tensor& y);
// acts as NCHW (a permuted view for NHWC).
at::Tensor to_nchw(const at::Tensor& acts, ConvLayout layout);
// Option names of the ops (torch_ext) and tools: "NCHW" | "NHWC"; "reference" | "nearest" |
// "bilinear" | "bilinear_align_corners" | "bicubic" | "area"; "fold" | "global_avg_pool";
// "interpolate" | "pool". Throw c10::ValueError naming fn and `name` otherwise.
ConvLayout parse_conv_layout(const char* fn, const std::string& name, const std::string& value);
ResizeMode parse_resize_mode(const char* fn, const std::string& name, const std::string& value);
ConvReduction parse_conv_reduction(const char* fn, const std::string& name,
                                   const std::string& value);
SpatialMatch parse_spatial_match(const char* fn, const std::string& name, const std::string& value);
// [out, in] matrix of the reference rule (bilinear at i * in / out, clamped), float64 on CPU.
at::Tensor reference_interpolation_matrix(int64_t out, int64_t in);
}  // namespace detail

}  // namespace svcca
