// Rendering of grids: JSON, CSV, SVG / PNG / terminal heatmaps, and atomic file writes.
#include "svcca/report/report.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <spng.h>
#include <sys/stat.h>
#include <torch/version.h>  // TORCH_VERSION (macros only; the header Debian's 1.13.1 ships says 1.13.0)
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>

#include "svcca/checks.h"
#include "svcca/report/font.h"
#include "svcca/report/heatmap.h"

#ifndef SVCCA_VERSION
#define SVCCA_VERSION "unknown"
#endif

namespace svcca {
namespace {

namespace fs = std::filesystem;

// values as a contiguous float64 CPU tensor after checking it matches the names.
at::Tensor checked_values(const char* fn, const Grid& grid) {
  TORCH_CHECK_VALUE(grid.values.defined(), fn,
                    ": grid.values must be a defined tensor, but got an "
                    "undefined one");
  const auto r = static_cast<int64_t>(grid.rows.size());
  const auto c = static_cast<int64_t>(grid.cols.size());
  TORCH_CHECK_VALUE(grid.values.dim() == 2 && grid.values.size(0) == r && grid.values.size(1) == c,
                    fn, ": grid.values must have shape [rows, cols] = [", r, ", ", c,
                    "], but got shape ", detail::shape_str(grid.values));
  return grid.values.detach().to(at::kCPU, at::kDouble).contiguous();
}

// %.17g: enough digits to read back the same double.
std::string number17(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"') out += '"';
    out += ch;
  }
  return out + "\"";
}

std::string xml_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    switch (ch) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // Control characters other than tab / newline are not allowed in XML 1.0.
        if (static_cast<unsigned char>(ch) < 0x20 && ch != '\t' && ch != '\n' && ch != '\r') {
          out += ' ';
        } else {
          out += ch;
        }
    }
  }
  return out;
}

std::string hex(const detail::Rgb& c) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "#%02x%02x%02x", c.r, c.g, c.b);
  return buf;
}

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

void check_range(const char* fn, const HeatmapOptions& options) {
  TORCH_CHECK_VALUE(
      std::isfinite(options.vmin) && std::isfinite(options.vmax) && options.vmin < options.vmax, fn,
      ": options.vmin and options.vmax must be finite with vmin < vmax, but got "
      "vmin = ",
      options.vmin, " and vmax = ", options.vmax);
}

// Approximate width of a string in a sans-serif font of `size` px (SVG has no text metrics).
double text_width(const std::string& s, double size) {
  return static_cast<double>(s.size()) * size * 0.6;
}

const nlohmann::json* find_field(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

}  // namespace

