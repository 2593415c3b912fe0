// Rendering of grids: JSON (nlohmann), CSV, heatmaps (SVG, PNG through libspng, terminal), and
// atomic file writes (unique temporary name, then rename).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "svcca/grid/grid.h"

namespace svcca {

// {"rows": [...], "cols": [...], "values": [[...]], "measure": ..., "row_label": ...,
//  "col_label": ..., "examples": n, "options": {...},
//  "undefined": [{"reason": "...", "cells": [[row, col], ...]}, ...],
//  "versions": {"svcca": "0.1.0", "torch": "1.13.1"}}. Non-finite values are written as null;
// "undefined" is grid.undefined as it is (always present, [] when every cell is defined).
nlohmann::json grid_to_json(const Grid& grid);
// The inverse of grid_to_json (null becomes NaN). "undefined" may be absent (files written before
// it existed): grid.undefined is then empty. Throws naming the missing or malformed field, and
// when an undefined cell lies outside [rows, cols].
Grid grid_from_json(const nlohmann::json& json);

// RFC 4180: a header record ("<row_label>\<col_label>" then the column names), then one record
// per row; every record ends with CRLF; names with a comma, quote or line break are quoted
// (quotes doubled); values with 17 significant digits; a NaN cell is an empty field (inf stays
// "inf" / "-inf", which strtod and Python's float() read). The reasons are in the JSON only.
std::string grid_to_csv(const Grid& grid);

// Whether grid.inference holds intervals or p-values (resamples or permutations > 0).
bool has_inference(const Grid& grid);
// grid.inference as JSON (grid_to_json's "inference" field, present only when has_inference):
// {"seed", "level", "resamples", "permutations", "method", "low", "high", "standard_error",
//  "p_value", "null_mean", "undefined"}; the interval fields only with resamples > 0, the
// p-value fields only with permutations > 0; cells without a value are null. grid_from_json does
// not read it back. Throws when a tensor is not [rows, cols].
nlohmann::json inference_to_json(const Grid& grid);
// One record per cell (long format, RFC 4180 as grid_to_csv): "<row_label>,<col_label>,value"
// then low,high,standard_error (with resamples) and p_value,null_mean (with permutations); empty
// fields for NaN. write_grid_files writes it as <stem>_cells.csv when has_inference.
std::string grid_cells_csv(const Grid& grid);

struct HeatmapOptions {
  std::string title;  // empty: "<measure> (<examples> examples)"
  double vmin = 0.0;  // colour scale range; values are clamped into it
  double vmax = 1.0;
  // With grid.inference (svcca/inference/grid_inference.h), a cell is marked uncertain (a ring in
  // the SVG and a hollow square in the PNG, top right; the tooltip gives the interval and the
  // p-value; the title says what the mark means) when its interval is wider than this or its
  // p-value is above 1 - level (0.05 without intervals). Compact SVGs (above kSvgMaxTooltipCells
  // cells) and the terminal heatmap draw no marks.
  double wide_interval = 0.1;
};
// Undefined cells (NaN or inf in grid.values; grid.undefined gives their reasons, see
// detail::undefined_legend) are drawn alike by all three heatmaps: blank (light grey) with a mark
// (a diagonal cross in the SVG and PNG, "x" in the terminal), and under the picture "undefined
// cells (N of M):" then each reason once, numbered, with its cell count (at most 20 reasons, then
// "... and K more"; reasons longer than 160 characters in the SVG, 100 in the PNG, are shortened
// in the middle). Defined cells are drawn as before. The heatmaps throw when grid.values is not
// [rows, cols], when a cell of grid.undefined lies outside it, or (SVG, PNG) when vmin and vmax
// are not finite with vmin < vmax.
//
// Size. Cells are about 480 px / (longest axis) a side, clamped to 4..40 px (SVG) or 4..48 px
// (PNG); past 600 layers they shrink below 4 px (never below 1) so that the grid stays within
// 2400 px a side; a short axis is widened towards 160 px (200 layers x 4 checkpoints: columns of
// 40 px). When cells are thinner than a line of text only every k-th name is written, and names
// that share dotted prefixes are grouped: a bracket with the prefix ("features.denseblock1"), and
// each row labelled by the rest ("denselayer3.conv1"), so labels stay whole and readable.
inline constexpr int64_t kSvgMaxTooltipCells = 4096;
// An SVG document: the cells, labelled axes (row and column names or groups, axis titles), a
// colour bar with ticks, the title, and the undefined cells' legend. Valid XML (names are
// escaped). Up to kSvgMaxTooltipCells cells, one <rect> per cell with a <title> tooltip (the
// value, or "undefined (k): <reason>"), and the value written in cells of 30 px or more. Above it
// the document stays small (about 1.7 MB for 450 x 450 random values, where one rect per cell
// took 33 MB): the grid is drawn in cell units under one transform, one <path> per colour
// (merged row runs) and one per reason (filled with a crossed tile, the reason as its
// tooltip); defined cells then have no tooltip.
std::string heatmap_svg(const Grid& grid, const HeatmapOptions& options = {});
// A PNG file's bytes (RGB8), encoded with libspng: cells, colour bar, the undefined cells'
// legend, and the same text as heatmap_svg (title, names or groups, axis titles, tick labels; no
// values in cells), drawn in a built-in 5x8 bitmap font (report/font.h): printable ASCII only
// (other characters show as '?'), names longer than 28 characters (group prefixes: 40) shortened
// to "..." + their end. width and height are returned through the out parameters (layout:
// detail::png_layout in heatmap.h).
std::vector<uint8_t> heatmap_png(const Grid& grid, const HeatmapOptions& options, int64_t* width,
                                 int64_t* height);
// A compact heatmap for a terminal: one coloured block per cell (ANSI 256 colours when
// `color`, digits 0-9 otherwise), row names on the left, a legend line, the column names, then
// undefined_summary(grid).
std::string heatmap_terminal(const Grid& grid, bool color);
// "undefined cells: <N> of <rows * cols>" and then one line per reason, "  1. <reason> (<n>
// cells)" (each reason once, at most 20, shortened past 240 characters); "" when every cell is
// defined. Throws when grid.values is not [rows, cols] or a cell of grid.undefined is outside it.
std::string undefined_summary(const Grid& grid);

// Writes `bytes` to `path` through a temporary file in the same folder, then renames it; throws
// (leaving nothing behind) when the folder does not exist or cannot be written.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Writes <dir>/<stem>.json, .csv, .svg and .png (and <stem>_cells.csv with intervals or p-values
// when the grid carries inference) as one set, all or nothing; creates `dir` if missing. The files
// are written into a fresh temporary folder in `dir`
// (".<stem>.tmp.<pid>.XXXXXX", mkdtemp) and renamed in only after all of them are written; on
// any error (a full disk, a failed rename) the temporary folder is removed and the files of a
// previous set are left as they were (renames already done are undone). Temporary folders left
// by writers that were killed are removed by the next call. Returns the paths written. Throws
// naming the path that could not be written.
std::vector<std::string> write_grid_files(const Grid& grid, const std::string& dir,
                                          const std::string& stem = "grid",
                                          const HeatmapOptions& options = {});

}  // namespace svcca
