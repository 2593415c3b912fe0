// Tests of grid rendering: JSON round trip (non-finite -> null -> NaN), CSV quoting and digits, SVG
// structure (escaped names, one rect per cell, parses as XML), PNG decoded with libspng (size and
// pixel colours, text in the margins), the PNG font's glyphs, terminal heatmap, and atomic writes
// that leave nothing behind on failure. With SVCCA_PNG_PREVIEW=<path> set, PngLabelsLongNames
// also writes its picture there, to look at (SVCCA_SVG_PREVIEW: a 4 x 4 SVG with two reasons;
// SVCCA_PNG_PREVIEW_LARGE: the 450 x 450 PNG, and the SVG at <path>.svg).
#include "svcca/report/report.h"

#include <ATen/ATen.h>
#include <spng.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "support/support.h"
#include "svcca/report/font.h"
#include "svcca/report/heatmap.h"

namespace svcca {
namespace {

using testing::AllClose;
namespace tol = testing::tol;
namespace fs = std::filesystem;

Grid small_grid() {
  Grid g;
  g.rows = {"conv1", "layer<2> & \"x\""};
  g.cols = {"a,b", "fc", "out"};
  g.values = at::tensor({0.0, 0.5, 1.0, 0.25, std::nan(""), 0.123456789012345678}, at::kDouble)
                 .reshape({2, 3});
  g.measure = "cka";
  g.row_label = "model A layer";
  g.col_label = "model B layer";
  g.examples = 1234;
  g.options = {{"conv", "flatten"}, {"precision", "float64"}};
  g.undefined = {{"layer \"fc\" is constant on the examples", {{1, 1}}}};
  return g;
}

std::string temp_dir(const std::string& name) {
  return ::testing::TempDir() + "svcca_report_" + std::to_string(::getpid()) + "_" + name;
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + 1)) ++n;
  return n;
}

// The part of `s` from the first `begin` to the next `end` after it ("" when absent).
std::string section(const std::string& s, const std::string& begin, const std::string& end) {
  const size_t a = s.find(begin);
  if (a == std::string::npos) return "";
  const size_t b = s.find(end, a + begin.size());
  return s.substr(a, b == std::string::npos ? std::string::npos : b + end.size() - a);
}

TEST(Report, JsonRoundTrip) {
  Grid g = small_grid();
  nlohmann::json j = grid_to_json(g);
  EXPECT_TRUE(j["values"][1][1].is_null());
  EXPECT_EQ(j["values"][0][1].get<double>(), 0.5);
  EXPECT_EQ(j["versions"]["svcca"], "0.1.0");
  EXPECT_EQ(j["versions"]["torch"].get<std::string>().rfind("1.13", 0), 0u);
  // Through text, as a file would be.
  Grid back = grid_from_json(nlohmann::json::parse(j.dump()));
  EXPECT_EQ(back.rows, g.rows);
  EXPECT_EQ(back.cols, g.cols);
  EXPECT_EQ(back.measure, g.measure);
  EXPECT_EQ(back.row_label, g.row_label);
  EXPECT_EQ(back.col_label, g.col_label);
  EXPECT_EQ(back.examples, g.examples);
  EXPECT_EQ(back.options, g.options);
  EXPECT_TRUE(std::isnan(back.values[1][1].item<double>()));
  // Exact: nlohmann writes doubles with round-trip precision.
  at::Tensor finite = at::isfinite(g.values);
  EXPECT_TRUE(at::equal(back.values.masked_select(finite), g.values.masked_select(finite)));
  // The reasons of the NaN cells, always present.
  ASSERT_EQ(back.undefined.size(), 1u);
  EXPECT_EQ(back.undefined[0].reason, "layer \"fc\" is constant on the examples");
  EXPECT_EQ(back.undefined[0].cells, (std::vector<std::pair<int64_t, int64_t>>{{1, 1}}));
  EXPECT_EQ(j["undefined"][0]["cells"], nlohmann::json::parse("[[1, 1]]"));
  Grid defined = small_grid();
  defined.undefined.clear();
  EXPECT_EQ(grid_to_json(defined)["undefined"], nlohmann::json::array());
  // Infinity is not JSON either.
  g.values[0][0] = INFINITY;
  EXPECT_TRUE(grid_to_json(g)["values"][0][0].is_null());
}

TEST(Report, JsonWithoutUndefinedReadsAsOlderFiles) {
  Grid g = small_grid();
  g.undefined.push_back({"second cause", {{0, 2}, {1, 0}}});
  nlohmann::json j = grid_to_json(g);
  Grid back = grid_from_json(j);
  ASSERT_EQ(back.undefined.size(), 2u);
  EXPECT_EQ(back.undefined[1].reason, "second cause");
  EXPECT_EQ(back.undefined[1].cells, (std::vector<std::pair<int64_t, int64_t>>{{0, 2}, {1, 0}}));
  j.erase("undefined");
  back = grid_from_json(j);
  EXPECT_TRUE(back.undefined.empty());
  EXPECT_TRUE(std::isnan(back.values[1][1].item<double>()));
  // Malformed entries name the field and the entry.
  nlohmann::json bad = grid_to_json(small_grid());
  bad["undefined"] = "x";
  EXPECT_THROWS_WITH_TYPE(grid_from_json(bad), c10::ValueError,
                          "field \"undefined\" must be an array");
  bad["undefined"] = nlohmann::json::parse(R"([{"reason": 3, "cells": []}])");
  EXPECT_THROWS_WITH(grid_from_json(bad), "but entry 0 is {\"cells\":[],\"reason\":3}");
  bad["undefined"] = nlohmann::json::parse(R"([{"reason": "r", "cells": [[1, 3]]}])");
  EXPECT_THROWS_WITH(grid_from_json(bad),
                     "must hold cells [row, col] inside [2, 3], but entry 0 has the cell [1,3]");
  bad["undefined"] = nlohmann::json::parse(R"([{"reason": "r", "cells": [[1]]}])");
  EXPECT_THROWS_WITH(grid_from_json(bad), "has the cell [1]");
}

