// Tests of grid rendering: JSON round trip (non-finite -> null -> NaN), CSV quoting and digits, SVG
// structure (escaped names, one rect per cell, parses as XML), PNG decoded with libspng (size and
// pixel colours, text in the margins), the PNG font's glyphs, terminal heatmap, and atomic writes
// that leave nothing behind on failure. With SVCCA_PNG_PREVIEW=<path> set, PngLabelsLongNames
// also writes its picture there, to look at.
#include "svcca/report/report.h"

#include <ATen/ATen.h>
#include <spng.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
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
  EXPECT_EQ(count(svg, "<rect x="), 6u + 1u);  // cells + colour bar
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
  EXPECT_GE(l.cell, 4);
  auto at_px = [&](int64_t x, int64_t y) {
    const uint8_t* q = &px[static_cast<size_t>((y * w + x) * 3)];
    return std::vector<int>{q[0], q[1], q[2]};
  };
  auto rgb = [](detail::Rgb c) { return std::vector<int>{c.r, c.g, c.b}; };
  auto center = [&](int64_t i, int64_t j) {
    return at_px(l.grid_x + j * l.cell + l.cell / 2, l.grid_y + i * l.cell + l.cell / 2);
  };
  EXPECT_EQ(center(0, 0), rgb(detail::colormap(0.0)));
  EXPECT_EQ(center(0, 2), rgb(detail::colormap(1.0)));
  EXPECT_EQ(center(1, 0), rgb(detail::colormap(0.25)));
  EXPECT_EQ(center(1, 1), rgb(detail::kMissingColor));
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
  EXPECT_EQ(detail::png_layout(named_grid(1, 1), {}).cell, 48);  // a 1 x 1 grid is not a dot
  EXPECT_EQ(detail::png_layout(named_grid(500, 3), {}).cell, 4);
  EXPECT_GE(detail::png_layout(named_grid(1, 1), {}).height, 96);
  // 4 px cells cannot hold 8 px names on every row: every other one is drawn.
  EXPECT_EQ(detail::png_layout(named_grid(500, 3), {}).name_stride, 2);
  EXPECT_EQ(detail::png_layout(named_grid(2, 3), {}).name_stride, 1);
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
  const int64_t grid_r = l.grid_x + 3 * l.cell, grid_b = l.grid_y + 2 * l.cell;
  EXPECT_GT(dark_pixels(px, w, 0, 0, w, l.grid_y), 50);              // title band
  EXPECT_GT(dark_pixels(px, w, 0, l.grid_y, l.grid_x, grid_b), 50);  // row names, row title
  // Column names, then the column axis title in the bottom band (above the margin).
  const int64_t title_top = h - l.margin - 16;
  EXPECT_GT(dark_pixels(px, w, l.grid_x, grid_b, grid_r, title_top), 50);
  EXPECT_GT(dark_pixels(px, w, 0, title_top, w, h), 50);
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
  EXPECT_EQ(dark_pixels(pb, w, 0, lb.grid_y, lb.grid_x, lb.grid_y + 2 * lb.cell), 0);
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
  EXPECT_NE(plain.find("\nlayer<2> & \"x\" 2.1\n"), std::string::npos) << plain;  // NaN, 0.12
  EXPECT_NE(plain.find("columns: 0=a,b 1=fc 2=out"), std::string::npos);
  const std::string color = heatmap_terminal(g, true);
  EXPECT_EQ(count(color, "\x1b[48;5;"), 6u + 11u);  // cells + legend
  EXPECT_NE(color.find("\x1b[0m"), std::string::npos);
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
