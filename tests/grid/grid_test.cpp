// Tests of similarity_grid and GridAccumulator: every cell equals the one-shot pair call (each
// measure, one model and A vs B, 2-D and 4-D layers, each GridConv), streamed equals one-shot,
// symmetry, metadata, and every rejected input.
#include "svcca/grid/grid.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <vector>

#include "support/support.h"
#include "svcca/conv/fourier.h"
#include "svcca/stream/minibatch_cka.h"

namespace svcca {
namespace {

using testing::AllClose;
namespace tol = testing::tol;

const std::vector<GridMeasure> kAllMeasures = {GridMeasure::kLinearCka, GridMeasure::kDebiasedCka,
                                               GridMeasure::kRbfCka,    GridMeasure::kCca,
                                               GridMeasure::kSvcca,     GridMeasure::kPwcca};
const std::vector<GridMeasure> kStreamable = {GridMeasure::kLinearCka, GridMeasure::kDebiasedCka,
                                              GridMeasure::kCca, GridMeasure::kSvcca,
                                              GridMeasure::kPwcca};

// The one-shot pair call a cell must equal, on [n, p] matrices; float64 0-d.
double one_shot(GridMeasure m, const at::Tensor& x, const at::Tensor& y,
                const GridOptions& o = {}) {
  switch (m) {
    case GridMeasure::kLinearCka:
      return linear_cka(x, y).item<double>();
    case GridMeasure::kDebiasedCka:
    case GridMeasure::kMinibatchCka: {
      LinearCkaOptions d;
      d.debiased = true;
      return linear_cka(x, y, d).item<double>();
    }
    case GridMeasure::kRbfCka:
      return rbf_cka(x, y, o.rbf).item<double>();
    case GridMeasure::kCca:
      return cca(x, y, o.cca).correlations.mean().item<double>();
    case GridMeasure::kSvcca:
      return svcca(x, y, o.svcca).score.item<double>();
    case GridMeasure::kPwcca:
      return pwcca(x, y, o.pwcca).score.item<double>();
  }
  return 0.0;
}

// Layers that share a latent signal, so that cells differ from each other and from 0 and 1.
NamedActivations make_layers(const std::vector<int64_t>& widths, int64_t n,
                             const std::string& prefix, at::ScalarType dtype = at::kDouble) {
  auto o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor z = at::randn({n, 4}, o);
  NamedActivations out;
  for (size_t l = 0; l < widths.size(); ++l) {
    at::Tensor x = at::mm(z, at::randn({4, widths[l]}, o)) +
                   (0.5 + 0.3 * static_cast<double>(l)) * at::randn({n, widths[l]}, o) + 3.0;
    out.push_back({prefix + std::to_string(l), x.to(dtype)});
  }
  return out;
}

// 4-D [n, c, h, w] layers with shared structure.
NamedActivations make_conv_layers(const std::vector<std::array<int64_t, 3>>& chw, int64_t n,
                                  const std::string& prefix) {
  auto o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor z = at::randn({n, 3, 1, 1}, o);
  NamedActivations out;
  for (size_t l = 0; l < chw.size(); ++l) {
    const auto [c, h, w] = chw[l];
    at::Tensor mix = at::randn({c, 3}, o);
    at::Tensor base = at::einsum("nkhw,ck->nchw", {z.expand({n, 3, h, w}), mix});
    out.push_back({prefix + std::to_string(l), base + 0.7 * at::randn({n, c, h, w}, o)});
  }
  return out;
}

GridOptions with(GridMeasure m, GridConv c = GridConv::kAuto) {
  GridOptions o;
  o.measure = m;
  o.conv = c;
  return o;
}

void expect_cell(const Grid& g, int64_t i, int64_t j, double expected, testing::Tol t) {
  EXPECT_ALLCLOSE(g.values[i][j], at::scalar_tensor(expected, at::kDouble), t)
      << g.measure << " cell (" << g.rows[i] << ", " << g.cols[j] << ")";
}

// Cell (i, j) is NaN, and g.undefined lists it under a reason containing `why`, exactly once.
::testing::AssertionResult Undefined(const Grid& g, int64_t i, int64_t j, const std::string& why) {
  if (!std::isnan(g.values[i][j].item<double>())) {
    return ::testing::AssertionFailure()
           << "cell (" << i << ", " << j << ") is " << g.values[i][j].item<double>() << ", not NaN";
  }
  int found = 0;
  std::string reasons;
  for (const auto& u : g.undefined) {
    reasons += "\n  " + u.reason;
    for (const auto& c : u.cells) {
      if (c.first == i && c.second == j) {
        if (u.reason.find(why) == std::string::npos) {
          return ::testing::AssertionFailure()
                 << "cell (" << i << ", " << j << ") is undefined for \"" << u.reason
                 << "\", which does not contain \"" << why << "\"";
        }
        ++found;
      }
    }
  }
  if (found != 1) {
    return ::testing::AssertionFailure() << "cell (" << i << ", " << j << ") is listed " << found
                                         << " times among the undefined cells:" << reasons;
  }
  return ::testing::AssertionSuccess();
}

class GridMeasureTest : public ::testing::TestWithParam<GridMeasure> {
 protected:
  void SetUp() override { at::manual_seed(0); }
};

TEST_P(GridMeasureTest, OneModelCellsEqualPairCalls) {
  const GridMeasure m = GetParam();
  auto layers = make_layers({3, 7, 12}, 80, "l");
  Grid g = similarity_grid(layers, with(m));
  ASSERT_EQ(g.values.sizes(), (at::IntArrayRef{3, 3}));
  EXPECT_EQ(g.values.scalar_type(), at::kDouble);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      expect_cell(g, i, j, one_shot(m, layers[i].second, layers[j].second), tol::kDecomp64);
    }
  }
  EXPECT_EQ(g.rows, (std::vector<std::string>{"l0", "l1", "l2"}));
  EXPECT_EQ(g.cols, g.rows);
  EXPECT_EQ(g.measure, to_string(m));
  EXPECT_EQ(g.examples, 80);
  EXPECT_EQ(g.row_label, "layer");
  // auto resolves by family (2-D layers pass unchanged either way).
  EXPECT_EQ(g.options.at("conv"), m <= GridMeasure::kRbfCka ? "flatten" : "pool");
  EXPECT_FALSE(at::isnan(g.values).any().item<bool>());
}

