// Conv-layer recipes and Fourier CCA: closed-form recipes, google/svcca's dft_same_size golden
// case through compat::fourier_ccas, the DFT theorem (Raghu et al. 2017), the conjugate-symmetry
// shortcut against the full computation, and boundary errors.
#include "svcca/conv/fourier.h"

#include <algorithm>

#include "support/support.h"
#include "svcca/compat/compat.h"
#include "svcca/conv/recipes.h"
#include "svcca/measures/cca.h"

namespace svcca {
namespace {

using testing::golden_array;
using testing::golden_tol;
using testing::load_golden;
namespace tol = testing::tol;

at::TensorOptions f64() {
  return at::TensorOptions().dtype(at::kDouble);
}

// y depends on x channel-wise plus noise, so per-frequency correlations are strictly inside (0, 1).
std::pair<at::Tensor, at::Tensor> conv_pair(int64_t n, int64_t c1, int64_t c2, int64_t h1,
                                            int64_t w1, int64_t h2, int64_t w2) {
  at::Tensor x = at::randn({n, c1, h1, w1}, f64());
  at::Tensor xr = at::adaptive_avg_pool2d(x, {h2, w2});
  at::Tensor mix = at::randn({c2, c1}, f64());
  at::Tensor y = at::einsum("dc,nchw->ndhw", {mix, xr}) + 0.7 * at::randn({n, c2, h2, w2}, f64());
  return {x, y};
}

// Slow, obvious per-frequency reference: complex QR of the centered coefficients, then the
// singular values of Qx^H Qy.
at::Tensor direct_frequency_cca(const at::Tensor& xf, const at::Tensor& yf) {
  at::Tensor xc = xf - xf.mean(0);
  at::Tensor yc = yf - yf.mean(0);
  at::Tensor qx = std::get<0>(at::linalg_qr(xc, "reduced"));
  at::Tensor qy = std::get<0>(at::linalg_qr(yc, "reduced"));
  return at::linalg_svdvals(at::mm(qx.conj().t(), qy));
}

// ---- Frequency grid ------------------------------------------------------------------------

TEST(FrequencyGridTest, FrequenciesFollowNumpyOrder) {
  EXPECT_EQ(detail::fft_frequencies(8), (std::vector<int64_t>{0, 1, 2, 3, -4, -3, -2, -1}));
  EXPECT_EQ(detail::fft_frequencies(5), (std::vector<int64_t>{0, 1, 2, -2, -1}));
}

TEST(FrequencyGridTest, CropKeepsMinusHalfToHalf) {
  // google/svcca's fft_resize: 8 -> 6 keeps [0, 1, 2, 5, 6, 7] (frequencies 0, 1, 2, -3, -2, -1).
  EXPECT_EQ(detail::cropped_frequency_indices(8, 6), (std::vector<int64_t>{0, 1, 2, 5, 6, 7}));
  EXPECT_EQ(detail::cropped_frequency_indices(8, 5), (std::vector<int64_t>{0, 1, 2, 6, 7}));
  EXPECT_EQ(detail::cropped_frequency_indices(6, 6), (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
}

TEST(FrequencyGridTest, ConjugateSymmetrySolvesAboutHalf) {
  // 16 x 16: 4 self-conjugate locations (0 or 8 on each axis) plus (256 - 4) / 2 pairs.
  auto g = detail::frequency_grid(16, 16, 16, 16, true);
  EXPECT_EQ(g.solved.size(), 130u);
  EXPECT_EQ(detail::frequency_grid(16, 16, 16, 16, false).solved.size(), 256u);
  // 8 -> 6 crop: row and column -3 lost their partner +3 (11 locations solved on their own);
  // the other 25 locations form (0, 0) plus 12 pairs.
  auto c = detail::frequency_grid(8, 8, 6, 6, true);
  EXPECT_EQ(c.h, 6);
  EXPECT_EQ(c.solved.size(), 11u + 13u);
  EXPECT_EQ(c.x_rows, (std::vector<int64_t>{0, 1, 2, 5, 6, 7}));
  EXPECT_EQ(c.y_rows, (std::vector<int64_t>{0, 1, 2, 3, 4, 5}));
}

// ---- Fourier CCA -----------------------------------------------------------------------------

class FourierCcaTest : public testing::SeedingFixture {};

TEST_F(FourierCcaTest, MatchesADirectCcaAtEachFrequency) {
  auto [x, y] = conv_pair(40, 4, 3, 6, 5, 6, 5);
  auto r = fourier_cca(x, y);
  ASSERT_EQ(r.correlations.sizes(), (std::vector<int64_t>{6, 5, 3}));
  EXPECT_TRUE(r.valid.all().item<bool>());
  at::Tensor xf = at::fft_fft2(x.to(at::kComplexDouble), c10::nullopt, {2, 3});
  at::Tensor yf = at::fft_fft2(y.to(at::kComplexDouble), c10::nullopt, {2, 3});
  for (auto ij : std::vector<std::pair<int, int>>{{0, 0}, {1, 2}, {5, 4}, {3, 0}, {2, 3}}) {
    at::Tensor e = direct_frequency_cca(xf.select(2, ij.first).select(2, ij.second),
                                        yf.select(2, ij.first).select(2, ij.second));
    EXPECT_ALLCLOSE(r.correlations[ij.first][ij.second], e, tol::kDecomp64)
        << "frequency " << ij.first << ", " << ij.second;
  }
  EXPECT_ALLCLOSE(r.mean, r.correlations.mean(), tol::kClosedForm64);
  at::Tensor without = (r.correlations.sum() - r.correlations[0][0].sum()) / (30 * 3 - 3);
  EXPECT_ALLCLOSE(r.mean_without_dc, without, tol::kClosedForm64);
  EXPECT_ALLCLOSE(r.frequency_mean, r.correlations.mean(-1), tol::kClosedForm64);
  EXPECT_TRUE(r.frequencies_h.equal(at::tensor({0, 1, 2, -3, -2, -1}, at::kLong)));
}

TEST_F(FourierCcaTest, NhwcEqualsNchw) {
  auto [x, y] = conv_pair(30, 3, 3, 4, 4, 4, 4);
  FourierCcaOptions nhwc;
  nhwc.layout = ConvLayout::kNHWC;
  auto a = fourier_cca(x, y);
  auto b = fourier_cca(x.permute({0, 2, 3, 1}), y.permute({0, 2, 3, 1}), nhwc);
  EXPECT_ALLCLOSE(b.correlations, a.correlations, tol::kClosedForm64);
}

// The conjugate-symmetry shortcut equals solving every frequency: same size, even and odd crops,
// non-square maps cropped on one axis only.
TEST_F(FourierCcaTest, ConjugateSymmetryHalfEqualsFull) {
  struct Case {
    int64_t h1, w1, h2, w2;
  };
  for (const Case& c :
       {Case{8, 8, 8, 8}, Case{8, 8, 6, 6}, Case{8, 8, 5, 5}, Case{6, 8, 6, 5}, Case{7, 6, 4, 6}}) {
    auto [x, y] = conv_pair(30, 3, 4, c.h1, c.w1, c.h2, c.w2);
    FourierCcaOptions full;
    full.use_conjugate_symmetry = false;
    auto half = fourier_cca(x, y);
    auto all = fourier_cca(x, y, full);
    EXPECT_LT(half.n_solved, all.n_solved);
    EXPECT_EQ(all.n_solved, std::min(c.h1, c.h2) * std::min(c.w1, c.w2));
    EXPECT_ALLCLOSE(half.correlations, all.correlations, tol::kDecomp64)
        << c.h1 << "x" << c.w1 << " vs " << c.h2 << "x" << c.w2;
    EXPECT_TRUE(half.x_mask.equal(all.x_mask));
    EXPECT_TRUE(half.valid.equal(all.valid));
  }
}

// Cropping breaks the symmetry: the -new/2 row is not the mirror of any kept row, so mirroring it
// (as a same-size grid would) gives wrong numbers. Guards the rule above against a too-eager port.
TEST_F(FourierCcaTest, CropBreaksConjugateSymmetryAtMinusHalf) {
  auto [x, y] = conv_pair(30, 3, 3, 8, 8, 6, 6);
  FourierCcaOptions full;
  full.use_conjugate_symmetry = false;
  auto r = fourier_cca(x, y, full);
  // (-3, 1) and (-3, -1) would be partners in an uncropped 6 x 6 grid.
  at::Tensor a = r.correlations[3][1];
  at::Tensor b = r.correlations[3][5];
  EXPECT_GT((a - b).abs().max().item<double>(), 1e-3);
  // whereas (1, 2) and (-1, -2) are true partners.
  EXPECT_ALLCLOSE(r.correlations[1][2], r.correlations[5][4], tol::kDecomp64);
}

// Raghu et al. 2017: for a dataset closed under circular shifts, the canonical correlations of one
// CCA over the flattened [N, C*H*W] features are the union of the per-frequency ones.
TEST_F(FourierCcaTest, TheoremUnionOfFrequenciesEqualsFlattenedCca) {
  const int64_t n0 = 10, c1 = 3, c2 = 2, h = 4, w = 4;
  auto [x0, y0] = conv_pair(n0, c1, c2, h, w, h, w);
  std::vector<at::Tensor> xs, ys;
  for (int64_t n = 0; n < n0; ++n) {
    for (int64_t a = 0; a < h; ++a) {
      for (int64_t b = 0; b < w; ++b) {
        xs.push_back(at::roll(x0[n], {a, b}, {1, 2}));
        ys.push_back(at::roll(y0[n], {a, b}, {1, 2}));
      }
    }
  }
  at::Tensor x = at::stack(xs);  // [160, 3, 4, 4]
  at::Tensor y = at::stack(ys);
  auto flat = cca(x.reshape({x.size(0), -1}), y.reshape({y.size(0), -1}));
  auto four = fourier_cca(x, y);
  ASSERT_TRUE(four.valid.all().item<bool>());
  at::Tensor pooled = std::get<0>(four.correlations.flatten().sort(0, /*descending=*/true));
  ASSERT_EQ(flat.correlations.numel(), h * w * std::min(c1, c2));
  EXPECT_ALLCLOSE(pooled, flat.correlations, tol::kDecomp64);
  // Without shift closure the identity fails (the theorem's hypothesis matters).
  auto [xn, yn] = conv_pair(160, c1, c2, h, w, h, w);
  auto flat_n = cca(xn.reshape({160, -1}), yn.reshape({160, -1}));
  at::Tensor pooled_n =
      std::get<0>(fourier_cca(xn, yn).correlations.flatten().sort(0, /*descending=*/true));
  EXPECT_GT((pooled_n - flat_n.correlations).abs().max().item<double>(), 1e-3);
}

TEST_F(FourierCcaTest, DtypePolicy) {
  auto [x, y] = conv_pair(30, 3, 3, 4, 4, 4, 4);
  auto d = fourier_cca(x, y);
  auto f = fourier_cca(x.to(at::kFloat), y.to(at::kFloat));
  EXPECT_EQ(d.correlations.scalar_type(), at::kDouble);
  EXPECT_EQ(f.correlations.scalar_type(), at::kFloat);  // computed in float64, returned float32
  EXPECT_ALLCLOSE(f.correlations, d.correlations.to(at::kFloat), tol::kFloat32);
  FourierCcaOptions in;
  in.precision = Precision::kInput;  // complex64 throughout
  auto g = fourier_cca(x.to(at::kFloat), y.to(at::kFloat), in);
  EXPECT_EQ(g.correlations.scalar_type(), at::kFloat);
  EXPECT_ALLCLOSE(g.correlations, d.correlations.to(at::kFloat), tol::kFloat32);
  EXPECT_EQ(d.x_mask.scalar_type(), at::kBool);
}

TEST_F(FourierCcaTest, ConstantChannelIsDroppedAtEveryFrequency) {
  auto [x, y] = conv_pair(30, 4, 3, 4, 4, 4, 4);
  x.select(1, 2).fill_(1.5);
  auto r = fourier_cca(x, y);
  EXPECT_FALSE(r.x_mask.select(2, 2).any().item<bool>());
  EXPECT_TRUE(r.x_mask.select(2, 0).all().item<bool>());
  EXPECT_TRUE(r.valid.all().item<bool>());  // still 3 directions of x for 3 of y
  // A spatially constant layer has no signal at nonzero frequencies: mean_without_dc would be
  // 0 / 0, so it is a clear error (it was a NaN in the result).
  at::Tensor flat = at::randn({30, 2, 1, 1}, f64()).expand({30, 2, 4, 4}).contiguous();
  EXPECT_THROWS_WITH_TYPE(fourier_cca(flat, y), c10::ValueError,
                          "no channel direction is left at any frequency other than DC");
  // One constant frequency among others is still reported per frequency (valid marks it).
  at::Tensor half = x.clone();
  half.narrow(3, 0, 4).copy_(half.narrow(3, 0, 1).expand({30, 4, 4, 4}));
  auto s = fourier_cca(half, y);
  EXPECT_FALSE(std::isnan(s.mean_without_dc.item<double>()));
}

// A circular convolution of a one-channel input: at each frequency its 8 channels are multiples
// of the input's spectrum (rank 1), so in float32 the other 7 directions exist only through
// rounding, white over frequencies. At weak frequencies they are not small against that
// frequency's own largest variance (the relative rank test kept them, and the layer's Fourier
// CCA with itself came out below 1); the absolute floor at the rounding level of float32 drops
// them, so the float32 layer has the float64 layer's directions at every frequency.
TEST_F(FourierCcaTest, Float32RoundingNoiseIsNotADirection) {
  at::Tensor img = at::randn({300, 1, 8, 8}, f64());
  // Wrap one pixel around each side: a 3x3 conv without padding is then circular.
  img = at::cat({img.narrow(2, 7, 1), img, img.narrow(2, 0, 1)}, 2);
  img = at::cat({img.narrow(3, 7, 1), img, img.narrow(3, 0, 1)}, 3);
  at::Tensor w = at::randn({8, 1, 3, 3}, f64());
  at::Tensor a64 = at::conv2d(img, w);
  at::Tensor a32 = at::conv2d(img.to(at::kFloat), w.to(at::kFloat));
  ASSERT_EQ(a32.sizes(), (at::IntArrayRef{300, 8, 8, 8}));
  auto r64 = fourier_cca(a64, a64);
  auto r32 = fourier_cca(a32, a32);
  EXPECT_EQ(r64.valid.sum().item<int64_t>(), 64);  // one direction per frequency
  EXPECT_TRUE(at::equal(r32.valid, r64.valid));
  EXPECT_ALLCLOSE(r32.correlations, r32.valid.to(at::kFloat), tol::kFloat32);
  EXPECT_ALLCLOSE(r32.mean, at::ones({}, at::kFloat), tol::kFloat32);
  // An explicit rank_rtol is used as given: at 1e-15 the rounding directions come back.
  FourierCcaOptions loose;
  loose.rank_rtol = 1e-15;
  EXPECT_GT(fourier_cca(a32, a32, loose).valid.sum().item<int64_t>(),
            r32.valid.sum().item<int64_t>());
}

TEST_F(FourierCcaTest, Errors) {
  auto [x, y] = conv_pair(30, 3, 3, 4, 4, 4, 4);
  EXPECT_THROWS_WITH_TYPE(fourier_cca(x.flatten(2), y), c10::ValueError,
                          "fourier_cca: x must be a 4-D tensor of conv activations");
  EXPECT_THROWS_WITH_TYPE(fourier_cca(x, y.narrow(0, 0, 20)), c10::ValueError,
                          "x and y must have the same batch size (dim 0), but got x with shape "
                          "[30, 3, 4, 4] and y with shape [20, 3, 4, 4]");
  EXPECT_THROWS_WITH_TYPE(fourier_cca(x, at::randn({30, 40, 4, 4}, f64())), c10::ValueError,
                          "y must have more examples than channels at every frequency (at least "
                          "42 examples for 40 channels");
  EXPECT_THROWS_WITH_TYPE(fourier_cca(x.to(at::kComplexDouble), y), c10::TypeError,
                          "x must be a real floating tensor");
  EXPECT_THROWS_WITH_TYPE(fourier_cca(x, y.to(at::kInt)), c10::TypeError,
                          "y must be a floating tensor");
  at::Tensor bad = x.clone();
  bad[0][0][0][0] = std::nan("");
  EXPECT_THROWS_WITH_TYPE(fourier_cca(bad, y), c10::ValueError,
                          "x must contain only finite values, but got 1 NaN");
  FourierCcaOptions o;
  o.epsilon = -1;
  EXPECT_THROWS_WITH_TYPE(fourier_cca(x, y, o), c10::ValueError, "epsilon must be finite and >= 0");
  EXPECT_THROWS_WITH_TYPE(fourier_cca(at::zeros_like(x), y), c10::ValueError,
                          "x must have at least one non-constant channel");
}

// ---- google/svcca compatibility --------------------------------------------------------------

TEST(FourierCcasGoldenTest, DftSameSize) {
  auto g = load_golden("dft_same_size");
  at::Tensor a1 = golden_array(g, "conv_acts1");  // NHWC [16, 8, 8, 4]
  at::Tensor a2 = golden_array(g, "conv_acts2");
  auto r = compat::fourier_ccas(a1, a2);
  const testing::Tol coef_tol = golden_tol(g, "cca_coef1", tol::kGoldenComplex64Fft);
  EXPECT_ALLCLOSE(r.at("cca_coef1"), golden_array(g, "cca_coef1"), coef_tol);
  EXPECT_ALLCLOSE(r.at("cca_coef2"), golden_array(g, "cca_coef1"), coef_tol);
  EXPECT_ALLCLOSE(r.at("mean"), golden_array(g, "mean"), golden_tol(g, "mean", coef_tol));
  EXPECT_ALLCLOSE(r.at("sum"), golden_array(g, "sum"), golden_tol(g, "sum", coef_tol));
  EXPECT_TRUE(r.at("x_idxs").equal(golden_array(g, "x_idxs")));
  EXPECT_TRUE(r.at("y_idxs").equal(golden_array(g, "y_idxs")));
  // The modern API on the same data agrees up to the reference's complex64 FFT.
  FourierCcaOptions o;
  o.layout = ConvLayout::kNHWC;
  EXPECT_ALLCLOSE(fourier_cca(a1, a2, o).correlations, golden_array(g, "cca_coef1"), coef_tol);
}

TEST(FourierCcasCompatTest, EpsilonRemovesChannelsAndPads) {
  at::manual_seed(0);
  auto [x, y] = conv_pair(30, 4, 3, 4, 4, 4, 4);
  at::Tensor a = x.permute({0, 2, 3, 1}).contiguous();
  a.select(3, 1).mul_(1e-3);  // tiny variance at every frequency: removed by epsilon 1e-2
  at::Tensor b = y.permute({0, 2, 3, 1}).contiguous();
  auto r = compat::fourier_ccas(a, b, 1e-2);
  EXPECT_FALSE(r.at("x_idxs").select(2, 1).any().item<bool>());
  // One value per location per kept pair; k = min(3, 3) so nothing is padded here, and each
  // location matches get_cca_similarity's recipe on the cropped problem (checked in test_conv.py).
  EXPECT_EQ(r.at("cca_coef1").sizes(), (std::vector<int64_t>{4, 4, 3}));
  auto r0 = compat::fourier_ccas(a, b, 0.0);
  EXPECT_TRUE(r0.at("x_idxs").all().item<bool>());
}

TEST(FourierCcasCompatTest, Errors) {
  at::Tensor a = at::randn({10, 8, 8, 4}, f64());
  EXPECT_THROWS_WITH_TYPE(compat::fourier_ccas(a, at::randn({10, 6, 5, 4}, f64())), c10::ValueError,
                          "fourier_ccas: conv_acts2 must have square spatial maps (H == W) when "
                          "the two layers' spatial sizes differ");
  EXPECT_THROWS_WITH_TYPE(compat::fourier_ccas(a, at::randn({10, 8, 8, 12}, f64())),
                          c10::ValueError,
                          "conv_acts2 must have more examples than channels at every frequency "
                          "(at least 13 examples for 12 channels");
  EXPECT_THROWS_WITH_TYPE(compat::fourier_ccas(a, at::randn({9, 8, 8, 4}, f64())), c10::ValueError,
                          "must have the same batch size");
  EXPECT_THROWS_WITH_TYPE(compat::fourier_ccas(a.flatten(1), a), c10::ValueError,
                          "conv_acts1 must be a 4-D tensor");
  EXPECT_THROWS_WITH_TYPE(
      compat::fourier_ccas(a, a, 2.0), c10::ValueError,
      "epsilon must keep at least one neuron of conv_acts1 at frequency (0, 0)");
  // Non-square maps of equal size are fine (the reference only crops when sizes differ).
  at::Tensor r = at::randn({10, 4, 6, 3}, f64());
  EXPECT_EQ(compat::fourier_ccas(r, r).at("cca_coef1").sizes(), (std::vector<int64_t>{4, 6, 3}));
}

// ---- Recipes ---------------------------------------------------------------------------------

TEST(ConvRecipesTest, FoldIsNhwcReshapeWithStride) {
  at::Tensor x = at::arange(2 * 3 * 2 * 2, f64()).view({2, 3, 2, 2});  // NCHW
  at::Tensor f = fold_positions(x);
  EXPECT_ALLCLOSE(f, x.permute({0, 2, 3, 1}).reshape({8, 3}), tol::kClosedForm64);
  EXPECT_ALLCLOSE(fold_positions(x.permute({0, 2, 3, 1}), ConvLayout::kNHWC), f,
                  tol::kClosedForm64);
  // Row 1 is (n=0, h=0, w=1): channel c at x[0, c, 0, 1] = 12 c + 1.
  EXPECT_ALLCLOSE(f[1], at::tensor({1.0, 5.0, 9.0}, f64()), tol::kClosedForm64);
  EXPECT_ALLCLOSE(fold_positions(x, ConvLayout::kNCHW, 3), f.slice(0, 0, 8, 3), tol::kClosedForm64);
  EXPECT_EQ(fold_positions(x, ConvLayout::kNCHW, 3).size(0), 3);
  EXPECT_ALLCLOSE(global_avg_pool(x), x.mean({2, 3}), tol::kClosedForm64);
}

TEST(ConvRecipesTest, ReferenceInterpolationRule) {
  // Source position i * h / H clamped to h - 1: 2 -> 4 samples at 0, 0.5, 1, 1.5 -> 1.
  at::Tensor m = detail::reference_interpolation_matrix(4, 2);
  EXPECT_ALLCLOSE(m, at::tensor({1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.0, 1.0}, f64()).view({4, 2}),
                  tol::kClosedForm64);
  at::Tensor x = at::tensor({1.0, 3.0, 5.0, 7.0}, f64()).view({1, 1, 2, 2});
  at::Tensor up = resize_spatial(x, 4, 4);
  // Row 1 (source row 0.5) of column 1 (source column 0.5): mean of all four.
  EXPECT_NEAR(up[0][0][1][1].item<double>(), 4.0, 1e-12);
  EXPECT_NEAR(up[0][0][3][3].item<double>(), 7.0, 1e-12);
  // Torch's modes are distinct from the reference rule (align_corners False or True).
  at::Tensor tb = resize_spatial(x, 4, 4, ResizeMode::kBilinear);
  at::Tensor ta = resize_spatial(x, 4, 4, ResizeMode::kBilinearAlignCorners);
  EXPECT_FALSE(at::allclose(tb, up));
  EXPECT_FALSE(at::allclose(ta, up));
  EXPECT_ALLCLOSE(resize_spatial(x, 4, 4, ResizeMode::kNearest),
                  x.repeat_interleave(2, 2).repeat_interleave(2, 3), tol::kClosedForm64);
  // NHWC in, NHWC out.
  at::Tensor nhwc =
      resize_spatial(x.permute({0, 2, 3, 1}), 4, 4, ResizeMode::kReference, ConvLayout::kNHWC);
  EXPECT_ALLCLOSE(nhwc.permute({0, 3, 1, 2}), up, tol::kClosedForm64);
}

TEST(ConvRecipesTest, FeaturesMatchSpatialSizes) {
  at::manual_seed(0);
  auto [x, y] = conv_pair(20, 3, 2, 8, 8, 4, 4);
  auto up = conv_features(x, y);  // default: fold, smaller map interpolated up (reference rule)
  EXPECT_EQ(up.first.sizes(), (std::vector<int64_t>{20 * 64, 3}));
  EXPECT_EQ(up.second.sizes(), (std::vector<int64_t>{20 * 64, 2}));
  EXPECT_ALLCLOSE(up.second, fold_positions(resize_spatial(y, 8, 8)), tol::kClosedForm64);
  ConvRecipe down;
  down.match = SpatialMatch::kPoolDown;
  auto d = conv_features(x, y, down);
  EXPECT_EQ(d.first.sizes(), (std::vector<int64_t>{20 * 16, 3}));
  // 2x2 average pooling.
  at::Tensor pooled = x.view({20, 3, 4, 2, 4, 2}).mean({3, 5});
  EXPECT_ALLCLOSE(d.first, fold_positions(pooled), tol::kClosedForm64);
  ConvRecipe gap;
  gap.reduction = ConvReduction::kGlobalAvgPool;
  auto p = conv_features(x, y, gap);
  EXPECT_ALLCLOSE(p.second, y.mean({2, 3}), tol::kClosedForm64);
}

TEST(ConvRecipesTest, AnyMeasurePlugsIn) {
  at::manual_seed(0);
  auto [x, y] = conv_pair(20, 3, 2, 4, 4, 4, 4);
  PairMeasure mean_cca = [](const at::Tensor& a, const at::Tensor& b) {
    return cca(a, b).correlations.mean();
  };
  at::Tensor s = conv_similarity(x, y, mean_cca);
  EXPECT_ALLCLOSE(s, cca(fold_positions(x), fold_positions(y)).correlations.mean(),
                  tol::kClosedForm64);
  EXPECT_THROWS_WITH_TYPE(conv_similarity(x, y, PairMeasure{}), c10::ValueError,
                          "measure must be a callable");
}

TEST(ConvRecipesTest, Errors) {
  at::Tensor x = at::randn({4, 3, 2, 2}, f64());
  EXPECT_THROWS_WITH_TYPE(fold_positions(x.flatten(2)), c10::ValueError,
                          "fold_positions: acts must be a 4-D tensor of conv activations (NCHW or "
                          "NHWC), but got a 3-D tensor with shape [4, 3, 4]");
  EXPECT_THROWS_WITH_TYPE(fold_positions(x, ConvLayout::kNCHW, 0), c10::ValueError,
                          "position_stride must be >= 1, but got 0");
  EXPECT_THROWS_WITH_TYPE(global_avg_pool(x.to(at::kComplexFloat)), c10::TypeError,
                          "global_avg_pool: acts must be a real floating tensor");
  EXPECT_THROWS_WITH_TYPE(resize_spatial(x, 0, 3), c10::ValueError, "size must be positive");
  EXPECT_THROWS_WITH_TYPE(conv_features(x, at::randn({5, 3, 2, 2}, f64())), c10::ValueError,
                          "conv_features: x and y must have the same batch size");
}

}  // namespace
}  // namespace svcca