TEST(Report, JsonErrorsNameTheField) {
  nlohmann::json j = grid_to_json(small_grid());
  auto without = [&](const char* key) {
    nlohmann::json k = j;
    k.erase(key);
    return k;
  };
  EXPECT_THROWS_WITH_TYPE(grid_from_json(without("values")), c10::ValueError,
                          "grid_from_json: json must have the field \"values\", but it is missing");
  EXPECT_THROWS_WITH(grid_from_json(without("measure")), "\"measure\"");
  nlohmann::json bad = j;
  bad["values"][1] = {1.0, 2.0};
  EXPECT_THROWS_WITH(grid_from_json(bad), "must hold rows of 3 entries");
  bad = j;
  bad["values"][0][2] = "x";
  EXPECT_THROWS_WITH(grid_from_json(bad), "entry [0][2] is \"x\"");
  bad = j;
  bad["rows"] = {"only one"};
  EXPECT_THROWS_WITH(grid_from_json(bad), "must be an array of 1 rows");
  EXPECT_THROWS_WITH(grid_from_json(nlohmann::json::array()), "json must be an object");
}

TEST(Report, CsvQuotesNamesAndKeepsDigits) {
  const std::string csv = grid_to_csv(small_grid());
  // RFC 4180: every record ends with CRLF, and there is no bare LF.
  EXPECT_EQ(count(csv, "\r\n"), 3u);
  EXPECT_EQ(count(csv, "\n"), 3u);
  std::istringstream in(csv);
  std::string header, row0, row1, extra;
  std::getline(in, header);
  std::getline(in, row0);
  std::getline(in, row1);
  EXPECT_FALSE(std::getline(in, extra));
  EXPECT_EQ(header, "model A layer\\model B layer,\"a,b\",fc,out\r");
  EXPECT_EQ(row0, "conv1,0,0.5,1\r");
  // The NaN cell is an empty field between its neighbours.
  EXPECT_EQ(row1.rfind("\"layer<2> & \"\"x\"\"\",0.25,,", 0), 0u) << row1;
  EXPECT_EQ(row1.find("nan"), std::string::npos);
  const double last = std::strtod(row1.substr(row1.rfind(',') + 1).c_str(), nullptr);
  EXPECT_EQ(last, 0.123456789012345678);  // 17 significant digits read back exactly
  // A NaN in the last column leaves a trailing empty field.
  Grid g = small_grid();
  g.values[0][2] = std::nan("");
  EXPECT_NE(grid_to_csv(g).find("\r\nconv1,0,0.5,\r\n"), std::string::npos) << grid_to_csv(g);
}

TEST(Report, SvgHasEveryCellEscapedNamesAndAxes) {
  Grid g = small_grid();
  const std::string svg = heatmap_svg(g);
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_EQ(count(section(svg, "<g id=\"cells\">", "</g>"), "<rect x="), 6u);
  EXPECT_EQ(count(section(svg, "<g id=\"colorbar-group\"", "</g>"), "<rect x="), 1u);
  EXPECT_NE(svg.find("layer&lt;2&gt; &amp; &quot;x&quot;"), std::string::npos);
  EXPECT_EQ(svg.find("layer<2>"), std::string::npos);
  EXPECT_NE(svg.find("cka (1234 examples)"), std::string::npos);
  EXPECT_NE(svg.find(">model A layer</text>"), std::string::npos);
  EXPECT_NE(svg.find(">model B layer</text>"), std::string::npos);
  EXPECT_NE(svg.find("rotate(-90)"), std::string::npos);
  EXPECT_NE(svg.find("linearGradient"), std::string::npos);
  EXPECT_NE(svg.find(">1.00</text>"), std::string::npos);  // top tick of the colour bar
  HeatmapOptions o;
  o.title = "my <title>";
  EXPECT_NE(heatmap_svg(g, o).find("my &lt;title&gt;"), std::string::npos);
  o.vmin = 1.0;
  EXPECT_THROWS_WITH(heatmap_svg(g, o), "vmin < vmax");
}

TEST(Report, SvgParsesAsXml) {
  const char* python = "/usr/bin/python3";
  if (::access(python, X_OK) != 0) GTEST_SKIP() << "no " << python << " to parse the SVG with";
  const std::string dir = temp_dir("xml");
  fs::create_directories(dir);
  Grid g = small_grid();
  g.rows.push_back(std::string("ctrl\x01") + "char");
  g.values = at::cat({g.values, at::zeros({1, 3}, at::kDouble)});
  const std::string path = dir + "/grid.svg";
  write_file_atomic(path, heatmap_svg(g));
  const std::string cmd = std::string(python) +
                          " -c \"import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1])"
                          ".getroot(); sys.exit(0 if r.tag.endswith('svg') else 3)\" " +
                          path;
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  fs::remove_all(dir);
}

// Decodes PNG bytes with libspng to RGB8.
std::vector<uint8_t> decode_png(const std::vector<uint8_t>& png, uint32_t* width,
                                uint32_t* height) {
  spng_ctx* ctx = spng_ctx_new(0);
  EXPECT_EQ(spng_set_png_buffer(ctx, png.data(), png.size()), 0);
  spng_ihdr ihdr{};
  EXPECT_EQ(spng_get_ihdr(ctx, &ihdr), 0);
  EXPECT_EQ(ihdr.bit_depth, 8);
  EXPECT_EQ(ihdr.color_type, SPNG_COLOR_TYPE_TRUECOLOR);
  size_t size = 0;
  EXPECT_EQ(spng_decoded_image_size(ctx, SPNG_FMT_RGB8, &size), 0);
  std::vector<uint8_t> out(size);
  EXPECT_EQ(spng_decode_image(ctx, out.data(), out.size(), SPNG_FMT_RGB8, 0), 0);
  spng_ctx_free(ctx);
  *width = ihdr.width;
  *height = ihdr.height;
  return out;
}