TEST_P(GridMeasureTest, TwoModelCellsEqualPairCalls) {
  const GridMeasure m = GetParam();
  auto a = make_layers({4, 9}, 70, "l");
  auto b = make_layers({5, 3, 11}, 70, "l");  // same names as a's on purpose
  Grid g = similarity_grid(a, b, with(m));
  ASSERT_EQ(g.values.sizes(), (at::IntArrayRef{2, 3}));
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      expect_cell(g, i, j, one_shot(m, a[i].second, b[j].second), tol::kDecomp64);
    }
  }
  EXPECT_EQ(g.row_label, "model A layer");
  EXPECT_EQ(g.col_label, "model B layer");
}

TEST_P(GridMeasureTest, Float32CellsEqualPairCalls) {
  const GridMeasure m = GetParam();
  auto layers = make_layers({4, 8}, 60, "f", at::kFloat);
  Grid g = similarity_grid(layers, with(m));
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 2; ++j) {
      expect_cell(g, i, j, one_shot(m, layers[i].second, layers[j].second), tol::kFloat32);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Grid, GridMeasureTest, ::testing::ValuesIn(kAllMeasures),
                         [](const ::testing::TestParamInfo<GridMeasure>& info) {
                           std::string s = to_string(info.param);
                           for (auto& ch : s) {
                             if (ch == '-') ch = '_';
                           }
                           return s;
                         });

class GridTest : public testing::SeedingFixture {};

TEST_F(GridTest, CkaGridIsSymmetricWithUnitDiagonal) {
  auto layers = make_layers({3, 6, 9, 4}, 50, "x");
  Grid g = similarity_grid(layers);
  EXPECT_ALLCLOSE(g.values, g.values.t().contiguous(), tol::kClosedForm64);
  EXPECT_ALLCLOSE(g.values.diagonal(), at::ones({4}, at::kDouble), tol::kClosedForm64);
}

TEST_F(GridTest, PwccaGridIsNotSymmetric) {
  auto layers = make_layers({3, 9}, 80, "x");
  Grid g = similarity_grid(layers, with(GridMeasure::kPwcca));
  EXPECT_GT(std::abs(g.values[0][1].item<double>() - g.values[1][0].item<double>()), 1e-6);
}

TEST_F(GridTest, OptionsReachTheCells) {
  auto layers = make_layers({6, 10}, 90, "x");
  GridOptions o = with(GridMeasure::kSvcca);
  o.svcca.dims = 2;
  o.svcca.cca.epsilon = 1e-3;
  Grid g = similarity_grid(layers, o);
  expect_cell(g, 0, 1, one_shot(GridMeasure::kSvcca, layers[0].second, layers[1].second, o),
              tol::kDecomp64);
  EXPECT_EQ(g.options.at("dims"), "2");
  EXPECT_EQ(g.options.at("epsilon"), "0.001");

  GridOptions r = with(GridMeasure::kRbfCka);
  r.rbf.sigma = 3.0;
  r.rbf.debiased = true;
  Grid gr = similarity_grid(layers, r);
  expect_cell(gr, 0, 1, one_shot(GridMeasure::kRbfCka, layers[0].second, layers[1].second, r),
              tol::kDecomp64);
  EXPECT_EQ(gr.options.at("sigma"), "3");

  GridOptions p = with(GridMeasure::kPwcca);
  p.pwcca.weighting = PwccaWeighting::kCanonicalVariates;
  Grid gp = similarity_grid(layers, p);
  expect_cell(gp, 1, 0, one_shot(GridMeasure::kPwcca, layers[1].second, layers[0].second, p),
              tol::kDecomp64);
}

// ---- 4-D layers and each GridConv
// ----------------------------------------------------------------

TEST_F(GridTest, FlattenAndPoolOfConvLayers) {
  auto conv = make_conv_layers({{{3, 4, 4}}, {{5, 2, 2}}}, 60, "c");
  auto flat = [](const at::Tensor& t) { return t.reshape({t.size(0), -1}); };
  auto pool = [](const at::Tensor& t) { return t.mean({2, 3}); };
  // auto: flatten for the CKA family, pool for the CCA family.
  Grid cka = similarity_grid(conv, with(GridMeasure::kLinearCka));
  expect_cell(cka, 0, 1, linear_cka(flat(conv[0].second), flat(conv[1].second)).item<double>(),
              tol::kDecomp64);
  EXPECT_EQ(cka.options.at("conv"), "flatten");
  Grid c = similarity_grid(conv, with(GridMeasure::kCca));
  expect_cell(c, 0, 1, one_shot(GridMeasure::kCca, pool(conv[0].second), pool(conv[1].second)),
              tol::kDecomp64);
  EXPECT_EQ(c.options.at("conv"), "pool");
  // Explicit choices against the one-shot recipe functions; a 2-D layer mixes in unchanged.
  auto mixed = conv;
  mixed.push_back({"fc", at::randn({60, 4}, at::kDouble)});
  Grid p = similarity_grid(mixed, with(GridMeasure::kLinearCka, GridConv::kPool));
  expect_cell(p, 0, 2, linear_cka(global_avg_pool(conv[0].second), mixed[2].second).item<double>(),
              tol::kDecomp64);
  Grid f = similarity_grid(mixed, with(GridMeasure::kSvcca, GridConv::kFlatten));
  expect_cell(f, 1, 2, one_shot(GridMeasure::kSvcca, flat(conv[1].second), mixed[2].second),
              tol::kDecomp64);
}