namespace detail {

Rgb colormap(double t) {
  // matplotlib's viridis at t = 0, 0.1, ..., 1 (perceptually uniform, readable in grey scale).
  static constexpr std::array<Rgb, 11> kViridis = {{{68, 1, 84},
                                                    {72, 36, 117},
                                                    {65, 68, 135},
                                                    {53, 95, 141},
                                                    {42, 120, 142},
                                                    {33, 145, 140},
                                                    {34, 168, 132},
                                                    {68, 191, 112},
                                                    {122, 209, 81},
                                                    {189, 223, 38},
                                                    {253, 231, 37}}};
  if (!std::isfinite(t)) return kMissingColor;
  t = std::clamp(t, 0.0, 1.0) * 10.0;
  const int i = std::min(9, static_cast<int>(t));
  const double f = t - i;
  auto mix = [f](uint8_t a, uint8_t b) {
    return static_cast<uint8_t>(std::lround(a + (static_cast<double>(b) - a) * f));
  };
  const Rgb& a = kViridis[i];
  const Rgb& b = kViridis[i + 1];
  return {mix(a.r, b.r), mix(a.g, b.g), mix(a.b, b.b)};
}

double scaled(double value, double vmin, double vmax) {
  if (!std::isfinite(value)) return std::numeric_limits<double>::quiet_NaN();
  return std::clamp((value - vmin) / (vmax - vmin), 0.0, 1.0);
}

std::string heatmap_title(const Grid& grid, const HeatmapOptions& options) {
  if (!options.title.empty()) return options.title;
  return grid.measure + " (" + std::to_string(grid.examples) + " examples)";
}

std::vector<std::pair<double, std::string>> colorbar_ticks(const HeatmapOptions& options) {
  std::vector<std::pair<double, std::string>> ticks;
  for (int k = 0; k <= 4; ++k) {
    const double f = k / 4.0;
    ticks.emplace_back(f, fixed(options.vmin + f * (options.vmax - options.vmin), 2));
  }
  return ticks;
}

PngLayout png_layout(const Grid& grid, const HeatmapOptions& options) {
  // Character limits keep the picture a sensible size whatever the names.
  constexpr int64_t kMaxTitleChars = 64, kMaxAxisChars = 40;
  constexpr int64_t kTextScale = 2;  // title, axis titles and tick labels
  constexpr int64_t kTextH = kGlyphHeight * kTextScale;
  constexpr int64_t kGap = 6;  // between a label and what it labels
  const auto nr = static_cast<int64_t>(grid.rows.size());
  const auto nc = static_cast<int64_t>(grid.cols.size());
  PngLayout l;
  const int64_t longest = std::max<int64_t>(1, std::max(nr, nc));
  // About 480 px for the grid, but never under 4 px (large grids) or over 48 px (a 1 x 1 grid
  // stays a visible square).
  l.cell = std::clamp<int64_t>(480 / longest, 4, 48);
  l.margin = 8;
  l.name_scale = l.cell >= 2 * kGlyphHeight ? 2 : 1;
  const int64_t name_h = kGlyphHeight * l.name_scale;
  l.name_stride = (name_h + l.cell - 1) / l.cell;
  const int64_t gw = nc * l.cell, gh = nr * l.cell;

  auto fitted = [](const std::vector<std::string>& names) {
    std::vector<std::string> out;
    for (const auto& n : names) out.push_back(fit_text(n, kMaxNameChars));
    return out;
  };
  const std::vector<std::string> rows = fitted(grid.rows), cols = fitted(grid.cols);
  int64_t row_w = 0, col_h = 0;
  for (int64_t i = 0; i < nr; i += l.name_stride)
    row_w = std::max(row_w, text_width(rows[i], l.name_scale));
  for (int64_t j = 0; j < nc; j += l.name_stride)
    col_h = std::max(col_h, text_width(cols[j], l.name_scale));
  const std::string title = fit_text(heatmap_title(grid, options), kMaxTitleChars);
  const std::string row_title = fit_text(grid.row_label, kMaxAxisChars);
  const std::string col_title = fit_text(grid.col_label, kMaxAxisChars);
  const int64_t row_title_w = text_width(row_title, kTextScale);
  const int64_t col_title_w = text_width(col_title, kTextScale);

  // Left to right: row axis title (rotated), row names, grid, colour bar, tick labels.
  l.grid_x = l.margin + (row_title.empty() ? 0 : kTextH + kGap) + (row_w > 0 ? row_w + kGap : 0);
  // Top: the title band; the gap also holds the upper half of the top tick label.
  l.grid_y = l.margin + (title.empty() ? 0 : kTextH) + 2 * kGap;
  l.bar_w = 16;
  l.bar_h = std::max<int64_t>(gh, 96);
  l.bar_x = l.grid_x + gw + 16;
  l.bar_y = l.grid_y;
  const int64_t tick_x = l.bar_x + l.bar_w + 4 + 3;
  int64_t right = tick_x;
  for (const auto& [f, label] : colorbar_ticks(options)) {
    const int64_t y = l.bar_y + std::lround(static_cast<double>(l.bar_h - 1) * (1.0 - f));
    l.tick_y.push_back(y);
    // Centred on the tick: capitals and digits are the glyph's top 7 of 8 rows.
    l.texts.push_back({label, tick_x, y - (kGlyphHeight - 1) * kTextScale / 2, kTextScale, false});
    right = std::max(right, tick_x + text_width(label, kTextScale));
  }

  for (int64_t i = 0; i < nr; i += l.name_stride) {
    const int64_t w = text_width(rows[i], l.name_scale);
    l.texts.push_back({rows[i], l.grid_x - kGap - w, l.grid_y + i * l.cell + (l.cell - name_h) / 2,
                       l.name_scale, false});
  }
  // Column names read upwards and end next to the grid, so the longest one sets the margin.
  for (int64_t j = 0; j < nc; j += l.name_stride) {
    l.texts.push_back({cols[j], l.grid_x + j * l.cell + (l.cell - name_h) / 2, l.grid_y + gh + kGap,
                       l.name_scale, true});
  }
  // The row axis title is centred on the rows, or starts at the top row when it is longer.
  const int64_t row_title_y = l.grid_y + std::max<int64_t>(0, (gh - row_title_w) / 2);
  if (!row_title.empty()) l.texts.push_back({row_title, l.margin, row_title_y, kTextScale, true});

  int64_t bottom = std::max({l.grid_y + gh + (col_h > 0 ? kGap + col_h : 0),
                             l.bar_y + l.bar_h + kTextH / 2, row_title_y + row_title_w});
  if (!col_title.empty()) {
    const int64_t x = std::max(l.margin, l.grid_x + (gw - col_title_w) / 2);
    l.texts.push_back({col_title, x, bottom + 2 * kGap, kTextScale, false});
    right = std::max(right, x + col_title_w);
    bottom += 2 * kGap + kTextH;
  }
  l.width = std::max(right + l.margin, text_width(title, kTextScale) + 2 * l.margin);
  l.height = bottom + l.margin;
  if (!title.empty()) {
    l.texts.push_back(
        {title, (l.width - text_width(title, kTextScale)) / 2, l.margin, kTextScale, false});
  }
  return l;
}

}  // namespace detail

