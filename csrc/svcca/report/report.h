// Rendering of grids: JSON (nlohmann), CSV, heatmaps (SVG, PNG through libspng, terminal), and
// atomic file writes (temporary name, then rename).
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

struct HeatmapOptions {
  std::string title;  // empty: "<measure> (<examples> examples)"
  double vmin = 0.0;  // colour scale range; values are clamped into it
  double vmax = 1.0;
};
// An SVG document: one cell per value, labelled axes (row and column names, axis titles), a
// colour bar with ticks, and the title. Valid XML (names are escaped).
std::string heatmap_svg(const Grid& grid, const HeatmapOptions& options = {});
// A PNG file's bytes (RGB8), encoded with libspng: cells, colour bar and the same text as
// heatmap_svg (title, names, axis titles, tick labels; no values in cells), drawn in a built-in
// 5x8 bitmap font (report/font.h): printable ASCII only (other characters show as '?'), names
// longer than 28 characters shortened to "..." + their end, and only every k-th name on grids
// whose cells are thinner than a line of text. width and height are returned through the out
// parameters. Throws (as heatmap_svg does) when grid.values is not [rows, cols] or when vmin and
// vmax are not finite with vmin < vmax.
std::vector<uint8_t> heatmap_png(const Grid& grid, const HeatmapOptions& options, int64_t* width,
                                 int64_t* height);
// A compact heatmap for a terminal: one coloured block per cell (ANSI 256 colours when
// `color`, digits 0-9 otherwise), row names on the left, a legend line.
std::string heatmap_terminal(const Grid& grid, bool color);

// Writes `bytes` to `path` through a temporary file in the same folder, then renames it; throws
// (leaving nothing behind) when the folder does not exist or cannot be written.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Writes <dir>/<stem>.json, .csv, .svg and .png, each atomically; creates `dir` if missing.
// Returns the paths written. Throws naming the path that could not be written.
std::vector<std::string> write_grid_files(const Grid& grid, const std::string& dir,
                                          const std::string& stem = "grid",
                                          const HeatmapOptions& options = {});

}  // namespace svcca