TEST_F(GridTest, PoolHonoursNhwcLayout) {
  auto conv = make_conv_layers({{{3, 4, 4}}, {{4, 3, 3}}}, 40, "c");
  NamedActivations nhwc;
  for (const auto& [n, t] : conv) nhwc.push_back({n, t.permute({0, 2, 3, 1}).contiguous()});
  GridOptions o = with(GridMeasure::kCca, GridConv::kPool);
  Grid a = similarity_grid(conv, o);
  o.recipe.layout = ConvLayout::kNHWC;
  Grid b = similarity_grid(nhwc, o);
  EXPECT_ALLCLOSE(b.values, a.values, tol::kDecomp64);
}

TEST_F(GridTest, FoldEqualsConvFeaturesForEqualSizes) {
  auto conv = make_conv_layers({{{3, 3, 3}}, {{4, 3, 3}}}, 30, "c");
  for (GridMeasure m : {GridMeasure::kLinearCka, GridMeasure::kCca, GridMeasure::kPwcca}) {
    Grid g = similarity_grid(conv, with(m, GridConv::kFold));
    auto xy = conv_features(conv[0].second, conv[1].second);
    expect_cell(g, 0, 1, one_shot(m, xy.first, xy.second), tol::kDecomp64);
    EXPECT_EQ(g.examples, 30);  // examples before folding
  }
}

TEST_F(GridTest, FoldBringsLayersToTheLargestSize) {
  // h and w maxima come from different layers: the grid's target is 4 x 6.
  auto a = make_conv_layers({{{3, 4, 2}}, {{2, 2, 6}}}, 20, "a");
  auto b = make_conv_layers({{{4, 4, 6}}}, 20, "b");
  GridOptions o = with(GridMeasure::kCca, GridConv::kFold);
  o.recipe.upsample = ResizeMode::kBilinear;
  Grid g = similarity_grid(a, b, o);
  auto folded = [](const at::Tensor& t) {
    return fold_positions(resize_spatial(t, 4, 6, ResizeMode::kBilinear));
  };
  for (int64_t i = 0; i < 2; ++i) {
    expect_cell(g, i, 0,
                one_shot(GridMeasure::kCca, folded(a[i].second),
                         b[0].second.permute({0, 2, 3, 1}).reshape({-1, 4})),
                tol::kDecomp64);
  }
  EXPECT_EQ(g.options.at("resize"), "bilinear");
}

TEST_F(GridTest, FourierEqualsFourierCca) {
  auto conv = make_conv_layers({{{2, 4, 4}}, {{3, 4, 4}}}, 24, "c");
  Grid g = similarity_grid(conv, with(GridMeasure::kCca, GridConv::kFourier));
  expect_cell(g, 0, 1, fourier_cca(conv[0].second, conv[1].second).mean.item<double>(),
              tol::kDecomp64);
  expect_cell(g, 1, 0, fourier_cca(conv[1].second, conv[0].second).mean.item<double>(),
              tol::kDecomp64);
}

TEST_F(GridTest, FourierReusesLayersOfOneSizeAndFallsBackOtherwise) {
  auto conv = make_conv_layers({{{2, 4, 4}}, {{3, 4, 4}}, {{4, 4, 4}}}, 30, "c");
  conv[2].second.select(1, 1).fill_(0.25);  // an exactly constant channel is dropped
  GridOptions o = with(GridMeasure::kCca, GridConv::kFourier);
  o.recipe.layout = ConvLayout::kNHWC;
  NamedActivations nhwc;
  for (const auto& [n, t] : conv) nhwc.push_back({n, t.permute({0, 2, 3, 1})});
  Grid g = similarity_grid(nhwc, o);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      expect_cell(g, i, j, fourier_cca(conv[i].second, conv[j].second).mean.item<double>(),
                  tol::kDecomp64);
    }
  }
  // Different spatial sizes crop the frequency grid per pair.
  auto b = make_conv_layers({{{2, 6, 6}}, {{3, 4, 4}}}, 30, "b");
  Grid ab = similarity_grid(conv, b, with(GridMeasure::kCca, GridConv::kFourier));
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 2; ++j) {
      expect_cell(ab, i, j, fourier_cca(conv[i].second, b[j].second).mean.item<double>(),
                  tol::kDecomp64);
    }
  }
  // A layer with too few examples, and a 2-D layer: null cells with their reasons; the rest of
  // the grid is still there.
  auto few = make_conv_layers({{{8, 2, 2}}, {{2, 2, 2}}}, 9, "f");
  few.push_back({"fc", at::randn({9, 3}, at::kDouble)});
  Grid gf = similarity_grid(few, with(GridMeasure::kCca, GridConv::kFourier));
  EXPECT_TRUE(
      Undefined(gf, 0, 1, "layer \"f0\" must have at least C + 2 = 10 examples for Fourier CCA"));
  EXPECT_TRUE(Undefined(gf, 2, 1, "layer \"fc\" must be 4-D"));
  expect_cell(gf, 1, 1, fourier_cca(few[1].second, few[1].second).mean.item<double>(),
              tol::kDecomp64);
  EXPECT_EQ(gf.undefined.size(), 2u);
}