nlohmann::json grid_to_json(const Grid& grid) {
  at::Tensor v = checked_values("grid_to_json", grid);
  const int64_t r = v.size(0), c = v.size(1);
  const double* p = v.data_ptr<double>();
  nlohmann::json values = nlohmann::json::array();
  for (int64_t i = 0; i < r; ++i) {
    nlohmann::json row = nlohmann::json::array();
    for (int64_t j = 0; j < c; ++j) {
      const double x = p[i * c + j];
      if (std::isfinite(x)) {
        row.push_back(x);
      } else {
        row.push_back(nullptr);
      }
    }
    values.push_back(std::move(row));
  }
  nlohmann::json j;
  j["rows"] = grid.rows;
  j["cols"] = grid.cols;
  j["values"] = std::move(values);
  j["measure"] = grid.measure;
  j["row_label"] = grid.row_label;
  j["col_label"] = grid.col_label;
  j["examples"] = grid.examples;
  j["options"] = grid.options;
  nlohmann::json undefined = nlohmann::json::array();
  for (const UndefinedCells& u : grid.undefined) {
    nlohmann::json cells = nlohmann::json::array();
    for (const auto& [row, col] : u.cells) cells.push_back({row, col});
    undefined.push_back({{"reason", u.reason}, {"cells", std::move(cells)}});
  }
  j["undefined"] = std::move(undefined);
  j["versions"] = {{"svcca", SVCCA_VERSION}, {"torch", TORCH_VERSION}};
  return j;
}

