// Renderers of an InspectionReport: text for a terminal, JSON for machines, and the grid files
// (JSON, CSV, SVG and PNG heatmaps) that grid, compare and dynamics write.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "inspector.h"

namespace svcca::inspect {

// Human-readable: a layer table, or a heatmap (ANSI colours when `color`) with a number table for
// small grids ("x" for an undefined cell) and a summary of the undefined cells (each reason once,
// with its cell count: svcca::undefined_summary), then the files written.
std::string render_text(const InspectionReport& report, bool color);

// {"command", "models", "input", "examples", "layers": [...], "grid": grid_to_json(...),
//  "tapped": {"path", "method"}, "files": [...]}; absent parts are left out. The grid's undefined
// cells and their reasons are grid["undefined"] (see grid_to_json).
nlohmann::json render_json(const InspectionReport& report);

// Writes <dir>/<command>.json, .csv, .svg and .png (each to a temporary name, then renamed;
// `dir` is created if missing) and records them in report.files. Throws OutputError.
void write_files(InspectionReport& report, const std::string& dir);

}  // namespace svcca::inspect