TEST(Report, PngDecodesToTheLayoutAndColours) {
  Grid g = small_grid();
  int64_t w = 0, h = 0;
  auto png = heatmap_png(g, {}, &w, &h);
  uint32_t dw = 0, dh = 0;
  auto px = decode_png(png, &dw, &dh);
  auto l = detail::png_layout(g, {});
  EXPECT_EQ(w, l.width);
  EXPECT_EQ(h, l.height);
  EXPECT_EQ(static_cast<int64_t>(dw), w);
  EXPECT_EQ(static_cast<int64_t>(dh), h);
  ASSERT_EQ(px.size(), static_cast<size_t>(w * h * 3));
  EXPECT_GE(l.cell_w, 4);
  EXPECT_EQ(l.cell_w, l.cell_h);
  auto at_px = [&](int64_t x, int64_t y) {
    const uint8_t* q = &px[static_cast<size_t>((y * w + x) * 3)];
    return std::vector<int>{q[0], q[1], q[2]};
  };
  auto rgb = [](detail::Rgb c) { return std::vector<int>{c.r, c.g, c.b}; };
  auto center = [&](int64_t i, int64_t j) {
    return at_px(l.grid_x + j * l.cell_w + l.cell_w / 2, l.grid_y + i * l.cell_h + l.cell_h / 2);
  };
  EXPECT_EQ(center(0, 0), rgb(detail::colormap(0.0)));
  EXPECT_EQ(center(0, 2), rgb(detail::colormap(1.0)));
  EXPECT_EQ(center(1, 0), rgb(detail::colormap(0.25)));
  // The NaN cell: grey, with the cross through its centre.
  EXPECT_EQ(center(1, 1), rgb(detail::kMarkColor));
  EXPECT_EQ(at_px(l.grid_x + l.cell_w + 1, l.grid_y + l.cell_h + l.cell_h / 2),
            rgb(detail::kMissingColor));
  EXPECT_EQ(at_px(0, 0), (std::vector<int>{255, 255, 255}));           // margin
  EXPECT_EQ(at_px(l.bar_x + 1, l.bar_y), rgb(detail::colormap(1.0)));  // bar: vmax on top
  EXPECT_EQ(at_px(l.bar_x + 1, l.bar_y + l.bar_h - 1), rgb(detail::colormap(0.0)));
  // Values clamp into [vmin, vmax].
  HeatmapOptions o;
  o.vmin = 0.5;
  o.vmax = 0.75;
  px = decode_png(heatmap_png(g, o, &w, &h), &dw, &dh);
  l = detail::png_layout(g, o);
  ASSERT_EQ(static_cast<int64_t>(dw), l.width);
  ASSERT_EQ(static_cast<int64_t>(dh), l.height);
  EXPECT_EQ(center(0, 0), rgb(detail::colormap(0.0)));
  EXPECT_EQ(center(0, 1), rgb(detail::colormap(0.0)));
  EXPECT_EQ(center(0, 2), rgb(detail::colormap(1.0)));
}

// An n_rows x n_cols grid of zeros with names "<prefix>0", "<prefix>1", ...
Grid named_grid(int64_t n_rows, int64_t n_cols, const std::string& prefix = "layer") {
  Grid g;
  for (int64_t i = 0; i < n_rows; ++i) g.rows.push_back(prefix + std::to_string(i));
  for (int64_t j = 0; j < n_cols; ++j) g.cols.push_back(prefix + std::to_string(j));
  g.values = at::zeros({n_rows, n_cols}, at::kDouble);
  g.measure = "cka";
  g.row_label = "rows";
  g.col_label = "cols";
  return g;
}

TEST(Report, PngCellsStayVisible) {
  EXPECT_EQ(detail::png_layout(named_grid(1, 1), {}).cell_w, 48);  // a 1 x 1 grid is not a dot
  EXPECT_EQ(detail::png_layout(named_grid(1, 1), {}).cell_h, 48);
  EXPECT_EQ(detail::png_layout(named_grid(500, 3), {}).cell_h, 4);
  EXPECT_EQ(detail::png_layout(named_grid(500, 3), {}).cell_w, 48);  // 3 columns: widened
  EXPECT_GE(detail::png_layout(named_grid(1, 1), {}).height, 96);
  // 4 px cells cannot hold 8 px names on every row: every other one is drawn.
  EXPECT_EQ(detail::png_layout(named_grid(500, 3), {}).row_stride, 2);
  EXPECT_EQ(detail::png_layout(named_grid(500, 3), {}).col_stride, 1);
  EXPECT_EQ(detail::png_layout(named_grid(2, 3), {}).row_stride, 1);
  // Past 600 layers cells shrink below 4 px so that the grid stays within kMaxGridSide.
  const auto big = detail::png_layout(named_grid(1200, 1200), {});
  EXPECT_EQ(big.cell_w, 2);
  EXPECT_LE(big.cell_h * 1200, static_cast<int64_t>(detail::kMaxGridSide));
}

// Black pixels of an RGB8 image in [x0, x1) x [y0, y1).
int64_t dark_pixels(const std::vector<uint8_t>& px, int64_t width, int64_t x0, int64_t y0,
                    int64_t x1, int64_t y1) {
  int64_t n = 0;
  for (int64_t y = y0; y < y1; ++y) {
    for (int64_t x = x0; x < x1; ++x) {
      const uint8_t* q = &px[static_cast<size_t>((y * width + x) * 3)];
      n += q[0] == 0 && q[1] == 0 && q[2] == 0;
    }
  }
  return n;
}

TEST(Report, PngHasTextInTheMargins) {
  Grid g = small_grid();
  const auto l = detail::png_layout(g, {});
  uint32_t w = 0, h = 0;
  const auto px = decode_png(heatmap_png(g, {}, nullptr, nullptr), &w, &h);
  ASSERT_EQ(static_cast<int64_t>(w), l.width);
  ASSERT_EQ(static_cast<int64_t>(h), l.height);
  const int64_t grid_r = l.grid_x + 3 * l.cell_w, grid_b = l.grid_y + 2 * l.cell_h;
  EXPECT_GT(dark_pixels(px, w, 0, 0, w, l.grid_y), 50);              // title band
  EXPECT_GT(dark_pixels(px, w, 0, l.grid_y, l.grid_x, grid_b), 50);  // row names, row title
  // Column names, then the column axis title in the bottom band (above the legend).
  const int64_t title_top = l.swatch_y - 12 - 16;
  EXPECT_GT(dark_pixels(px, w, l.grid_x, grid_b, grid_r, title_top), 50);
  EXPECT_GT(dark_pixels(px, w, 0, title_top, w, l.swatch_y), 50);
  EXPECT_GT(dark_pixels(px, w, l.bar_x + l.bar_w, 0, w, h), 50);         // ticks and their labels
  EXPECT_EQ(dark_pixels(px, w, l.grid_x, l.grid_y, grid_r, grid_b), 0);  // no text on the cells

  // The texts are the SVG's: the default or given title, the axis titles, the tick labels.
  auto texts = [](const detail::PngLayout& layout) {
    std::vector<std::string> out;
    for (const auto& t : layout.texts) out.push_back(t.text);
    return out;
  };
  auto has = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  const auto t = texts(l);
  EXPECT_TRUE(has(t, "cka (1234 examples)"));
  EXPECT_TRUE(has(t, "model A layer"));
  EXPECT_TRUE(has(t, "model B layer"));
  EXPECT_TRUE(has(t, "layer<2> & \"x\""));
  EXPECT_TRUE(has(t, "a,b"));
  EXPECT_TRUE(has(t, "0.00"));
  EXPECT_TRUE(has(t, "0.50"));
  EXPECT_TRUE(has(t, "1.00"));
  EXPECT_NE(heatmap_svg(g).find(">0.50</text>"), std::string::npos);  // same ticks in the SVG
  HeatmapOptions o;
  o.title = "my title";
  o.vmin = -1.0;
  EXPECT_TRUE(has(texts(detail::png_layout(g, o)), "my title"));
  EXPECT_TRUE(has(texts(detail::png_layout(g, o)), "-1.00"));

  // Longer row names widen the left margin, and nothing but the names draws there.
  Grid wide = small_grid();
  wide.rows[0] = "a much longer row name";
  EXPECT_GT(detail::png_layout(wide, {}).grid_x, l.grid_x);
  Grid blank = small_grid();
  blank.rows = {"", ""};
  blank.row_label = "";
  const auto lb = detail::png_layout(blank, {});
  const auto pb = decode_png(heatmap_png(blank, {}, nullptr, nullptr), &w, &h);
  EXPECT_EQ(dark_pixels(pb, w, 0, lb.grid_y, lb.grid_x, lb.grid_y + 2 * lb.cell_h), 0);
  EXPECT_LT(lb.grid_x, l.grid_x);
}