// ---- Streaming ---------------------------------------------------------------------------------

// Feeds rows [start, start + b) of every layer in batches of the sizes in `sizes` (cycled).
GridAccumulator stream(const NamedActivations& a, const NamedActivations& b, const GridOptions& o,
                       const std::vector<int64_t>& sizes) {
  std::vector<std::string> rows, cols;
  for (const auto& l : a) rows.push_back(l.first);
  for (const auto& l : b) cols.push_back(l.first);
  GridAccumulator acc(rows, cols, o);
  const int64_t n = a.front().second.size(0);
  size_t k = 0;
  for (int64_t start = 0; start < n; ++k) {
    const int64_t size = std::min(sizes[k % sizes.size()], n - start);
    NamedActivations ba, bb;
    // Batches given in reverse name order: update matches by name.
    for (auto it = a.rbegin(); it != a.rend(); ++it)
      ba.push_back({it->first, it->second.narrow(0, start, size)});
    for (const auto& l : b) bb.push_back({l.first, l.second.narrow(0, start, size)});
    acc.update(ba, bb);
    start += size;
  }
  return acc;
}

// float32 layers whose directions include float32 rounding (see CcaRoundingTest): the grid's
// per-layer factors use the same default rank rule as the pair calls, one-shot, streamed and
// Fourier, so every CCA-family diagonal cell is 1.
TEST_F(GridTest, Float32RoundingNoiseIsNotADirection) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor z = at::randn({600, 4}, f64);
  at::Tensor mix = at::randn({4, 4}, f64);
  at::Tensor x64 = at::cat({z, at::mm(z, mix)}, 1) + 100.0;
  at::Tensor z32 = z.to(at::kFloat);
  at::Tensor x32 = at::cat({z32, at::mm(z32, mix.to(at::kFloat))}, 1) + 100.0;
  at::Tensor y = at::mm(z, at::randn({4, 6}, f64)) + at::randn({600, 6}, f64);
  NamedActivations layers{{"x", x32}, {"y", y.to(at::kFloat)}};
  // x spans 4 directions: its cell with y is the mean of 4 correlations, as in float64 (a
  // rounding direction would add a fifth and sixth).
  const double xy = cca(x64, y).correlations.mean().item<double>();
  Grid g = similarity_grid(layers, with(GridMeasure::kCca));
  Grid s = stream(layers, {}, with(GridMeasure::kCca), {100, 250}).result();
  for (const Grid* grid : {&g, &s}) {
    expect_cell(*grid, 0, 0, 1.0, tol::kFloat32);
    expect_cell(*grid, 0, 1, xy, tol::kFloat32);
  }
  expect_cell(similarity_grid(layers, with(GridMeasure::kPwcca)), 0, 0, 1.0, tol::kFloat32);
  at::Tensor img = at::randn({300, 1, 8, 8}, f64);
  img = at::cat({img.narrow(2, 7, 1), img, img.narrow(2, 0, 1)}, 2);  // circular 3x3 conv:
  img = at::cat({img.narrow(3, 7, 1), img, img.narrow(3, 0, 1)}, 3);  // rank 1 per frequency
  at::Tensor a32 = at::conv2d(img.to(at::kFloat), at::randn({8, 1, 3, 3}, at::kFloat));
  Grid f = similarity_grid({{"conv", a32}}, with(GridMeasure::kCca, GridConv::kFourier));
  expect_cell(f, 0, 0, 1.0, tol::kFloat32);
}

// An ill-conditioned layer (see CcaConditioningTest): the grid's whitened data is refined as the
// pair calls are, so the diagonal is 1 and the cells equal the pair calls.
TEST_F(GridTest, IllConditionedLayerIsRefinedAgainstItsData) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::mm(at::randn({800, 4}, f64), at::randn({4, 4}, f64));
  x.select(1, 3).copy_(x.select(1, 0) + x.select(1, 1) + 1e-6 * at::randn({800}, f64));
  at::Tensor y = x.narrow(1, 1, 3) + at::randn({800, 3}, f64);
  for (GridMeasure m : {GridMeasure::kCca, GridMeasure::kSvcca}) {
    Grid g = similarity_grid({{"x", x}, {"y", y}}, with(m));
    expect_cell(g, 0, 0, 1.0, tol::kDecomp64);
    const double xy = m == GridMeasure::kCca ? cca(x, y).correlations.mean().item<double>()
                                             : svcca(x, y).score.item<double>();
    expect_cell(g, 0, 1, xy, tol::kDecomp64);
  }
}

class GridStreamTest : public GridMeasureTest {};

TEST_P(GridStreamTest, StreamedEqualsOneShot) {
  const GridMeasure m = GetParam();
  auto layers = make_layers({3, 6, 10}, 90, "l");
  GridAccumulator acc = stream(layers, {}, with(m), {17, 30, 8});
  EXPECT_EQ(acc.n(), 90);
  Grid s = acc.result();
  Grid g = similarity_grid(layers, with(m));
  EXPECT_ALLCLOSE(s.values, g.values, tol::kDecomp64);
  EXPECT_EQ(s.rows, g.rows);
  EXPECT_EQ(s.examples, 90);
  EXPECT_EQ(s.options, g.options);

  auto a = make_layers({4, 7}, 75, "a");
  auto b = make_layers({5}, 75, "b");
  Grid s2 = stream(a, b, with(m), {20, 11}).result();
  EXPECT_ALLCLOSE(s2.values, similarity_grid(a, b, with(m)).values, tol::kDecomp64);
}