Grid grid_from_json(const nlohmann::json& json) {
  constexpr const char* fn = "grid_from_json";
  TORCH_CHECK_VALUE(json.is_object(), fn, ": json must be an object, but got a ", json.type_name());
  auto field = [&](const char* key) -> const nlohmann::json& {
    const nlohmann::json* f = find_field(json, key);
    TORCH_CHECK_VALUE(f != nullptr, fn, ": json must have the field \"", key,
                      "\", but it is missing");
    return *f;
  };
  auto strings = [&](const char* key) {
    const auto& f = field(key);
    TORCH_CHECK_VALUE(f.is_array(), fn, ": field \"", key,
                      "\" must be an array of strings, but got a ", f.type_name());
    std::vector<std::string> out;
    for (size_t i = 0; i < f.size(); ++i) {
      TORCH_CHECK_VALUE(f[i].is_string(), fn, ": field \"", key, "\" must be an array of strings, ",
                        "but entry ", i, " is a ", f[i].type_name());
      out.push_back(f[i].get<std::string>());
    }
    return out;
  };
  auto string = [&](const char* key) {
    const auto& f = field(key);
    TORCH_CHECK_VALUE(f.is_string(), fn, ": field \"", key, "\" must be a string, but got a ",
                      f.type_name());
    return f.get<std::string>();
  };

  Grid g;
  g.rows = strings("rows");
  g.cols = strings("cols");
  g.measure = string("measure");
  g.row_label = string("row_label");
  g.col_label = string("col_label");
  const auto& examples = field("examples");
  TORCH_CHECK_VALUE(examples.is_number_integer() && examples.get<int64_t>() >= 0, fn,
                    ": field \"examples\" must be an integer >= 0, but got ", examples.dump());
  g.examples = examples.get<int64_t>();
  const auto& options = field("options");
  TORCH_CHECK_VALUE(options.is_object(), fn, ": field \"options\" must be an object, but got a ",
                    options.type_name());
  for (const auto& [k, v] : options.items()) {
    TORCH_CHECK_VALUE(v.is_string(), fn, ": field \"options\" must map names to strings, but \"", k,
                      "\" is a ", v.type_name());
    g.options[k] = v.get<std::string>();
  }

  const auto& values = field("values");
  const auto r = static_cast<int64_t>(g.rows.size());
  const auto c = static_cast<int64_t>(g.cols.size());
  TORCH_CHECK_VALUE(values.is_array() && static_cast<int64_t>(values.size()) == r, fn,
                    ": field \"values\" must be an array of ", r,
                    " rows (one per name in \"rows\"), "
                    "but got ",
                    values.is_array() ? std::to_string(values.size()) + " rows"
                                      : std::string("a ") + values.type_name());
  g.values = at::empty({r, c}, at::kDouble);
  auto acc = g.values.accessor<double, 2>();
  for (int64_t i = 0; i < r; ++i) {
    const auto& row = values[i];
    TORCH_CHECK_VALUE(row.is_array() && static_cast<int64_t>(row.size()) == c, fn,
                      ": field \"values\" must hold rows of ", c,
                      " entries (one per name in \"cols\"), but row ", i, " is ", row.dump());
    for (int64_t j = 0; j < c; ++j) {
      const auto& x = row[j];
      TORCH_CHECK_VALUE(x.is_number() || x.is_null(), fn,
                        ": field \"values\" must hold numbers or null, but entry [", i, "][", j,
                        "] is ", x.dump());
      acc[i][j] = x.is_null() ? std::numeric_limits<double>::quiet_NaN() : x.get<double>();
    }
  }

  // Files written before "undefined" existed have none: their null cells get no reason.
  if (const nlohmann::json* undefined = find_field(json, "undefined")) {
    TORCH_CHECK_VALUE(undefined->is_array(), fn,
                      ": field \"undefined\" must be an array of {\"reason\", \"cells\"} "
                      "objects, but got a ",
                      undefined->type_name());
    for (size_t k = 0; k < undefined->size(); ++k) {
      const auto& u = (*undefined)[k];
      const nlohmann::json* reason = u.is_object() ? find_field(u, "reason") : nullptr;
      const nlohmann::json* cells = u.is_object() ? find_field(u, "cells") : nullptr;
      TORCH_CHECK_VALUE(
          reason != nullptr && reason->is_string() && cells != nullptr && cells->is_array(), fn,
          ": field \"undefined\" must hold objects with a string \"reason\" and ",
          "an array \"cells\", but entry ", k, " is ", u.dump());
      UndefinedCells out;
      out.reason = reason->get<std::string>();
      for (const auto& cell : *cells) {
        const bool pair = cell.is_array() && cell.size() == 2 && cell[0].is_number_integer() &&
                          cell[1].is_number_integer();
        TORCH_CHECK_VALUE(pair && cell[0].get<int64_t>() >= 0 && cell[0].get<int64_t>() < r &&
                              cell[1].get<int64_t>() >= 0 && cell[1].get<int64_t>() < c,
                          fn, ": field \"undefined\" must hold cells [row, col] inside [", r, ", ",
                          c, "], but entry ", k, " has the cell ", cell.dump());
        out.cells.emplace_back(cell[0].get<int64_t>(), cell[1].get<int64_t>());
      }
      g.undefined.push_back(std::move(out));
    }
  }
  return g;
}

