// Heatmap internals shared by the SVG, PNG and terminal renderers (and their tests): the colour
// map, the title and colour-bar ticks, and the PNG's pixel layout.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "svcca/report/report.h"

namespace svcca {
namespace detail {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

// Colour of cells without a finite value (light grey).
inline constexpr Rgb kMissingColor{200, 200, 200};

// viridis at t in [0, 1] (clamped; linear between 11 samples of matplotlib's table);
// kMissingColor for NaN.
Rgb colormap(double t);

// (value - vmin) / (vmax - vmin) clamped to [0, 1]; NaN for a non-finite value.
double scaled(double value, double vmin, double vmax);

// options.title, or "<measure> (<examples> examples)" when it is empty.
std::string heatmap_title(const Grid& grid, const HeatmapOptions& options);

// The colour bar's five ticks: (f, label) for f = 0, 0.25, ..., 1 of vmin..vmax, labels with two
// decimals ("0.00" ... "1.00").
std::vector<std::pair<double, std::string>> colorbar_ticks(const HeatmapOptions& options);

// A label of the PNG heatmap, drawn with font.h's draw_text in black.
struct PngText {
  std::string text;      // printable ASCII, already shortened by fit_text
  int64_t x = 0, y = 0;  // top-left corner of its bounding box
  int64_t scale = 1;
  bool up = false;  // rotated 90 degrees to read from bottom to top
};

// Pixel layout of heatmap_png, text included, for `grid` (only its names and labels are read):
// square cells of `cell` px at (grid_x, grid_y), row i / column j at
// (grid_x + j * cell, grid_y + i * cell); a vertical colour bar (vmax at the top) at
// (bar_x, bar_y) with a tick mark at each of tick_y; the title centred in a band above the grid;
// the row axis title then the row names (right-aligned) left of the grid; the column names
// (rotated, ending next to the grid) then the column axis title below it; the tick labels right
// of the bar; a white margin around everything. The left and bottom margins grow with the
// longest name, which fit_text shortens to kMaxNameChars. Names are drawn at name_scale (2 when a
// cell is tall enough, else 1), and only every name_stride-th one when cells are thinner than a
// line of text.
struct PngLayout {
  int64_t cell = 0, margin = 0;
  int64_t grid_x = 0, grid_y = 0;
  int64_t bar_x = 0, bar_y = 0, bar_w = 0, bar_h = 0;
  int64_t width = 0, height = 0;
  int64_t name_scale = 1, name_stride = 1;
  std::vector<int64_t> tick_y;
  std::vector<PngText> texts;
};
inline constexpr int64_t kMaxNameChars = 28;
PngLayout png_layout(const Grid& grid, const HeatmapOptions& options);

}  // namespace detail
}  // namespace svcca
