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

// Colour of cells without a finite value (light grey), and of the cross that marks them in the
// SVG and PNG heatmaps (dark grey: never black, which is the text's colour, nor a viridis colour).
inline constexpr Rgb kMissingColor{200, 200, 200};
inline constexpr Rgb kMarkColor{90, 90, 90};

// viridis at t in [0, 1] (clamped; linear between 11 samples of matplotlib's table);
// kMissingColor for NaN.
Rgb colormap(double t);

// (value - vmin) / (vmax - vmin) clamped to [0, 1]; NaN for a non-finite value.
double scaled(double value, double vmin, double vmax);

// options.title, or "<measure> (<examples> examples)" when it is empty; with uncertain cells
// (uncertain_cells) followed by what their mark means.
std::string heatmap_title(const Grid& grid, const HeatmapOptions& options);

// [rows * cols] row-major: the defined cells whose interval is wider than options.wide_interval
// or whose p-value is above 1 - level (HeatmapOptions::wide_interval); all false without
// grid.inference.
std::vector<bool> uncertain_cells(const Grid& grid, const HeatmapOptions& options);

// The colour bar's five ticks: (f, label) for f = 0, 0.25, ..., 1 of vmin..vmax, labels with two
// decimals ("0.00" ... "1.00").
std::vector<std::pair<double, std::string>> colorbar_ticks(const HeatmapOptions& options);

// The undefined (non-finite) cells of a grid and their reasons: grid.undefined's reasons in order,
// each once (entries with the same reason merge), counting only cells that are non-finite in
// `values`; non-finite cells that no entry lists get kNoReason, last. A listed cell whose value is
// finite is drawn as its value. Throws naming the entry when a listed cell is outside the grid.
inline constexpr const char* kNoReason = "no value (no reason recorded)";
struct UndefinedLegend {
  std::vector<std::string> reasons;
  std::vector<int64_t> counts;       // non-finite cells per reason
  std::vector<int32_t> cell_reason;  // row-major [rows * cols]: -1 finite, else a reason index
  int64_t total = 0;                 // non-finite cells
};
// `values` is the grid's [rows, cols] float64 data, row-major.
UndefinedLegend undefined_legend(const char* fn, const Grid& grid, const double* values);

// At most this many reasons are listed under a heatmap (then "... and K more reasons (N cells)").
inline constexpr int64_t kMaxLegendReasons = 20;
// "1. <reason> (<n> cells)" per reason, each at most max_chars (>= 16) long: a longer reason keeps
// its start and end around "..." (the rule is at the start, the layer names often at the end).
std::vector<std::string> legend_lines(const UndefinedLegend& legend, int64_t max_chars);
// `text` in at most max_chars (>= 5) characters: its start, "...", its end.
std::string shorten_middle(const std::string& text, int64_t max_chars);

// Cell size and grid extent rules shared by the SVG and PNG heatmaps (px). Both sides start from
// `target` px over the longest axis, clamped to [min_cell, max_cell]; when that would make the
// grid wider or taller than kMaxGridSide, cells shrink to fit it (below min_cell only past
// kMaxGridSide / min_cell = 600 layers, never below 1 px); then a short side whose cells span
// less than kMinGridSide is widened towards it, up to max_cell (a 200 x 4 dynamics grid gets
// columns of 40 px, not 4). `integral` rounds down to whole pixels.
inline constexpr double kMinGridSide = 160.0, kMaxGridSide = 2400.0;
struct CellSize {
  double w = 0.0, h = 0.0;
};
CellSize cell_size(int64_t rows, int64_t cols, double target, double min_cell, double max_cell,
                   bool integral);

// Which names label one axis of a heatmap whose cells are `cell` px along it and whose text needs
// `line` px. When every name fits (cell >= line), all of them, whole. Otherwise every stride-th
// one (stride = ceil(line / cell)); and when the names share dotted prefixes
// ("features.denseblock1.denselayer3.conv1"), rows are grouped by the shortest prefix depth that
// splits them into at least two named runs (here "features.denseblock1"): a group is drawn as a
// bracket with its prefix (when it spans at least `line` px), and its rows are labelled by the
// rest of their names ("denselayer3.conv1"), the first row of a group first when there is room.
struct AxisName {
  int64_t index = 0;
  std::string text;
};
struct AxisGroup {
  int64_t first = 0, last = 0;  // rows (or columns) first..last, inclusive
  std::string text;             // the shared prefix
  bool labelled = false;        // its extent holds a line of text
};
struct AxisLabels {
  int64_t stride = 1;
  std::vector<AxisName> names;
  std::vector<AxisGroup> groups;  // empty: names are whole
};
AxisLabels axis_labels(const std::vector<std::string>& names, double cell, double line);

// A label of the PNG heatmap, drawn with font.h's draw_text in black.
struct PngText {
  std::string text;      // printable ASCII, already shortened by fit_text
  int64_t x = 0, y = 0;  // top-left corner of its bounding box
  int64_t scale = 1;
  bool up = false;  // rotated 90 degrees to read from bottom to top
};
// A black 1 px line of the PNG heatmap (group brackets), x0 <= x1 and y0 <= y1, inclusive;
// horizontal or vertical.
struct PngLine {
  int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};

// Pixel layout of heatmap_png for `grid` (its names, labels and which cells are undefined):
// cells of cell_w x cell_h px (cell_size with target 480, min 4, max 48, integral), row i /
// column j at (grid_x + j * cell_w, grid_y + i * cell_h); a vertical colour bar (vmax at the
// top) at (bar_x, bar_y) with a tick mark at each of tick_y; the title centred in a band above
// the grid; left of the grid, from the left: the row axis title, the row group prefixes and their
// brackets (see axis_labels), the row names (right-aligned); below it the column names (rotated,
// ending next to the grid), the column groups, then the column axis title; the tick labels right
// of the bar; under everything, when some cells are undefined, a legend: a sample undefined cell
// (swatch px square at swatch_x, swatch_y) and "undefined cells (N of M):", then the numbered
// reasons (legend_lines, at most 100 characters each); a white margin around everything. Names are
// drawn at scale 2 on an axis whose cells are at least 16 px, else 1, fit_text'ed to
// kMaxNameChars (group prefixes to kMaxGroupChars), and on thin cells only every row_stride-th
// (col_stride-th) one. With at most 600 layers a side the grid stays within kMaxGridSide
// (2400 px) and the whole picture within about 3200 px. Throws as heatmap_png does.
struct PngLayout {
  int64_t cell_w = 0, cell_h = 0, margin = 0;
  int64_t grid_x = 0, grid_y = 0;
  int64_t bar_x = 0, bar_y = 0, bar_w = 0, bar_h = 0;
  int64_t width = 0, height = 0;
  int64_t row_scale = 1, col_scale = 1, row_stride = 1, col_stride = 1;
  int64_t swatch_x = -1, swatch_y = -1, swatch = 0;  // swatch 0: no undefined cells
  std::vector<int64_t> tick_y;
  std::vector<PngText> texts;
  std::vector<PngLine> lines;
};
inline constexpr int64_t kMaxNameChars = 28;
inline constexpr int64_t kMaxGroupChars = 40;
PngLayout png_layout(const Grid& grid, const HeatmapOptions& options);

// Fills a w x h cell at (x, y) of an RGB8 image (rows of `width` * 3 bytes) with kMissingColor
// and draws kMarkColor's diagonal cross over it (inset by a fifth on cells of 10 px or more).
void draw_undefined_cell(uint8_t* rgb, int64_t width, int64_t x, int64_t y, int64_t w, int64_t h);

}  // namespace detail
}  // namespace svcca