INSTANTIATE_TEST_SUITE_P(Grid, GridStreamTest, ::testing::ValuesIn(kStreamable),
                         [](const ::testing::TestParamInfo<GridMeasure>& info) {
                           std::string name = to_string(info.param);  // gtest: [A-Za-z0-9_]
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// Debiased CKA streams through fourth-moment sums about the first batch's mean: features with
// large means that drift between batches must not cancel them away.
TEST_F(GridTest, StreamedDebiasedCkaWithLargeDriftingMeans) {
  auto layers = make_layers({3, 5, 8}, 96, "l");
  layers[0].second = layers[0].second + 1e4;
  layers[1].second = layers[1].second + at::linspace(-50.0, 50.0, 96, at::kDouble).unsqueeze(1);
  GridAccumulator acc = stream(layers, {}, with(GridMeasure::kDebiasedCka), {10, 41, 5});
  Grid g = similarity_grid(layers, with(GridMeasure::kDebiasedCka));
  EXPECT_ALLCLOSE(acc.result().values, g.values, tol::kDecomp64);
  // Not the biased estimate: the sums matter.
  Grid biased = similarity_grid(layers, with(GridMeasure::kLinearCka));
  EXPECT_GT((g.values - biased.values).abs().max().item<double>(), 1e-3);
  GridAccumulator few = stream(make_layers({2}, 3, "t"), {}, with(GridMeasure::kDebiasedCka), {3});
  EXPECT_TRUE(Undefined(few.result(), 0, 0, "at least 4 examples"));
}

TEST_F(GridTest, StreamedFoldAndPoolOfConvLayers) {
  auto conv = make_conv_layers({{{3, 2, 2}}, {{2, 4, 4}}}, 40, "c");
  for (GridConv c : {GridConv::kFold, GridConv::kPool, GridConv::kFlatten}) {
    GridOptions o = with(GridMeasure::kLinearCka, c);
    Grid s = stream(conv, {}, o, {9, 16}).result();
    EXPECT_ALLCLOSE(s.values, similarity_grid(conv, o).values, tol::kDecomp64) << to_string(c);
  }
}

TEST_F(GridTest, OneLayerAndFloat32Streams) {
  auto one = make_layers({5}, 40, "only", at::kFloat);
  Grid g = similarity_grid(one, with(GridMeasure::kSvcca));
  ASSERT_EQ(g.values.sizes(), (at::IntArrayRef{1, 1}));
  expect_cell(g, 0, 0, 1.0, tol::kFloat32);
  auto layers = make_layers({3, 6}, 64, "f", at::kFloat);
  Grid s = stream(layers, {}, with(GridMeasure::kCca), {10, 7}).result();
  Grid oneshot = similarity_grid(layers, with(GridMeasure::kCca));
  EXPECT_ALLCLOSE(s.values, oneshot.values, tol::kFloat32);
  // A rejected batch leaves the accumulator as it was.
  GridAccumulator acc({"f0", "f1"});
  acc.update(
      {{"f0", layers[0].second.narrow(0, 0, 30)}, {"f1", layers[1].second.narrow(0, 0, 30)}});
  EXPECT_THROWS_WITH(
      acc.update({{"f0", layers[0].second.narrow(0, 30, 34)}, {"f1", at::randn({34, 2})}}),
      "GridAccumulator::update: layer \"f1\" must have 6 features (after conv \"flatten\") as in "
      "earlier batches, but got 2");
  acc.update(
      {{"f0", layers[0].second.narrow(0, 30, 34)}, {"f1", layers[1].second.narrow(0, 30, 34)}});
  EXPECT_EQ(acc.n(), 64);
  EXPECT_ALLCLOSE(acc.result().values, similarity_grid(layers).values, tol::kFloat32);
}

// ---- Errors ------------------------------------------------------------------------------------

// ---- Wide layers: factors from the Gram side ---------------------------------------------------

// Where both sides apply (p near n), the Gram side gives the numbers of the covariance side.
TEST_F(GridTest, GramSideEqualsFeatureSide) {
  auto layers = make_layers({30, 45, 58}, 60, "l");
  for (GridMeasure m : {GridMeasure::kLinearCka, GridMeasure::kDebiasedCka, GridMeasure::kCca,
                        GridMeasure::kSvcca}) {
    GridOptions f = with(m), g = with(m);
    f.side = FactorSide::kFeatures;
    g.side = FactorSide::kGram;
    if (m == GridMeasure::kCca) {
      auto narrow = make_layers({10, 20, 30}, 60, "c");
      EXPECT_ALLCLOSE(similarity_grid(narrow, g).values, similarity_grid(narrow, f).values,
                      tol::kDecomp64)
          << to_string(m);
      continue;
    }
    EXPECT_ALLCLOSE(similarity_grid(layers, g).values, similarity_grid(layers, f).values,
                    tol::kDecomp64)
        << to_string(m);
  }
}

// Layers much wider than n (flattened conv layers) go to the Gram side by default; cells equal
// the one-shot calls, which take the same route, and the Gram form of linear CKA.
TEST_F(GridTest, WideLayersEqualPairCalls) {
  auto wide = make_conv_layers({{{8, 9, 9}}, {{16, 5, 5}}, {{4, 12, 12}}}, 24, "w");
  wide.push_back({"fc", at::randn({24, 10}, at::kDouble)});
  const Grid cka = similarity_grid(wide, with(GridMeasure::kLinearCka));
  const Grid deb = similarity_grid(wide, with(GridMeasure::kDebiasedCka));
  // SVCCA with 8 directions per layer: 8 + 8 <= n - 1 = 23 (more would force correlations).
  GridOptions svo = with(GridMeasure::kSvcca, GridConv::kFlatten);
  svo.svcca.dims = 8;
  SvccaOptions sv8;
  sv8.dims = 8;
  const Grid sv = similarity_grid(wide, svo);
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t j = 0; j < 4; ++j) {
      at::Tensor x = wide[i].second.reshape({24, -1}), y = wide[j].second.reshape({24, -1});
      LinearCkaOptions gram;
      gram.form = CkaForm::kGram;
      expect_cell(cka, i, j, linear_cka(x, y, gram).item<double>(), tol::kDecomp64);
      gram.debiased = true;
      expect_cell(deb, i, j, linear_cka(x, y, gram).item<double>(), tol::kDecomp64);
      expect_cell(sv, i, j, svcca(x, y, sv8).score.item<double>(), tol::kDecomp64);
    }
  }
  // The one-shot SVCCA of a wide layer equals that of its Gram proxy U S (same singular values,
  // same span), computed on the covariance side.
  at::Tensor x = wide[0].second.reshape({24, -1});
  at::Tensor xc = x - x.mean(0);
  auto svd = at::linalg_svd(xc, /*full_matrices=*/false);
  at::Tensor proxy = std::get<0>(svd) * std::get<1>(svd);
  at::Tensor y = wide[3].second;
  EXPECT_ALLCLOSE(svcca(x, y, sv8).score, svcca(proxy, y, sv8).score, tol::kDecomp64);
  SvccaOptions all;
  all.cca.allow_forced_correlations = true;
  EXPECT_ALLCLOSE(svcca(x, y, all).score, svcca(proxy, y, all).score, tol::kDecomp64);
  EXPECT_EQ(svcca(x, y, all).x_dims, svcca(proxy, y, all).x_dims);
}