std::string grid_to_csv(const Grid& grid) {
  at::Tensor v = checked_values("grid_to_csv", grid);
  const int64_t c = v.size(1);
  const double* p = v.data_ptr<double>();
  std::ostringstream out;
  out << csv_field(grid.row_label + "\\" + grid.col_label);
  for (const auto& name : grid.cols) out << ',' << csv_field(name);
  out << "\r\n";
  for (size_t i = 0; i < grid.rows.size(); ++i) {
    out << csv_field(grid.rows[i]);
    // A NaN cell is an empty field (RFC 4180 has no NaN; pandas and numpy read it as missing).
    for (int64_t j = 0; j < c; ++j) {
      const double x = p[i * c + j];
      out << ',' << (std::isnan(x) ? std::string() : number17(x));
    }
    out << "\r\n";
  }
  return out.str();
}

std::string heatmap_svg(const Grid& grid, const HeatmapOptions& options) {
  constexpr const char* fn = "heatmap_svg";
  check_range(fn, options);
  at::Tensor v = checked_values(fn, grid);
  const int64_t nr = v.size(0), nc = v.size(1);
  const double* p = v.data_ptr<double>();

  const int64_t longest = std::max<int64_t>(1, std::max(nr, nc));
  const double cell = std::clamp(480.0 / static_cast<double>(longest), 10.0, 40.0);
  const double font = std::clamp(cell - 2.0, 6.0, 12.0);
  const double title_font = 16.0, axis_font = 13.0, margin = 10.0;
  double row_w = 0.0, col_h = 0.0;
  for (const auto& s : grid.rows) row_w = std::max(row_w, text_width(s, font));
  for (const auto& s : grid.cols) col_h = std::max(col_h, text_width(s, font));
  const std::string title = detail::heatmap_title(grid, options);

  const double left = margin + axis_font + 8.0 + row_w + 6.0;
  const double top = margin + title_font + 14.0;
  const double gw = cell * static_cast<double>(nc), gh = cell * static_cast<double>(nr);
  const double bar_x = left + gw + 20.0, bar_w = 16.0, bar_h = std::max(gh, 150.0);
  const double body_h = std::max(gh, bar_h);
  const double width =
      std::max(bar_x + bar_w + 8.0 + 60.0 + margin, text_width(title, title_font) + 2.0 * margin);
  const double height = top + body_h + 6.0 + col_h + 8.0 + axis_font + margin;

  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(1);
  s << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << width << ' ' << height
    << "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  // Colour bar gradient, bottom (vmin) to top (vmax).
  s << "<defs><linearGradient id=\"colorbar\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">";
  for (int k = 0; k <= 10; ++k) {
    s << "<stop offset=\"" << k / 10.0 << "\" stop-color=\"" << hex(detail::colormap(k / 10.0))
      << "\"/>";
  }
  s << "</linearGradient></defs>\n";
  s << "<text x=\"" << width / 2.0 << "\" y=\"" << margin + title_font
    << "\" text-anchor=\"middle\" font-size=\"" << title_font << "\" font-weight=\"bold\">"
    << xml_escape(title) << "</text>\n";

  // Cells, with the value as a tooltip and, when there is room, as text.
  s << "<g id=\"cells\">\n";
  for (int64_t i = 0; i < nr; ++i) {
    for (int64_t j = 0; j < nc; ++j) {
      const double x = p[i * nc + j];
      const double t = detail::scaled(x, options.vmin, options.vmax);
      const detail::Rgb color = detail::colormap(t);
      const double cx = left + cell * static_cast<double>(j);
      const double cy = top + cell * static_cast<double>(i);
      s << "<rect x=\"" << cx << "\" y=\"" << cy << "\" width=\"" << cell << "\" height=\"" << cell
        << "\" fill=\"" << hex(color) << "\"><title>" << xml_escape(grid.rows[i]) << " / "
        << xml_escape(grid.cols[j]) << ": " << fixed(x, 4) << "</title></rect>";
      if (cell >= 30.0) {
        const bool dark = std::isfinite(t) && t < 0.6;
        s << "<text x=\"" << cx + cell / 2.0 << "\" y=\"" << cy + cell / 2.0 + 3.5
          << "\" text-anchor=\"middle\" font-size=\"9\" fill=\"" << (dark ? "#ffffff" : "#000000")
          << "\">" << fixed(x, 2) << "</text>";
      }
      s << '\n';
    }
  }
  s << "</g>\n";

  // Row names right-aligned left of the grid; column names below it, rotated to read upwards so
  // long names take height, not width.
  s << "<g id=\"row-names\" font-size=\"" << font << "\">\n";
  for (int64_t i = 0; i < nr; ++i) {
    s << "<text x=\"" << left - 6.0 << "\" y=\"" << top + cell * (i + 0.5) + font * 0.35
      << "\" text-anchor=\"end\">" << xml_escape(grid.rows[i]) << "</text>\n";
  }
  s << "</g>\n<g id=\"col-names\" font-size=\"" << font << "\">\n";
  for (int64_t j = 0; j < nc; ++j) {
    const double x = left + cell * (j + 0.5) + font * 0.35;
    const double y = top + gh + 6.0;
    s << "<text transform=\"translate(" << x << ',' << y << ") rotate(-90)\" text-anchor=\"end\">"
      << xml_escape(grid.cols[j]) << "</text>\n";
  }
  s << "</g>\n";
  // Axis titles.
  s << "<text x=\"" << left + gw / 2.0 << "\" y=\"" << top + body_h + 6.0 + col_h + 8.0 + axis_font
    << "\" text-anchor=\"middle\" font-size=\"" << axis_font << "\">" << xml_escape(grid.col_label)
    << "</text>\n";
  s << "<text transform=\"translate(" << margin + axis_font << ',' << top + gh / 2.0
    << ") rotate(-90)\" text-anchor=\"middle\" font-size=\"" << axis_font << "\">"
    << xml_escape(grid.row_label) << "</text>\n";

  // Colour bar with five ticks.
  s << "<g id=\"colorbar-group\" font-size=\"10\">\n<rect x=\"" << bar_x << "\" y=\"" << top
    << "\" width=\"" << bar_w << "\" height=\"" << bar_h
    << "\" fill=\"url(#colorbar)\" stroke=\"#000000\" stroke-width=\"0.5\"/>\n";
  for (const auto& [f, label] : detail::colorbar_ticks(options)) {
    const double y = top + bar_h * (1.0 - f);
    s << "<line x1=\"" << bar_x + bar_w << "\" y1=\"" << y << "\" x2=\"" << bar_x + bar_w + 4.0
      << "\" y2=\"" << y << "\" stroke=\"#000000\" stroke-width=\"0.5\"/>"
      << "<text x=\"" << bar_x + bar_w + 6.0 << "\" y=\"" << y + 3.5 << "\">" << label
      << "</text>\n";
  }
  s << "</g>\n</svg>\n";
  return s.str();
}

