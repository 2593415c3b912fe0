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
    case GridMeasure::kDebiasedCka: {
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
  auto few = make_conv_layers({{{8, 2, 2}}}, 9, "f");
  EXPECT_THROWS_WITH(similarity_grid(few, with(GridMeasure::kCca, GridConv::kFourier)),
                     "layer \"f0\" must have at least C + 2 = 10 examples for Fourier CCA");
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
  EXPECT_THROWS_WITH(few.result(), "at least 4 examples");
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
  auto nan = make_layers({3, 3}, 20, "l");
  nan[1].second[0][0] = std::nan("");
  EXPECT_THROWS_WITH(similarity_grid(nan), "layer \"l1\" must contain only finite values");
  auto ints = make_layers({3}, 20, "l");
  ints.push_back({"i", at::ones({20, 3}, at::kLong)});
  EXPECT_THROWS_WITH_TYPE(similarity_grid(ints), c10::TypeError, "layer \"i\"");
}

TEST_F(GridTest, OptionsThatDoNotApplyAreRejected) {
  auto layers = make_layers({3, 4}, 30, "l");
  EXPECT_THROWS_WITH(similarity_grid(layers, with(GridMeasure::kLinearCka, GridConv::kFourier)),
                     "conv \"fourier\" must go with measure \"cca\"");
  EXPECT_THROWS_WITH(similarity_grid(layers, with(GridMeasure::kCca, GridConv::kFold)),
                     "layer \"l0\" must be 4-D");
  GridOptions o = with(GridMeasure::kSvcca);
  o.svcca.fraction = 1.5;
  EXPECT_THROWS_WITH(similarity_grid(layers, o), "fraction");
  EXPECT_THROWS_WITH_TYPE(parse_grid_measure("f", "measure", "ckaa"), c10::ValueError,
                          "f: measure must be one of \"cka\", \"debiased-cka\", \"rbf-cka\", "
                          "\"cca\", \"svcca\", \"pwcca\", but got \"ckaa\"");
  EXPECT_THROWS_WITH(parse_grid_conv("f", "conv", "x"), "f: conv must be one of \"auto\"");
  EXPECT_EQ(parse_grid_measure("f", "m", "debiased-cka"), GridMeasure::kDebiasedCka);
  EXPECT_EQ(parse_grid_conv("f", "c", "fold"), GridConv::kFold);
}

TEST_F(GridTest, CellsThatCannotBeComputedNameTheLayer) {
  auto layers = make_layers({3, 40}, 30, "l");
  EXPECT_THROWS_WITH(
      similarity_grid(layers, with(GridMeasure::kCca)),
      "similarity_grid: layer \"l1\" must have at least p + 2 = 42 examples for cca");
  // svcca copes with p > n.
  Grid g = similarity_grid(layers, with(GridMeasure::kSvcca));
  expect_cell(g, 0, 1, one_shot(GridMeasure::kSvcca, layers[0].second, layers[1].second),
              tol::kDecomp64);
  auto constant = make_layers({3, 4}, 30, "l");
  constant[1].second.fill_(2.0);
  EXPECT_THROWS_WITH(similarity_grid(constant),
                     "layer \"l1\" must have at least one non-constant feature");
  EXPECT_THROWS_WITH(similarity_grid(constant, with(GridMeasure::kCca)),
                     "layer \"l1\" must have at least one non-constant feature");
}

TEST_F(GridTest, AccumulatorRejectsBadUse) {
  EXPECT_THROWS_WITH(GridAccumulator({"a"}, {}, with(GridMeasure::kRbfCka)),
                     "GridAccumulator: measure must be one that streams exactly");
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
