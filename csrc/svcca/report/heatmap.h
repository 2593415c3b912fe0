// Heatmap internals shared by the SVG, PNG and terminal renderers (and their tests): the colour
// map and the PNG's pixel layout.
#pragma once

#include <cstdint>

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

// Pixel layout of heatmap_png for a grid of n_rows x n_cols cells: square cells of `cell` px at
// (grid_x, grid_y), row i / column j at (grid_x + j * cell, grid_y + i * cell); a vertical colour
// bar (vmax at the top) at (bar_x, bar_y); a white margin around everything.
struct PngLayout {
  int64_t cell = 0, margin = 0;
  int64_t grid_x = 0, grid_y = 0;
  int64_t bar_x = 0, bar_y = 0, bar_w = 0, bar_h = 0;
  int64_t width = 0, height = 0;
};
PngLayout png_layout(int64_t n_rows, int64_t n_cols);

}  // namespace detail
}  // namespace svcca