std::vector<uint8_t> heatmap_png(const Grid& grid, const HeatmapOptions& options, int64_t* width,
                                 int64_t* height) {
  constexpr const char* fn = "heatmap_png";
  check_range(fn, options);
  at::Tensor v = checked_values(fn, grid);
  const int64_t nr = v.size(0), nc = v.size(1);
  const double* p = v.data_ptr<double>();
  const detail::PngLayout l = detail::png_layout(grid, options);
  std::vector<uint8_t> px(static_cast<size_t>(l.width * l.height * 3), 255);
  auto put = [&](int64_t x, int64_t y, detail::Rgb c) {
    uint8_t* q = &px[static_cast<size_t>((y * l.width + x) * 3)];
    q[0] = c.r;
    q[1] = c.g;
    q[2] = c.b;
  };
  for (int64_t i = 0; i < nr; ++i) {
    for (int64_t j = 0; j < nc; ++j) {
      const detail::Rgb c =
          detail::colormap(detail::scaled(p[i * nc + j], options.vmin, options.vmax));
      for (int64_t y = 0; y < l.cell; ++y) {
        for (int64_t x = 0; x < l.cell; ++x)
          put(l.grid_x + j * l.cell + x, l.grid_y + i * l.cell + y, c);
      }
    }
  }
  for (int64_t y = 0; y < l.bar_h; ++y) {
    const double t =
        1.0 - static_cast<double>(y) / static_cast<double>(std::max<int64_t>(1, l.bar_h - 1));
    const detail::Rgb c = detail::colormap(t);
    for (int64_t x = 0; x < l.bar_w; ++x) put(l.bar_x + x, l.bar_y + y, c);
  }
  for (int64_t y : l.tick_y) {
    for (int64_t x = 0; x < 4; ++x) put(l.bar_x + l.bar_w + x, y, {0, 0, 0});
  }
  for (const auto& t : l.texts) {
    detail::draw_text(px.data(), l.width, l.height, t.x, t.y, t.text, t.scale, {0, 0, 0},
                      t.up ? detail::TextDirection::kUp : detail::TextDirection::kRight);
  }

  std::unique_ptr<spng_ctx, void (*)(spng_ctx*)> ctx(spng_ctx_new(SPNG_CTX_ENCODER), spng_ctx_free);
  TORCH_CHECK(ctx != nullptr, fn, ": libspng could not allocate an encoder");
  auto ok = [&](int ret, const char* what) {
    TORCH_CHECK(ret == 0, fn, ": libspng failed to ", what, ": ", spng_strerror(ret));
  };
  ok(spng_set_option(ctx.get(), SPNG_ENCODE_TO_BUFFER, 1), "select buffer output");
  spng_ihdr ihdr{};
  ihdr.width = static_cast<uint32_t>(l.width);
  ihdr.height = static_cast<uint32_t>(l.height);
  ihdr.bit_depth = 8;
  ihdr.color_type = SPNG_COLOR_TYPE_TRUECOLOR;
  ok(spng_set_ihdr(ctx.get(), &ihdr), "set the image header");
  ok(spng_encode_image(ctx.get(), px.data(), px.size(), SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE),
     "encode the image");
  size_t size = 0;
  int err = 0;
  std::unique_ptr<void, void (*)(void*)> buf(spng_get_png_buffer(ctx.get(), &size, &err),
                                             std::free);
  ok(err, "return the encoded buffer");
  TORCH_CHECK(buf != nullptr, fn, ": libspng returned no buffer");
  const auto* bytes = static_cast<const uint8_t*>(buf.get());
  if (width != nullptr) *width = l.width;
  if (height != nullptr) *height = l.height;
  return std::vector<uint8_t>(bytes, bytes + size);
}