// CKA's invariances hold in the wide form: orthogonal maps, isotropic scaling (also at extreme
// scales, which would overflow or underflow the products), translation.
TEST_F(GridTest, WideCkaInvariances) {
  auto o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor x = at::randn({20, 300}, o);
  at::Tensor y = at::mm(x, at::randn({300, 200}, o)) + 0.5 * at::randn({20, 200}, o);
  at::Tensor q = std::get<0>(at::linalg_qr(at::randn({300, 300}, o)));
  const double base = linear_cka(x, y).item<double>();
  for (const at::Tensor& x2 : {at::mm(x, q), x * 1e-150, x * 1e150, x + 1e3, x * 3.0 - 7.0}) {
    Grid g = similarity_grid({{"x", x2}}, {{"y", y}});
    expect_cell(g, 0, 0, base, tol::kDecomp64);
    EXPECT_ALLCLOSE(linear_cka(x2, y), at::scalar_tensor(base, o), tol::kDecomp64);
  }
  Grid self = similarity_grid({{"x", x}, {"xq", at::mm(x, q) * 1e100}});
  expect_cell(self, 0, 1, 1.0, tol::kDecomp64);
}

// The builder takes layers one at a time (in any order, model B's too) and keeps factors of
// O(n * min(n, p)) per layer, not the activations.
TEST_F(GridTest, BuilderEqualsSimilarityGridAndKeepsOnlyFactors) {
  auto a = make_conv_layers({{{32, 20, 20}}, {{8, 6, 6}}}, 16, "a");
  auto b = make_layers({5, 9}, 16, "b");
  for (GridMeasure m : kAllMeasures) {
    if (m == GridMeasure::kCca || m == GridMeasure::kPwcca) continue;  // p > n
    GridBuilder builder({"a0", "a1"}, {"b0", "b1"}, with(m));
    builder.add("b1", b[1].second, /*col=*/true);
    builder.add("a1", a[1].second);
    builder.add("a0", a[0].second);
    EXPECT_THROWS_WITH(builder.result(), "layer \"b0\" of b was not");
    builder.add("b0", b[0].second, true);
    EXPECT_ALLCLOSE(builder.result().values, similarity_grid(a, b, with(m)).values, tol::kDecomp64)
        << to_string(m);
    // a0 has 12800 features: its factor is at most n x n (plus n x p1 for narrow layers).
    EXPECT_LE(builder.factor_bytes(), 4 * 16 * 16 * 8 + 16 * 9 * 8 * 2) << to_string(m);
  }
  GridBuilder g({"x", "y"});
  g.add("x", b[0].second);
  g.add_undefined("y", "output is not one row per example (shape [3])");
  Grid r = g.result();
  expect_cell(r, 0, 0, 1.0, tol::kDecomp64);
  EXPECT_TRUE(Undefined(r, 0, 1, "not one row per example"));
  EXPECT_TRUE(Undefined(r, 1, 1, "not one row per example"));
  EXPECT_THROWS_WITH(g.add("x", b[0].second), "must be added once");
  EXPECT_THROWS_WITH(g.add("z", b[0].second), "\"z\" is not among them");
  EXPECT_THROWS_WITH(GridBuilder({"x"}, {}, with(GridMeasure::kCca, GridConv::kFourier)),
                     "Fourier CCA needs every layer at once");
}

// A grid never fails for one layer: constant, all-zero (a zero-initialised head) and too-narrow
// layers give null cells with one reason each, listed once; the other cells are exact.
TEST_F(GridTest, PartialGridsListEachReasonOnce) {
  auto layers = make_layers({3, 5, 60, 4}, 40, "l");
  layers[1].second.zero_();
  Grid g = similarity_grid(layers, with(GridMeasure::kCca));
  ASSERT_EQ(g.undefined.size(), 2u);
  EXPECT_NE(g.undefined[0].reason.find("layer \"l1\""), std::string::npos);
  EXPECT_EQ(g.undefined[0].cells.size(), 7u);  // row and column of l1
  EXPECT_NE(g.undefined[1].reason.find("p + 2 = 62"), std::string::npos);
  EXPECT_EQ(g.undefined[1].cells.size(), 5u);  // row and column of l2 but (1, 2), (2, 1)
  expect_cell(g, 0, 3, one_shot(GridMeasure::kCca, layers[0].second, layers[3].second),
              tol::kDecomp64);
  EXPECT_EQ(at::isnan(g.values).sum().item<int64_t>(), 12);
}