TEST(Report, PngLabelsLongNames) {
  Grid g = named_grid(4, 5);
  g.rows = {"encoder.layers.0.self_attention.output", "encoder.layers.1.mlp.fc2", "conv1",
            std::string("Schicht \xc3\x9c") + "bergang"};  // UTF-8: one '?'
  g.cols = {"decoder.block.0", "decoder.block.1.cross_attention.out_proj", "head", "\xff\xfe",
            "tab\there"};
  g.values = at::linspace(0.0, 1.0, 20, at::kDouble).reshape({4, 5});
  g.values[2][3] = std::nan("");
  g.row_label = "model A (trained 10 epochs)";
  g.col_label = "model B";
  int64_t w = 0, h = 0;
  const auto png = heatmap_png(g, {}, &w, &h);
  uint32_t dw = 0, dh = 0;
  const auto px = decode_png(png, &dw, &dh);
  const auto l = detail::png_layout(g, {});
  EXPECT_EQ(static_cast<int64_t>(dw), w);
  EXPECT_EQ(static_cast<int64_t>(dh), h);
  EXPECT_EQ(w, l.width);
  EXPECT_EQ(h, l.height);
  // Shortened to kMaxNameChars, keeping the end; the picture stays a sensible size.
  bool found = false;
  for (const auto& t : l.texts) {
    EXPECT_LE(static_cast<int64_t>(t.text.size()), 64);
    found |= t.text == "...s.0.self_attention.output";
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(static_cast<int64_t>(std::string("...s.0.self_attention.output").size()),
            detail::kMaxNameChars);
  EXPECT_LT(w, 1000);
  EXPECT_LT(h, 1000);
  if (const char* path = std::getenv("SVCCA_PNG_PREVIEW")) {
    write_file_atomic(path, std::string(png.begin(), png.end()));
  }
}

TEST(Report, FontGlyphsAndMetrics) {
  // Column c of a drawn string as a bit mask of its dark rows (bit r = row r).
  auto columns = [](const std::string& s, int64_t scale, detail::TextDirection dir, int64_t w,
                    int64_t h) {
    std::vector<uint8_t> px(static_cast<size_t>(w * h * 3), 255);
    detail::draw_text(px.data(), w, h, 0, 0, s, scale, {0, 0, 0}, dir);
    std::vector<int> out(static_cast<size_t>(w), 0);
    for (int64_t y = 0; y < h; ++y) {
      for (int64_t x = 0; x < w; ++x) {
        if (px[static_cast<size_t>((y * w + x) * 3)] == 0) out[x] |= 1 << y;
      }
    }
    return out;
  };
  const auto right = detail::TextDirection::kRight, up = detail::TextDirection::kUp;
  // "I": serifs on rows 0 and 6, a stem in the middle column.
  EXPECT_EQ(columns("I", 1, right, 5, 8), (std::vector<int>{0, 0x41, 0x7F, 0x41, 0}));
  // "-": row 3, columns 1-3; at scale 2 rows 6-7 and columns 2-7.
  EXPECT_EQ(columns("-", 1, right, 5, 8), (std::vector<int>{0, 0x08, 0x08, 0x08, 0}));
  EXPECT_EQ(columns("-", 2, right, 10, 16),
            (std::vector<int>{0, 0, 0xC0, 0xC0, 0xC0, 0xC0, 0xC0, 0xC0, 0, 0}));
  // Rotated to read upwards, "-" is a vertical bar in column 3 (rows 1-3 of a 5 px tall box).
  EXPECT_EQ(columns("-", 1, up, 8, 5), (std::vector<int>{0, 0, 0, 0x0E, 0, 0, 0, 0}));
  // Two characters: 6 px apart.
  EXPECT_EQ(columns("II", 1, right, 11, 8),
            (std::vector<int>{0, 0x41, 0x7F, 0x41, 0, 0, 0, 0x41, 0x7F, 0x41, 0}));
  // Anything outside 32..126 is '?', one per UTF-8 sequence.
  EXPECT_EQ(columns("\xc3\xa9", 1, right, 5, 8), columns("?", 1, right, 5, 8));
  EXPECT_EQ(columns("\x01", 1, right, 5, 8), columns("?", 1, right, 5, 8));
  EXPECT_NE(columns("?", 1, right, 5, 8), columns(" ", 1, right, 5, 8));
  EXPECT_EQ(detail::printable_text(std::string("a\xe6\x97\xa5") + "b\n\xff"), "a?b??");
  EXPECT_EQ(detail::glyph('\x7f'), detail::glyph('?'));
  EXPECT_EQ(detail::text_width("", 2), 0);
  EXPECT_EQ(detail::text_width("abc", 1), 17);
  EXPECT_EQ(detail::text_width("abc", 2), 34);
  EXPECT_EQ(detail::text_width("\xc3\xa9", 1), 5);
  EXPECT_EQ(detail::fit_text("abcdefghij", 10), "abcdefghij");
  EXPECT_EQ(detail::fit_text("abcdefghij", 6), "...hij");
  EXPECT_THROWS_WITH(detail::fit_text("abc", 3), "max_chars must be >= 4");
  // Every printable character but the space has ink; drawing off the image is clipped.
  for (char ch = 33; ch < 127; ++ch) {
    int ink = 0;
    for (uint8_t row : detail::glyph(ch)) ink |= row;
    EXPECT_NE(ink, 0) << "'" << ch << "'";
  }
  std::vector<uint8_t> tiny(3 * 3 * 3, 255);
  detail::draw_text(tiny.data(), 3, 3, -4, -2, "W", 3, {0, 0, 0});
  EXPECT_THROWS_WITH(detail::draw_text(tiny.data(), 3, 3, 0, 0, "W", 0, {0, 0, 0}),
                     "scale must be >= 1");
}

TEST(Report, ColormapEndsAndMissing) {
  auto v0 = detail::colormap(0.0), v1 = detail::colormap(1.0);
  EXPECT_EQ(std::vector<int>({v0.r, v0.g, v0.b}), std::vector<int>({68, 1, 84}));
  EXPECT_EQ(std::vector<int>({v1.r, v1.g, v1.b}), std::vector<int>({253, 231, 37}));
  auto low = detail::colormap(-3.0);
  EXPECT_EQ(low.r, v0.r);
  auto m = detail::colormap(std::nan(""));
  EXPECT_EQ(m.r, detail::kMissingColor.r);
}

TEST(Report, TerminalDigitsAndColours) {
  Grid g = small_grid();
  const std::string plain = heatmap_terminal(g, false);
  EXPECT_EQ(plain.find("\x1b["), std::string::npos);
  EXPECT_NE(plain.find("\nconv1          059\n"), std::string::npos) << plain;    // 0, 0.5, 1
  EXPECT_NE(plain.find("\nlayer<2> & \"x\" 2x1\n"), std::string::npos) << plain;  // NaN, 0.12
  EXPECT_NE(plain.find("x = undefined"), std::string::npos) << plain;
  EXPECT_NE(plain.find("columns: 0=a,b 1=fc 2=out"), std::string::npos);
  // Each reason once, with its count, after "undefined cells:".
  const std::string reasons =
      "\nundefined cells: 1 of 6\n  1. layer \"fc\" is constant on the "
      "examples (1 cell)\n";
  EXPECT_NE(plain.find(reasons), std::string::npos) << plain;
  const std::string color = heatmap_terminal(g, true);
  EXPECT_EQ(count(color, "\x1b[48;5;"), 6u + 11u + 1u);  // cells + scale + the undefined mark
  const std::string mark = "\x1b[48;5;252;38;5;238mxx\x1b[0m";
  EXPECT_EQ(count(color, mark), 2u);  // the NaN cell and the legend
  EXPECT_NE(color.find(reasons), std::string::npos) << color;
  // A grid without undefined cells has no such lines.
  Grid defined = small_grid();
  defined.values[1][1] = 0.5;
  EXPECT_EQ(heatmap_terminal(defined, false).find("undefined cells"), std::string::npos);
  EXPECT_EQ(heatmap_terminal(defined, true).find(mark), std::string::npos);
  EXPECT_EQ(undefined_summary(defined), "");
  EXPECT_EQ(undefined_summary(g), reasons.substr(1));
  EXPECT_NE(color.find("\x1b[0m"), std::string::npos);
}

TEST(Report, UndefinedLegendMergesReasonsAndChecksCells) {
  Grid g = named_grid(3, 3);
  g.values[0][1] = std::nan("");
  g.values[1][1] = std::nan("");
  g.values[2][2] = std::nan("");  // listed nowhere
  g.values[2][0] = INFINITY;      // listed nowhere either
  g.undefined = {{"first", {{0, 1}}}, {"finite", {{0, 0}}}, {"first", {{1, 1}}}};
  const at::Tensor v = g.values.contiguous();
  const auto l = detail::undefined_legend("f", g, v.data_ptr<double>());
  EXPECT_EQ(l.reasons, (std::vector<std::string>{"first", detail::kNoReason}));
  EXPECT_EQ(l.counts, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(l.total, 4);
  EXPECT_EQ(l.cell_reason, (std::vector<int32_t>{-1, 0, -1, -1, 0, -1, 1, -1, 1}));
  g.undefined.push_back({"outside", {{3, 0}}});
  EXPECT_THROWS_WITH_TYPE(heatmap_svg(g), c10::ValueError,
                          "heatmap_svg: grid.undefined[3].cells[0] must be inside [rows, cols] = "
                          "[3, 3], but got (3, 0)");
  EXPECT_THROWS_WITH(heatmap_terminal(g, false), "heatmap_terminal: grid.undefined[3]");
  EXPECT_THROWS_WITH(heatmap_png(g, {}, nullptr, nullptr), "heatmap_png: grid.undefined[3]");
  // Very long reasons keep their start and end; more than kMaxLegendReasons are summed up.
  EXPECT_EQ(detail::shorten_middle("abcdefghijklmnopqrstuvwxyz", 12), "abcdef...xyz");
  EXPECT_EQ(detail::shorten_middle("short", 12), "short");
  detail::UndefinedLegend many;
  for (int k = 0; k < 25; ++k) {
    many.reasons.push_back("reason " + std::to_string(k) + std::string(300, '-') + "end");
    many.counts.push_back(2);
  }
  const auto lines = detail::legend_lines(many, 100);
  ASSERT_EQ(lines.size(), 21u);
  EXPECT_EQ(lines[0].rfind("1. reason 0", 0), 0u);
  EXPECT_NE(lines[0].find("-...-"), std::string::npos) << lines[0];
  EXPECT_EQ(lines[0].substr(lines[0].size() - 16), "---end (2 cells)") << lines[0];
  for (const auto& line : lines) EXPECT_LE(line.size(), 100u) << line;
  EXPECT_EQ(lines[20], "... and 5 more reasons (10 cells)");
}

TEST(Report, SvgMarksUndefinedCellsAndListsReasons) {
  Grid g = small_grid();
  const std::string svg = heatmap_svg(g);
  const std::string reason = "layer &quot;fc&quot; is constant on the examples";
  // The cell's tooltip gives its reason, and a cross marks it.
  EXPECT_NE(svg.find("<title>layer&lt;2&gt; &amp; &quot;x&quot; / fc: undefined (1): " + reason +
                     "</title>"),
            std::string::npos)
      << svg;
  EXPECT_NE(svg.find("fill=\"#c8c8c8\"><title>layer&lt;2&gt;"), std::string::npos);
  const std::string marks = section(svg, "<g id=\"undefined-marks\"", "</g>");
  EXPECT_EQ(count(marks, "<path d=\"M"), 1u) << svg;
  EXPECT_NE(marks.find("stroke=\"#5a5a5a\""), std::string::npos);
  // Listed once under the picture, numbered, with its count.
  const std::string listed = "1. " + reason + " (1 cell)";
  EXPECT_EQ(count(svg, listed), 1u);
  EXPECT_NE(section(svg, "<g id=\"undefined-legend\"", "</g>").find(listed), std::string::npos);
  EXPECT_NE(svg.find("undefined cells (1 of 6):"), std::string::npos);
  // Defined values keep their tooltips; a grid without undefined cells has no legend or marks.
  EXPECT_NE(svg.find("<title>conv1 / fc: 0.5000</title>"), std::string::npos);
  Grid defined = small_grid();
  defined.values[1][1] = 0.5;
  const std::string plain = heatmap_svg(defined);
  EXPECT_EQ(plain.find("undefined"), std::string::npos);
  // Two reasons for several cells each: each listed once.
  Grid two = named_grid(4, 4);
  two.values.select(0, 3).fill_(std::nan(""));
  two.values.select(1, 3).fill_(std::nan(""));
  two.undefined = {{"layer \"layer3\" is constant", {{3, 0}, {3, 1}, {3, 2}, {3, 3}, {0, 3}}},
                   {"other", {{1, 3}, {2, 3}}}};
  const std::string svg2 = heatmap_svg(two);
  EXPECT_EQ(count(svg2, "1. layer &quot;layer3&quot; is constant (5 cells)"), 1u);
  EXPECT_EQ(count(svg2, "2. other (2 cells)"), 1u);
  EXPECT_EQ(count(section(svg2, "<g id=\"undefined-marks\"", "</g>"), "<path d=\"M"), 7u);
  EXPECT_EQ(count(svg2, "undefined (2): other</title>"), 2u);
  if (const char* path = std::getenv("SVCCA_SVG_PREVIEW")) write_file_atomic(path, svg2);
}

// Every colour of the viridis scale (colormap is piecewise linear in 8-bit steps, so 10001
// samples reach each of them).
std::vector<std::vector<int>> viridis_colors() {
  std::vector<std::vector<int>> out;
  for (int k = 0; k <= 10000; ++k) {
    const detail::Rgb c = detail::colormap(k / 10000.0);
    out.push_back({c.r, c.g, c.b});
  }
  return out;
}

TEST(Report, PngMarksUndefinedCellsAndListsReasons) {
  const auto viridis = viridis_colors();
  auto is_viridis = [&](const std::vector<int>& c) {
    return std::find(viridis.begin(), viridis.end(), c) != viridis.end();
  };
  // small_grid's 48 px cells, and the 4 px cells of a 120 x 120 grid.
  for (int64_t n : {int64_t{0}, int64_t{120}}) {
    Grid g = n == 0 ? small_grid() : named_grid(n, n);
    if (n > 0) {
      g.values.select(0, 7).fill_(std::nan(""));
      g.undefined = {{"row 7 is constant", {}}};
      for (int64_t j = 0; j < n; ++j) g.undefined[0].cells.push_back({7, j});
    }
    const int64_t ci = n == 0 ? 1 : 7, cj = n == 0 ? 1 : 5;
    const auto l = detail::png_layout(g, {});
    uint32_t w = 0, h = 0;
    const auto px = decode_png(heatmap_png(g, {}, nullptr, nullptr), &w, &h);
    ASSERT_EQ(static_cast<int64_t>(w), l.width);
    auto at_px = [&](int64_t x, int64_t y) {
      const uint8_t* q = &px[static_cast<size_t>((y * w + x) * 3)];
      return std::vector<int>{q[0], q[1], q[2]};
    };
    const std::vector<int> grey = {200, 200, 200}, mark = {90, 90, 90};
    int64_t n_grey = 0, n_mark = 0;
    for (int64_t y = 0; y < l.cell_h; ++y) {
      for (int64_t x = 0; x < l.cell_w; ++x) {
        const auto c = at_px(l.grid_x + cj * l.cell_w + x, l.grid_y + ci * l.cell_h + y);
        EXPECT_FALSE(is_viridis(c)) << x << ", " << y;
        n_grey += c == grey;
        n_mark += c == mark;
      }
    }
    EXPECT_EQ(n_grey + n_mark, l.cell_w * l.cell_h) << n;
    EXPECT_GE(n_mark, 2 * std::min(l.cell_w, l.cell_h) - 2) << n;  // both diagonals
    EXPECT_GT(n_grey, 0) << n;
    // The cell next to it is a scale colour (0 for the zero grid, 0.5 in small_grid's row 0).
    EXPECT_TRUE(is_viridis(at_px(l.grid_x + cj * l.cell_w + l.cell_w / 2,
                                 l.grid_y + (ci - 1) * l.cell_h + l.cell_h / 2)));
    // The legend: a sample cell and the reason, once, under the picture.
    ASSERT_GT(l.swatch, 0);
    EXPECT_EQ(at_px(l.swatch_x, l.swatch_y + l.swatch / 2), grey);
    EXPECT_EQ(at_px(l.swatch_x + l.swatch / 2, l.swatch_y + l.swatch / 2), mark);
    std::vector<std::string> texts;
    for (const auto& t : l.texts) texts.push_back(t.text);
    const std::string listed = n == 0 ? "1. layer \"fc\" is constant on the examples (1 cell)"
                                      : "1. row 7 is constant (120 cells)";
    EXPECT_EQ(std::count(texts.begin(), texts.end(), listed), 1) << n;
    EXPECT_GT(dark_pixels(px, w, l.swatch_x, l.swatch_y, w, h - l.margin), 100);
  }
  // No undefined cells: no legend.
  Grid defined = small_grid();
  defined.values[1][1] = 0.5;
  const auto ld = detail::png_layout(defined, {});
  EXPECT_EQ(ld.swatch, 0);
  EXPECT_LT(ld.height, detail::png_layout(small_grid(), {}).height);
}

// Layer names of torchvision's densenet121 (features.*, classifier), then more dense blocks of
// the same shape until there are n.
std::vector<std::string> densenet_names(int64_t n) {
  std::vector<std::string> out = {"features.conv0", "features.norm0", "features.relu0",
                                  "features.pool0"};
  const int layers[] = {6, 12, 24, 16, 16, 16, 16};
  for (int b = 0; b < 7 && static_cast<int64_t>(out.size()) < n; ++b) {
    const std::string block = "features.denseblock" + std::to_string(b + 1);
    for (int k = 1; k <= layers[b]; ++k) {
      for (const char* part : {"norm1", "relu1", "conv1", "norm2", "relu2", "conv2"}) {
        out.push_back(block + ".denselayer" + std::to_string(k) + "." + part);
      }
    }
    if (b < 3) {
      for (const char* part : {"norm", "relu", "conv", "pool"}) {
        out.push_back("features.transition" + std::to_string(b + 1) + "." + part);
      }
    }
  }
  out.resize(static_cast<size_t>(n - 2));
  out.push_back("features.norm5");
  out.push_back("classifier");
  return out;
}

TEST(Report, AxisLabelsGroupDottedPrefixes) {
  const auto names = densenet_names(450);
  // 4 px cells, 8 px lines: every other row, grouped by block.
  const auto a = detail::axis_labels(names, 4.0, 8.0);
  EXPECT_EQ(a.stride, 2);
  auto has_group = [&](const std::string& text) {
    return std::any_of(a.groups.begin(), a.groups.end(),
                       [&](const detail::AxisGroup& g) { return g.text == text && g.labelled; });
  };
  EXPECT_TRUE(has_group("features.denseblock1"));
  EXPECT_TRUE(has_group("features.transition3"));
  EXPECT_TRUE(has_group("features"));  // conv0 .. pool0
  EXPECT_FALSE(has_group("features.denseblock1.denselayer1"));
  for (const auto& g : a.groups) {
    EXPECT_LE(g.first, g.last);
    EXPECT_EQ(names[static_cast<size_t>(g.first)].rfind(g.text + ".", 0), 0u) << g.text;
  }
  // Rows are labelled by the rest of their name, at least `stride` rows apart, each group's first
  // row labelled.
  ASSERT_FALSE(a.names.empty());
  for (size_t k = 0; k < a.names.size(); ++k) {
    const auto& n = a.names[k];
    EXPECT_EQ(n.text.find("denseblock"), std::string::npos) << n.text;
    const std::string& full = names[static_cast<size_t>(n.index)];
    EXPECT_EQ(full.substr(full.size() - n.text.size()), n.text);
    if (k > 0) {
      EXPECT_GE(n.index - a.names[k - 1].index, a.stride);
    }
  }
  auto labelled = [&](int64_t i) {
    return std::any_of(a.names.begin(), a.names.end(),
                       [&](const detail::AxisName& n) { return n.index == i; });
  };
  EXPECT_TRUE(labelled(4));  // features.denseblock1.denselayer1.norm1
  EXPECT_EQ(a.names[2].text, "denselayer1.norm1");
  EXPECT_TRUE(labelled(44));  // features.denseblock2.denselayer1.norm1, after the transition
  EXPECT_GE(static_cast<int64_t>(a.names.size()), 450 / 2 - 20);
  // Room for every name: all of them, whole.
  const auto whole = detail::axis_labels(names, 10.0, 8.0);
  EXPECT_TRUE(whole.groups.empty());
  ASSERT_EQ(whole.names.size(), 450u);
  EXPECT_EQ(whole.names[4].text, names[4]);
  // Names without shared prefixes: every k-th, whole.
  std::vector<std::string> flat;
  for (int i = 0; i < 100; ++i) flat.push_back("layer" + std::to_string(i));
  const auto f = detail::axis_labels(flat, 3.0, 8.0);
  EXPECT_TRUE(f.groups.empty());
  EXPECT_EQ(f.stride, 3);
  ASSERT_EQ(f.names.size(), 34u);
  EXPECT_EQ(f.names[1].index, 3);
  EXPECT_EQ(f.names[1].text, "layer3");
}

// A grid of densenet-like names with random values (the worst case for merging runs), and
// layer "features.denseblock2.denselayer3.conv1" constant: its row and column undefined.
Grid large_grid(int64_t n_rows, int64_t n_cols) {
  Grid g;
  g.rows = densenet_names(n_rows);
  g.cols = n_cols == n_rows ? g.rows : std::vector<std::string>{};
  for (int64_t j = 0; j < n_cols && n_cols != n_rows; ++j) {
    g.cols.push_back("checkpoint " + std::to_string(j));
  }
  g.values = at::rand({n_rows, n_cols}, at::kDouble);
  g.measure = "cka";
  g.row_label = "layer";
  g.col_label = n_cols == n_rows ? "layer" : "checkpoint";
  g.examples = 256;
  const int64_t k = 4 + 6 * 6 + 4 + 2 * 6 + 2;  // denseblock2.denselayer3.conv1
  if (n_cols == n_rows) {
    UndefinedCells u;
    u.reason = "layer \"" + g.rows[static_cast<size_t>(k)] +
               "\" is constant on the examples (CKA is undefined for a constant layer)";
    for (int64_t i = 0; i < n_rows; ++i) {
      g.values[k][i] = std::nan("");
      g.values[i][k] = std::nan("");
      u.cells.push_back({k, i});
      if (i != k) u.cells.push_back({i, k});
    }
    g.undefined.push_back(std::move(u));
  }
  return g;
}

// Elements of an SVG file as Python's XML parser counts them; -1 when it does not parse.
int64_t svg_elements(const std::string& path) {
  const std::string cmd =
      "/usr/bin/python3 -c \"import sys, xml.etree.ElementTree as E; "
      "print(sum(1 for _ in E.parse(sys.argv[1]).getroot().iter()))\" " +
      path;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[64] = {0};
  const bool got = std::fgets(buf, sizeof(buf), pipe) != nullptr;
  const int rc = ::pclose(pipe);
  return got && rc == 0 ? std::strtoll(buf, nullptr, 10) : -1;
}

class ReportLarge : public testing::SeedingFixture {};

TEST_F(ReportLarge, SvgOf450LayersStaysSmallAndParses) {
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
  const Grid g = large_grid(450, 450);
  const std::string svg = heatmap_svg(g);
  ::testing::Test::RecordProperty("svg_bytes_450x450", static_cast<int>(svg.size()));
  std::cout << "[ size ] 450 x 450 SVG: " << svg.size() << " bytes\n";
  EXPECT_LT(svg.size(), 3u * 1000 * 1000);
  // Compact: no per-cell rects or tooltips; the reason is still a tooltip (of its path) and listed
  // once.
  EXPECT_EQ(count(section(svg, "<g id=\"cells\"", "<g id=\"row-names\""), "<rect"), 0u);
  EXPECT_EQ(count(svg, "<title>"), 2u);  // the reason's path and its legend line
  EXPECT_EQ(count(svg, "(CKA is undefined for a constant layer) (899 cells)"), 1u);
  EXPECT_NE(svg.find("fill=\"url(#undefined-cell)\""), std::string::npos);
  // Labels: groups with their prefix, rows by the rest of their names.
  EXPECT_NE(svg.find(">features.denseblock3</text>"), std::string::npos);
  EXPECT_NE(svg.find(">denselayer1.norm1</text>"), std::string::npos);
  const std::string dir = temp_dir("large");
  fs::create_directories(dir);
  write_file_atomic(dir + "/grid.svg", svg);
  const int64_t elements = svg_elements(dir + "/grid.svg");
  std::cout << "[ size ] 450 x 450 SVG: " << elements << " elements\n";
  EXPECT_GT(elements, 450);   // it parsed, and has labels
  EXPECT_LT(elements, 5000);  // not one element per cell (202500)
  fs::remove_all(dir);
}

TEST_F(ReportLarge, PngOf450LayersIsBoundedAndReadable) {
  const Grid g = large_grid(450, 450);
  int64_t w = 0, h = 0;
  const auto png = heatmap_png(g, {}, &w, &h);
  std::cout << "[ size ] 450 x 450 PNG: " << w << " x " << h << " px, " << png.size() << " bytes\n";
  const auto l = detail::png_layout(g, {});
  EXPECT_EQ(l.cell_w, 4);
  EXPECT_EQ(l.cell_h, 4);
  EXPECT_LE(w, 3200);
  EXPECT_LE(h, 3200);
  EXPECT_GE(w, 450 * 4);
  EXPECT_LT(png.size(), 8u * 1000 * 1000);
  // Whole, readable labels: the group prefixes, and rows by the rest of their names.
  std::vector<std::string> texts;
  for (const auto& t : l.texts) texts.push_back(t.text);
  auto has = [&](const std::string& s) {
    return std::find(texts.begin(), texts.end(), s) != texts.end();
  };
  EXPECT_TRUE(has("features.denseblock3"));
  EXPECT_TRUE(has("denselayer1.norm1"));
  EXPECT_FALSE(l.lines.empty());  // the brackets
  for (const auto& t : texts) EXPECT_EQ(t.rfind("...", 0), std::string::npos) << t;
  if (const char* path = std::getenv("SVCCA_PNG_PREVIEW_LARGE")) {
    write_file_atomic(path, std::string(png.begin(), png.end()));
    write_file_atomic(std::string(path) + ".svg", heatmap_svg(g));
  }
}

TEST_F(ReportLarge, NarrowGridsGetWideColumns) {
  const Grid g = large_grid(200, 4);
  int64_t w = 0, h = 0;
  const auto png = heatmap_png(g, {}, &w, &h);
  const auto l = detail::png_layout(g, {});
  const std::string svg = heatmap_svg(g);
  std::cout << "[ size ] 200 x 4 PNG: " << w << " x " << h << " px, " << png.size()
            << " bytes; SVG " << svg.size() << " bytes\n";
  EXPECT_EQ(l.cell_h, 4);
  EXPECT_EQ(l.cell_w, 40);
  EXPECT_GE(w, 300);  // was about 30 px of cells in a narrow picture
  EXPECT_GE(4 * l.cell_w, static_cast<int64_t>(detail::kMinGridSide));
  EXPECT_EQ(l.col_scale, 2);  // column names in the large font
  const auto size = detail::cell_size(200, 4, 480.0, 4.0, 40.0, false);
  EXPECT_EQ(size.w, 40.0);
  EXPECT_EQ(size.h, 4.0);
  EXPECT_LT(svg.size(), 200u * 1000);
}

TEST(Report, WriteFileAtomicLeavesNothingBehind) {
  const std::string dir = temp_dir("atomic");
  fs::remove_all(dir);
  EXPECT_THROWS_WITH(write_file_atomic(dir + "/x.txt", "hello"),
                     "write_file_atomic: path must be in an existing folder");
  EXPECT_FALSE(fs::exists(dir));
  fs::create_directories(dir);
  write_file_atomic(dir + "/x.txt", "hello");
  write_file_atomic(dir + "/x.txt", "bye");  // replaces
  EXPECT_EQ(read(dir + "/x.txt"), "bye");
  // A folder where the file should go: the rename fails, the temporary file is removed.
  fs::create_directories(dir + "/sub");
  EXPECT_THROWS_WITH(write_file_atomic(dir + "/sub", "data"), "could not be written");
  size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 2u);  // x.txt and sub, no temporary file
  fs::remove_all(dir);
}

TEST(Report, WriteGridFilesWritesAllFour) {
  const std::string dir = temp_dir("files") + "/nested/out";
  Grid g = small_grid();
  auto paths = write_grid_files(g, dir, "grid");
  ASSERT_EQ(paths.size(), 4u);
  EXPECT_EQ(paths[0], dir + "/grid.json");
  EXPECT_EQ(paths[3], dir + "/grid.png");
  Grid back = grid_from_json(nlohmann::json::parse(read(paths[0])));
  EXPECT_EQ(back.rows, g.rows);
  EXPECT_EQ(read(paths[1]), grid_to_csv(g));
  EXPECT_EQ(read(paths[2]), heatmap_svg(g));
  const std::string png = read(paths[3]);
  EXPECT_EQ(png.substr(1, 3), "PNG");
  EXPECT_THROWS_WITH(write_grid_files(g, dir + "/grid.json/x"), "write_grid_files: dir");
  EXPECT_THROWS_WITH(write_grid_files(g, dir, "a/b"), "stem must be");
  fs::remove_all(temp_dir("files"));
}

TEST(Report, MalformedGridsAreRejected) {
  Grid g = small_grid();
  g.values = at::zeros({3, 3}, at::kDouble);
  EXPECT_THROWS_WITH(grid_to_json(g),
                     "grid_to_json: grid.values must have shape [rows, cols] = [2, 3], but got "
                     "shape [3, 3]");
  EXPECT_THROWS_WITH(heatmap_png(g, {}, nullptr, nullptr), "heatmap_png: grid.values");
}

}  // namespace
}  // namespace svcca