std::string heatmap_terminal(const Grid& grid, bool color) {
  at::Tensor v = checked_values("heatmap_terminal", grid);
  const int64_t nr = v.size(0), nc = v.size(1);
  const double* p = v.data_ptr<double>();
  constexpr size_t kMaxName = 28;
  auto shorten = [](const std::string& s) {
    return s.size() <= kMaxName ? s : "~" + s.substr(s.size() - (kMaxName - 1));
  };
  size_t name_w = 0;
  for (const auto& r : grid.rows) name_w = std::max(name_w, shorten(r).size());
  auto pad = [&](const std::string& s) { return s + std::string(name_w - s.size(), ' '); };
  // A cell: two spaces on an ANSI 256-colour background (the 6x6x6 cube), or one digit 0-9.
  auto cell = [&](double x) -> std::string {
    const double t = detail::scaled(x, 0.0, 1.0);
    if (!color) {
      if (!std::isfinite(t)) return ".";
      return std::string(1, static_cast<char>('0' + std::min(9, static_cast<int>(t * 10.0))));
    }
    if (!std::isfinite(t)) return "\x1b[48;5;244m  \x1b[0m";
    const detail::Rgb c = detail::colormap(t);
    auto q = [](uint8_t u) { return static_cast<int>(std::lround(u / 255.0 * 5.0)); };
    return "\x1b[48;5;" + std::to_string(16 + 36 * q(c.r) + 6 * q(c.g) + q(c.b)) + "m  \x1b[0m";
  };
  const int cw = color ? 2 : 1;

  std::ostringstream out;
  out << grid.measure << " (" << grid.examples << " examples): " << grid.row_label << " (rows) x "
      << grid.col_label << " (columns)\n";
  // Column numbers, last digit, one per cell.
  out << pad("") << ' ';
  for (int64_t j = 0; j < nc; ++j)
    out << std::string(cw - 1, ' ') << static_cast<char>('0' + j % 10);
  out << '\n';
  for (int64_t i = 0; i < nr; ++i) {
    out << pad(shorten(grid.rows[i])) << ' ';
    for (int64_t j = 0; j < nc; ++j) out << cell(p[i * nc + j]);
    out << '\n';
  }
  if (color) {
    out << "scale: 0 ";
    for (int k = 0; k <= 10; ++k) out << cell(k / 10.0);
    out << " 1";
  } else {
    out << "scale: digit d = value in [d/10, (d+1)/10), 9 includes 1, . = no value";
  }
  out << "\ncolumns:";
  for (int64_t j = 0; j < nc; ++j) out << ' ' << j << '=' << grid.cols[j];
  out << '\n';
  return out.str();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  constexpr const char* fn = "write_file_atomic";
  TORCH_CHECK_VALUE(!path.empty(), fn, ": path must be a file name, but got an empty string");
  const fs::path target(path);
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  TORCH_CHECK(fs::is_directory(dir, ec), fn,
              ": path must be in an existing folder, but the folder "
              "\"",
              dir.string(), "\" of \"", path, "\" does not exist");
  std::string tmpl = (dir / ("." + target.filename().string() + ".tmp.XXXXXX")).string();
  const int fd = mkstemp(tmpl.data());
  TORCH_CHECK(fd >= 0, fn,
              ": path must be in a writable folder, but creating a temporary file in \"",
              dir.string(), "\" failed: ", std::strerror(errno));
  // mkstemp creates the file 0600; give it the permissions a plain open() would (0666 & ~umask).
  const mode_t mask = umask(0);
  umask(mask);
  std::string error;
  if (fchmod(fd, 0666 & ~mask) != 0) error = std::string("chmod: ") + std::strerror(errno);
  size_t done = 0;
  while (error.empty() && done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      error = std::string("write: ") + std::strerror(errno);
    } else {
      done += static_cast<size_t>(w);
    }
  }
  if (error.empty() && ::fsync(fd) != 0) error = std::string("fsync: ") + std::strerror(errno);
  if (::close(fd) != 0 && error.empty()) error = std::string("close: ") + std::strerror(errno);
  if (error.empty() && std::rename(tmpl.c_str(), path.c_str()) != 0) {
    error = std::string("rename: ") + std::strerror(errno);
  }
  if (!error.empty()) {
    ::unlink(tmpl.c_str());
    TORCH_CHECK(false, fn, ": path \"", path, "\" could not be written (", error, ")");
  }
}