// [n, t, d] layers (transformer tokens) pool over tokens; "cls" keeps the first token.
TEST_F(GridTest, PoolAveragesTokens) {
  auto o = at::TensorOptions().dtype(at::kDouble);
  at::Tensor tokens = at::randn({30, 7, 5}, o);
  at::Tensor fc = at::randn({30, 4}, o);
  NamedActivations layers = {{"t", tokens}, {"fc", fc}};
  Grid pool = similarity_grid(layers, with(GridMeasure::kCca, GridConv::kPool));
  expect_cell(pool, 0, 1, one_shot(GridMeasure::kCca, tokens.mean(1), fc), tol::kDecomp64);
  Grid cls = similarity_grid(layers, with(GridMeasure::kCca, GridConv::kCls));
  expect_cell(cls, 0, 1, one_shot(GridMeasure::kCca, tokens.select(1, 0), fc), tol::kDecomp64);
  Grid autod = similarity_grid(layers, with(GridMeasure::kSvcca));
  expect_cell(autod, 0, 1, one_shot(GridMeasure::kSvcca, tokens.mean(1), fc), tol::kDecomp64);
}

// minibatch-cka streams per-batch HSIC_1 sums: each cell equals MinibatchCkaAccumulator over the
// same batches, and one batch of everything is debiased CKA. Wide layers stream too.
TEST_F(GridTest, MinibatchCkaStreams) {
  auto layers = make_conv_layers({{{6, 8, 8}}, {{3, 4, 4}}}, 40, "m");
  layers.push_back({"fc", at::randn({40, 3}, at::kDouble)});
  GridAccumulator acc = stream(layers, {}, with(GridMeasure::kMinibatchCka), {10});
  Grid g = acc.result();
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      MinibatchCkaAccumulator ref;
      for (int64_t s = 0; s < 40; s += 10) {
        ref.update(layers[i].second.narrow(0, s, 10).reshape({10, -1}),
                   layers[j].second.narrow(0, s, 10).reshape({10, -1}));
      }
      expect_cell(g, i, j, ref.cka().item<double>(), tol::kDecomp64);
    }
  }
  EXPECT_ALLCLOSE(similarity_grid(layers, with(GridMeasure::kMinibatchCka)).values,
                  similarity_grid(layers, with(GridMeasure::kDebiasedCka)).values, tol::kDecomp64);
  GridAccumulator small({"fc"}, {}, with(GridMeasure::kMinibatchCka));
  EXPECT_THROWS_WITH(small.update({{"fc", at::randn({3, 2}, at::kDouble)}}),
                     "at least 4 examples for minibatch-cka");
}

// Exact streaming keeps p x p moments: a layer too wide for the budget is refused at the first
// batch, naming it, its width and the alternatives; nothing is allocated.
TEST_F(GridTest, StreamingRefusesLayersTooWideForTheBudget) {
  GridOptions o = with(GridMeasure::kLinearCka);
  o.memory_bytes = 1 << 20;
  GridAccumulator acc({"narrow", "wide"}, {}, o);
  auto d = at::TensorOptions().dtype(at::kDouble);
  EXPECT_THROWS_WITH(
      acc.update({{"narrow", at::randn({8, 4}, d)}, {"wide", at::randn({8, 64, 8, 8}, d)}}),
      "layer \"wide\" has 4096 features");
  EXPECT_THROWS_WITH(
      acc.update({{"narrow", at::randn({8, 4}, d)}, {"wide", at::randn({8, 64, 8, 8}, d)}}),
      "minibatch-cka");
  EXPECT_EQ(acc.n(), 0);
  acc.update({{"narrow", at::randn({8, 4}, d)}, {"wide", at::randn({8, 64, 1, 1}, d)}});
  EXPECT_EQ(acc.n(), 8);
}

TEST_F(GridTest, TwoModelsWithDifferentExamplesAreRejected) {
  auto a = make_layers({3}, 50, "a");
  auto b = make_layers({3}, 40, "b");
  EXPECT_THROWS_WITH_TYPE(similarity_grid(a, b), c10::ValueError,
                          "similarity_grid: a and b must have the same number of examples (dim 0), "
                          "but got layer \"a0\" of a with shape [50, 3] and layer \"b0\" of b with "
                          "shape [40, 3]");
  auto one = make_layers({3, 4}, 50, "l");
  one[1].second = one[1].second.narrow(0, 0, 45);
  EXPECT_THROWS_WITH(similarity_grid(one), "layers must have the same number of examples");
}

TEST_F(GridTest, BadLayersAreRejected) {
  EXPECT_THROWS_WITH(similarity_grid(NamedActivations{}), "layers must hold at least one layer");
  auto twice = make_layers({3, 3}, 20, "l");
  twice[1].first = "l0";
  EXPECT_THROWS_WITH(similarity_grid(twice), "layer names must be unique, but \"l0\" is repeated");
  auto vec = make_layers({3}, 20, "l");
  vec.push_back({"v", at::randn({20}, at::kDouble)});
  EXPECT_THROWS_WITH(similarity_grid(vec),
                     "layer \"v\" must be a non-empty tensor with at least 2 dims");
  // A layer with a NaN: its row and column are undefined with the reason, the rest is computed.
  auto nan = make_layers({3, 3}, 20, "l");
  nan[1].second[0][0] = std::nan("");
  Grid gn = similarity_grid(nan);
  EXPECT_TRUE(Undefined(gn, 1, 0, "layer \"l1\" must contain only finite values, but got 1 NaN"));
  EXPECT_TRUE(Undefined(gn, 0, 1, "layer \"l1\" must contain only finite values"));
  EXPECT_TRUE(Undefined(gn, 1, 1, "layer \"l1\" must contain only finite values"));
  expect_cell(gn, 0, 0, 1.0, tol::kDecomp64);
  ASSERT_EQ(gn.undefined.size(), 1u);
  EXPECT_EQ(gn.undefined[0].cells.size(), 3u);
  auto ints = make_layers({3}, 20, "l");
  ints.push_back({"i", at::ones({20, 3}, at::kLong)});
  EXPECT_THROWS_WITH_TYPE(similarity_grid(ints), c10::TypeError, "layer \"i\"");
}

TEST_F(GridTest, OptionsThatDoNotApplyAreRejected) {
  auto layers = make_layers({3, 4}, 30, "l");
  EXPECT_THROWS_WITH(similarity_grid(layers, with(GridMeasure::kLinearCka, GridConv::kFourier)),
                     "conv \"fourier\" must go with measure \"cca\"");
  Grid fold2d = similarity_grid(layers, with(GridMeasure::kCca, GridConv::kFold));
  EXPECT_TRUE(Undefined(fold2d, 0, 1, "layer \"l0\" must be 4-D"));
  EXPECT_TRUE(Undefined(fold2d, 1, 1, "layer \"l1\" must be 4-D"));
  GridOptions o = with(GridMeasure::kSvcca);
  o.svcca.fraction = 1.5;
  EXPECT_THROWS_WITH(similarity_grid(layers, o), "fraction");
  EXPECT_THROWS_WITH_TYPE(parse_grid_measure("f", "measure", "ckaa"), c10::ValueError,
                          "f: measure must be one of \"cka\", \"debiased-cka\", \"rbf-cka\", "
                          "\"cca\", \"svcca\", \"pwcca\", \"minibatch-cka\", but got \"ckaa\"");
  EXPECT_THROWS_WITH(parse_grid_conv("f", "conv", "x"), "f: conv must be one of \"auto\"");
  EXPECT_EQ(parse_grid_measure("f", "m", "debiased-cka"), GridMeasure::kDebiasedCka);
  EXPECT_EQ(parse_grid_conv("f", "c", "fold"), GridConv::kFold);
}

TEST_F(GridTest, CellsThatCannotBeComputedNameTheLayer) {
  auto layers = make_layers({3, 40}, 30, "l");
  Grid c = similarity_grid(layers, with(GridMeasure::kCca));
  EXPECT_TRUE(Undefined(
      c, 0, 1, "similarity_grid: layer \"l1\" must have at least p + 2 = 42 examples for cca"));
  EXPECT_TRUE(Undefined(c, 1, 0, "p + 2 = 42"));
  EXPECT_TRUE(Undefined(c, 1, 1, "p + 2 = 42"));
  expect_cell(c, 0, 0, 1.0, tol::kDecomp64);
  // svcca copes with p > n.
  Grid g = similarity_grid(layers, with(GridMeasure::kSvcca));
  expect_cell(g, 0, 1, one_shot(GridMeasure::kSvcca, layers[0].second, layers[1].second),
              tol::kDecomp64);
  auto constant = make_layers({3, 4}, 30, "l");
  constant[1].second.fill_(2.0);
  for (GridMeasure m : kAllMeasures) {
    Grid gc = similarity_grid(constant, with(m));
    EXPECT_TRUE(Undefined(gc, 1, 0, "layer \"l1\" must have at least one non-constant feature"))
        << to_string(m);
    EXPECT_TRUE(Undefined(gc, 1, 1, "layer \"l1\" must have at least one non-constant feature"))
        << to_string(m);
    expect_cell(gc, 0, 0, one_shot(m, constant[0].second, constant[0].second), tol::kDecomp64);
  }
}

TEST_F(GridTest, AccumulatorRejectsBadUse) {
  EXPECT_THROWS_WITH(GridAccumulator({"a"}, {}, with(GridMeasure::kRbfCka)),
                     "GridAccumulator: measure must be one that streams over batches");
  EXPECT_THROWS_WITH(GridAccumulator({"a", "a"}), "rows must be unique");
  EXPECT_THROWS_WITH(GridAccumulator({}), "rows must name at least one layer");

  GridAccumulator acc({"x", "y"});
  EXPECT_THROWS_WITH(acc.result(), "must have seen at least one batch");
  auto o = at::TensorOptions().dtype(at::kDouble);
  EXPECT_THROWS_WITH(acc.update({{"x", at::randn({5, 2}, o)}}), "\"y\" is missing");
  EXPECT_THROWS_WITH(acc.update({{"x", at::randn({5, 2}, o)}, {"y", at::randn({4, 2}, o)}}),
                     "layers must have the same number of examples");
  EXPECT_THROWS_WITH(acc.update({{"x", at::randn({5, 2}, o)}, {"y", at::randn({5, 2}, o)}},
                                {{"z", at::randn({5, 2}, o)}}),
                     "b must be empty for a one-model grid");
  EXPECT_EQ(acc.n(), 0);

  GridAccumulator ab({"x"}, {"y"});
  EXPECT_THROWS_WITH(ab.update({{"x", at::randn({5, 2}, o)}}, {{"y", at::randn({6, 2}, o)}}),
                     "a and b must have the same number of examples");
}

}  // namespace
}  // namespace svcca