std::vector<std::string> write_grid_files(const Grid& grid, const std::string& dir,
                                          const std::string& stem, const HeatmapOptions& options) {
  constexpr const char* fn = "write_grid_files";
  TORCH_CHECK_VALUE(!stem.empty() && stem.find('/') == std::string::npos, fn,
                    ": stem must be a non-empty file name without '/', but got \"", stem, "\"");
  std::error_code ec;
  fs::create_directories(dir, ec);
  TORCH_CHECK(!ec && fs::is_directory(dir), fn, ": dir \"", dir,
              "\" must be a folder that exists or can be created, but ",
              ec ? ec.message() : std::string("it is not a folder"));
  // Render everything first, so that a rendering error writes no file at all.
  const std::string json = grid_to_json(grid).dump(2) + "\n";
  const std::string csv = grid_to_csv(grid);
  const std::string svg = heatmap_svg(grid, options);
  const auto png = heatmap_png(grid, options, nullptr, nullptr);
  const fs::path base = fs::path(dir) / stem;
  std::vector<std::string> paths;
  auto write = [&](const char* ext, const std::string& bytes) {
    const std::string path = base.string() + ext;
    write_file_atomic(path, bytes);
    paths.push_back(path);
  };
  write(".json", json);
  write(".csv", csv);
  write(".svg", svg);
  write(".png", std::string(png.begin(), png.end()));
  return paths;
}

}  // namespace svcca
