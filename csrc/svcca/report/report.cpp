// Rendering of grids: JSON, CSV, SVG / PNG / terminal heatmaps, and atomic file writes.
#include "svcca/report/report.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <signal.h>
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
#include <limits>
#include <map>
#include <memory>
#include <sstream>

#include "svcca/checks.h"
#include "svcca/io/atomic_file.h"
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

std::vector<bool> uncertain_cells(const Grid& grid, const HeatmapOptions& options) {
  const auto nr = static_cast<int64_t>(grid.rows.size());
  const auto nc = static_cast<int64_t>(grid.cols.size());
  std::vector<bool> out(static_cast<size_t>(nr * nc), false);
  if (!has_inference(grid)) return out;
  const GridInference& inf = grid.inference;
  auto read = [&](const at::Tensor& t) {
    return t.defined() && t.numel() == nr * nc ? t.to(at::kDouble).cpu().contiguous()
                                               : at::Tensor();
  };
  const at::Tensor lo = read(inf.low), hi = read(inf.high), pv = read(inf.p_value);
  const double alpha = 1.0 - (inf.level > 0.0 ? inf.level : 0.95);
  for (int64_t k = 0; k < nr * nc; ++k) {
    bool u = false;
    if (lo.defined() && hi.defined()) {
      const double w = hi.data_ptr<double>()[k] - lo.data_ptr<double>()[k];
      u = std::isfinite(w) && w > options.wide_interval;
    }
    if (pv.defined()) {
      const double q = pv.data_ptr<double>()[k];
      u = u || (std::isfinite(q) && q > alpha);
    }
    out[static_cast<size_t>(k)] = u;
  }
  return out;
}

std::string heatmap_title(const Grid& grid, const HeatmapOptions& options) {
  std::string title = options.title.empty()
                          ? grid.measure + " (" + std::to_string(grid.examples) + " examples)"
                          : options.title;
  const std::vector<bool> u = uncertain_cells(grid, options);
  if (std::find(u.begin(), u.end(), true) == u.end()) return title;
  const GridInference& inf = grid.inference;
  std::ostringstream note;
  note << "; o: ";
  if (inf.resamples > 0) note << "CI wider than " << options.wide_interval;
  if (inf.resamples > 0 && inf.permutations > 0) note << " or ";
  if (inf.permutations > 0) note << "p > " << 1.0 - (inf.level > 0.0 ? inf.level : 0.95);
  return title + note.str();
}

std::vector<std::pair<double, std::string>> colorbar_ticks(const HeatmapOptions& options) {
  std::vector<std::pair<double, std::string>> ticks;
  for (int k = 0; k <= 4; ++k) {
    const double f = k / 4.0;
    ticks.emplace_back(f, fixed(options.vmin + f * (options.vmax - options.vmin), 2));
  }
  return ticks;
}

UndefinedLegend undefined_legend(const char* fn, const Grid& grid, const double* values) {
  const auto nr = static_cast<int64_t>(grid.rows.size());
  const auto nc = static_cast<int64_t>(grid.cols.size());
  UndefinedLegend l;
  l.cell_reason.assign(static_cast<size_t>(nr * nc), -1);
  // -2: non-finite, not yet given a reason.
  for (int64_t k = 0; k < nr * nc; ++k) {
    if (!std::isfinite(values[k])) l.cell_reason[static_cast<size_t>(k)] = -2;
  }
  std::vector<int64_t> index;  // reason index of each grid.undefined entry
  for (size_t e = 0; e < grid.undefined.size(); ++e) {
    const UndefinedCells& u = grid.undefined[e];
    int32_t r = -1;
    for (size_t k = 0; k < l.reasons.size(); ++k) {
      if (l.reasons[k] == u.reason) r = static_cast<int32_t>(k);
    }
    for (size_t c = 0; c < u.cells.size(); ++c) {
      const auto [i, j] = u.cells[c];
      TORCH_CHECK_VALUE(i >= 0 && i < nr && j >= 0 && j < nc, fn, ": grid.undefined[", e,
                        "].cells[", c, "] must be inside [rows, cols] = [", nr, ", ", nc,
                        "], but got (", i, ", ", j, ")");
      int32_t& slot = l.cell_reason[static_cast<size_t>(i * nc + j)];
      if (slot != -2) continue;  // finite, or already given a reason by an earlier entry
      if (r < 0) {
        r = static_cast<int32_t>(l.reasons.size());
        l.reasons.push_back(u.reason);
        l.counts.push_back(0);
      }
      slot = r;
      ++l.counts[static_cast<size_t>(r)];
    }
  }
  int32_t none = -1;
  for (int32_t& slot : l.cell_reason) {
    if (slot != -2) continue;
    if (none < 0) {
      none = static_cast<int32_t>(l.reasons.size());
      l.reasons.push_back(kNoReason);
      l.counts.push_back(0);
    }
    slot = none;
    ++l.counts[static_cast<size_t>(none)];
  }
  for (int64_t n : l.counts) l.total += n;
  return l;
}

std::string shorten_middle(const std::string& text, int64_t max_chars) {
  TORCH_CHECK_VALUE(max_chars >= 5, "shorten_middle: max_chars must be >= 5, but got ", max_chars);
  if (static_cast<int64_t>(text.size()) <= max_chars) return text;
  const auto keep = static_cast<size_t>(max_chars - 3);
  const size_t head = (keep * 2 + 2) / 3, tail = keep - head;
  return text.substr(0, head) + "..." + text.substr(text.size() - tail);
}

std::vector<std::string> legend_lines(const UndefinedLegend& legend, int64_t max_chars) {
  TORCH_CHECK_VALUE(max_chars >= 16, "legend_lines: max_chars must be >= 16, but got ", max_chars);
  auto cells = [](int64_t n) { return std::to_string(n) + (n == 1 ? " cell" : " cells"); };
  std::vector<std::string> out;
  const auto n = static_cast<int64_t>(legend.reasons.size());
  for (int64_t k = 0; k < std::min(n, kMaxLegendReasons); ++k) {
    const std::string number = std::to_string(k + 1) + ". ";
    const std::string count = " (" + cells(legend.counts[static_cast<size_t>(k)]) + ")";
    const int64_t room =
        std::max<int64_t>(5, max_chars - static_cast<int64_t>(number.size() + count.size()));
    out.push_back(number + shorten_middle(legend.reasons[static_cast<size_t>(k)], room) + count);
  }
  if (n > kMaxLegendReasons) {
    int64_t rest = 0;
    for (int64_t k = kMaxLegendReasons; k < n; ++k) rest += legend.counts[static_cast<size_t>(k)];
    out.push_back("... and " + std::to_string(n - kMaxLegendReasons) + " more reasons (" +
                  cells(rest) + ")");
  }
  return out;
}

CellSize cell_size(int64_t rows, int64_t cols, double target, double min_cell, double max_cell,
                   bool integral) {
  const auto longest = static_cast<double>(std::max<int64_t>(1, std::max(rows, cols)));
  auto round = [integral](double v) { return integral ? std::max(1.0, std::floor(v)) : v; };
  double base = round(std::clamp(target / longest, min_cell, max_cell));
  if (base * longest > kMaxGridSide) base = round(kMaxGridSide / longest);
  auto side = [&](int64_t n) {
    const auto count = static_cast<double>(std::max<int64_t>(1, n));
    const double widened = integral ? std::ceil(kMinGridSide / count) : kMinGridSide / count;
    return std::max(base, std::min(max_cell, widened));
  };
  return {side(cols), side(rows)};
}

AxisLabels axis_labels(const std::vector<std::string>& names, double cell, double line) {
  AxisLabels out;
  const auto n = static_cast<int64_t>(names.size());
  out.stride = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(line / cell - 1e-9)));
  if (out.stride == 1) {
    for (int64_t i = 0; i < n; ++i) out.names.push_back({i, names[static_cast<size_t>(i)]});
    return out;
  }
  // The dotted components of each name; a group key never takes a name's last component.
  std::vector<std::vector<std::string>> parts;
  size_t depth_max = 0;
  for (const auto& s : names) {
    std::vector<std::string> p;
    size_t start = 0;
    for (size_t dot = s.find('.'); dot != std::string::npos; dot = s.find('.', start)) {
      p.push_back(s.substr(start, dot - start));
      start = dot + 1;
    }
    p.push_back(s.substr(start));
    depth_max = std::max(depth_max, p.size() - 1);
    parts.push_back(std::move(p));
  }
  auto key = [&](size_t i, size_t depth) {
    std::string k;
    for (size_t c = 0; c < std::min(depth, parts[i].size() - 1); ++c) {
      k += (c > 0 ? "." : "") + parts[i][c];
    }
    return k;
  };
  std::vector<std::string> keys;
  std::vector<AxisGroup> runs;  // every run, also those without a prefix (text "")
  for (size_t depth = 1; depth <= depth_max; ++depth) {
    std::vector<std::string> k;
    for (size_t i = 0; i < names.size(); ++i) k.push_back(key(i, depth));
    std::vector<AxisGroup> r;
    for (int64_t i = 0; i < n; ++i) {
      if (i == 0 || k[static_cast<size_t>(i)] != k[static_cast<size_t>(i - 1)]) {
        r.push_back({i, i, k[static_cast<size_t>(i)], false});
      }
      r.back().last = i;
    }
    const auto named =
        std::count_if(r.begin(), r.end(), [](const AxisGroup& g) { return !g.text.empty(); });
    // At least two named groups, and groups of two rows on average: else they do not help.
    if (named >= 2 && 2 * static_cast<int64_t>(r.size()) <= n) {
      keys = std::move(k);
      runs = std::move(r);
      break;
    }
  }
  std::vector<bool> starts(static_cast<size_t>(n), false);
  for (const AxisGroup& g : runs) {
    starts[static_cast<size_t>(g.first)] = true;
    if (g.text.empty()) continue;
    AxisGroup labelled = g;
    labelled.labelled = static_cast<double>(g.last - g.first + 1) * cell >= line;
    out.groups.push_back(std::move(labelled));
  }
  int64_t last = -out.stride;
  for (int64_t i = 0; i < n; ++i) {
    if (i - last < out.stride) continue;
    // A group's first row, or the next one on the stride; with groups, prefer a group's start
    // when it is near.
    if (!keys.empty() && !starts[static_cast<size_t>(i)]) {
      bool start_soon = false;
      for (int64_t d = 1; d < out.stride && i + d < n; ++d) {
        start_soon = start_soon || starts[static_cast<size_t>(i + d)];
      }
      if (start_soon) continue;
    }
    const std::string& s = names[static_cast<size_t>(i)];
    const std::string& k = keys.empty() ? std::string() : keys[static_cast<size_t>(i)];
    out.names.push_back({i, k.empty() ? s : s.substr(k.size() + 1)});
    last = i;
  }
  return out;
}

void draw_undefined_cell(uint8_t* rgb, int64_t width, int64_t x, int64_t y, int64_t w, int64_t h) {
  auto put = [&](int64_t px, int64_t py, Rgb c) {
    uint8_t* q = rgb + (py * width + px) * 3;
    q[0] = c.r;
    q[1] = c.g;
    q[2] = c.b;
  };
  for (int64_t dy = 0; dy < h; ++dy) {
    for (int64_t dx = 0; dx < w; ++dx) put(x + dx, y + dy, kMissingColor);
  }
  const int64_t side = std::min(w, h);
  const int64_t inset = side >= 10 ? side / 5 : 0;
  const int64_t thick = std::max<int64_t>(1, side / 16);
  const int64_t x0 = x + inset, y0 = y + inset, cw = w - 2 * inset, ch = h - 2 * inset;
  if (cw < 1 || ch < 1) return;
  const int64_t steps = std::max(cw, ch);
  for (int64_t k = 0; k < steps; ++k) {
    const int64_t u = steps == 1 ? 0 : k * (cw - 1) / (steps - 1);
    const int64_t v = steps == 1 ? 0 : k * (ch - 1) / (steps - 1);
    for (int64_t a = 0; a < thick; ++a) {
      for (int64_t b = 0; b < thick; ++b) {
        const int64_t px = std::min(u + a, cw - 1), py = std::min(v + b, ch - 1);
        put(x0 + px, y0 + py, kMarkColor);           // top-left to bottom-right
        put(x0 + cw - 1 - px, y0 + py, kMarkColor);  // top-right to bottom-left
      }
    }
  }
}

PngLayout png_layout(const Grid& grid, const HeatmapOptions& options) {
  // Character limits keep the picture a sensible size whatever the names.
  constexpr int64_t kMaxTitleChars = 64, kMaxAxisChars = 40, kMaxReasonChars = 100;
  constexpr int64_t kTextScale = 2;  // title, axis titles and tick labels
  constexpr int64_t kTextH = kGlyphHeight * kTextScale;
  constexpr int64_t kGap = 6;      // between a label and what it labels
  constexpr int64_t kBracket = 3;  // length of a bracket's end ticks
  constexpr int64_t kLegendLine = kGlyphHeight + 4;
  const at::Tensor v = checked_values("heatmap_png", grid);
  const auto nr = static_cast<int64_t>(grid.rows.size());
  const auto nc = static_cast<int64_t>(grid.cols.size());
  const UndefinedLegend legend = undefined_legend("heatmap_png", grid, v.data_ptr<double>());
  PngLayout l;
  // About 480 px for the grid, but never under 4 px (large grids, up to 600 layers) or over 48 px
  // (a 1 x 1 grid stays a visible square).
  const CellSize size = cell_size(nr, nc, 480.0, 4.0, 48.0, true);
  l.cell_w = static_cast<int64_t>(size.w);
  l.cell_h = static_cast<int64_t>(size.h);
  l.margin = 8;
  l.row_scale = l.cell_h >= 2 * kGlyphHeight ? 2 : 1;
  l.col_scale = l.cell_w >= 2 * kGlyphHeight ? 2 : 1;
  const int64_t row_line = kGlyphHeight * l.row_scale, col_line = kGlyphHeight * l.col_scale;
  const AxisLabels rows = axis_labels(grid.rows, static_cast<double>(l.cell_h), row_line);
  const AxisLabels cols = axis_labels(grid.cols, static_cast<double>(l.cell_w), col_line);
  l.row_stride = rows.stride;
  l.col_stride = cols.stride;
  const int64_t gw = nc * l.cell_w, gh = nr * l.cell_h;

  auto widest = [](const std::vector<AxisName>& names, int64_t scale) {
    int64_t w = 0;
    for (const auto& n : names) w = std::max(w, text_width(fit_text(n.text, kMaxNameChars), scale));
    return w;
  };
  auto widest_group = [](const std::vector<AxisGroup>& groups, int64_t scale) {
    int64_t w = 0;
    for (const auto& g : groups) {
      if (g.labelled) w = std::max(w, text_width(fit_text(g.text, kMaxGroupChars), scale));
    }
    return w;
  };
  const int64_t row_w = widest(rows.names, l.row_scale), col_h = widest(cols.names, l.col_scale);
  const int64_t row_group_w = widest_group(rows.groups, l.row_scale);
  const int64_t col_group_h = widest_group(cols.groups, l.col_scale);
  const std::string title = fit_text(heatmap_title(grid, options), kMaxTitleChars);
  const std::string row_title = fit_text(grid.row_label, kMaxAxisChars);
  const std::string col_title = fit_text(grid.col_label, kMaxAxisChars);
  const int64_t row_title_w = text_width(row_title, kTextScale);
  const int64_t col_title_w = text_width(col_title, kTextScale);

  // Left to right: row axis title (rotated), row group prefixes, their brackets, row names, grid,
  // colour bar, tick labels.
  const bool row_groups = !rows.groups.empty(), col_groups = !cols.groups.empty();
  l.grid_x = l.margin + (row_title.empty() ? 0 : kTextH + kGap) +
             (row_groups ? (row_group_w > 0 ? row_group_w + kGap : 0) + kBracket + 1 + kGap : 0) +
             (row_w > 0 ? row_w + kGap : 0);
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

  for (const auto& n : rows.names) {
    const std::string text = fit_text(n.text, kMaxNameChars);
    const int64_t w = text_width(text, l.row_scale);
    l.texts.push_back({text, l.grid_x - kGap - w,
                       l.grid_y + n.index * l.cell_h + (l.cell_h - row_line) / 2, l.row_scale,
                       false});
  }
  // Row brackets "[" open towards the names; their prefix right-aligned left of them, centred.
  const int64_t bracket_x = l.grid_x - (row_w > 0 ? row_w + kGap : 0) - kGap - kBracket - 1;
  for (const auto& g : rows.groups) {
    const int64_t y0 = l.grid_y + g.first * l.cell_h + 1;
    const int64_t y1 = l.grid_y + (g.last + 1) * l.cell_h - 2;
    l.lines.push_back({bracket_x, y0, bracket_x, std::max(y0, y1)});
    l.lines.push_back({bracket_x, y0, bracket_x + kBracket, y0});
    l.lines.push_back({bracket_x, std::max(y0, y1), bracket_x + kBracket, std::max(y0, y1)});
    if (!g.labelled) continue;
    const std::string text = fit_text(g.text, kMaxGroupChars);
    const int64_t mid = (y0 + y1) / 2;
    l.texts.push_back({text, bracket_x - kGap - text_width(text, l.row_scale), mid - row_line / 2,
                       l.row_scale, false});
  }
  // Column names read upwards and end next to the grid, so the longest one sets the margin.
  for (const auto& n : cols.names) {
    l.texts.push_back({fit_text(n.text, kMaxNameChars),
                       l.grid_x + n.index * l.cell_w + (l.cell_w - col_line) / 2,
                       l.grid_y + gh + kGap, l.col_scale, true});
  }
  const int64_t bracket_y = l.grid_y + gh + (col_h > 0 ? kGap + col_h : 0) + kGap + kBracket;
  for (const auto& g : cols.groups) {
    const int64_t x0 = l.grid_x + g.first * l.cell_w + 1;
    const int64_t x1 = std::max(x0, l.grid_x + (g.last + 1) * l.cell_w - 2);
    l.lines.push_back({x0, bracket_y, x1, bracket_y});
    l.lines.push_back({x0, bracket_y - kBracket, x0, bracket_y});
    l.lines.push_back({x1, bracket_y - kBracket, x1, bracket_y});
    if (!g.labelled) continue;
    l.texts.push_back({fit_text(g.text, kMaxGroupChars), (x0 + x1) / 2 - col_line / 2,
                       bracket_y + kGap, l.col_scale, true});
  }
  // The row axis title is centred on the rows, or starts at the top row when it is longer.
  const int64_t row_title_y = l.grid_y + std::max<int64_t>(0, (gh - row_title_w) / 2);
  if (!row_title.empty()) l.texts.push_back({row_title, l.margin, row_title_y, kTextScale, true});

  int64_t bottom =
      std::max({l.grid_y + gh + (col_h > 0 ? kGap + col_h : 0),
                col_groups ? bracket_y + (col_group_h > 0 ? kGap + col_group_h : 0) : int64_t{0},
                l.bar_y + l.bar_h + kTextH / 2, row_title_y + row_title_w});
  if (!col_title.empty()) {
    const int64_t x = std::max(l.margin, l.grid_x + (gw - col_title_w) / 2);
    l.texts.push_back({col_title, x, bottom + 2 * kGap, kTextScale, false});
    right = std::max(right, x + col_title_w);
    bottom += 2 * kGap + kTextH;
  }
  // The legend of undefined cells: a sample cell, a header, one numbered line per reason.
  if (legend.total > 0) {
    l.swatch = 12;
    l.swatch_x = l.margin;
    l.swatch_y = bottom + 2 * kGap;
    const std::string header = "undefined cells (" + std::to_string(legend.total) + " of " +
                               std::to_string(nr * nc) + "):";
    const int64_t header_x = l.swatch_x + l.swatch + kGap;
    l.texts.push_back({header, header_x, l.swatch_y + (l.swatch - kGlyphHeight) / 2 + 1, 1, false});
    right = std::max(right, header_x + text_width(header, 1));
    int64_t y = l.swatch_y + l.swatch + 4;
    for (const std::string& line : legend_lines(legend, kMaxReasonChars)) {
      const std::string text = printable_text(line);
      l.texts.push_back({text, header_x, y, 1, false});
      right = std::max(right, header_x + text_width(text, 1));
      y += kLegendLine;
    }
    bottom = y;
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

bool has_inference(const Grid& grid) {
  return grid.inference.resamples > 0 || grid.inference.permutations > 0;
}

namespace {

// A [rows, cols] tensor as nested arrays, null for non-finite cells; checked against the grid.
nlohmann::json cell_matrix(const char* fn, const char* name, const Grid& grid,
                           const at::Tensor& t) {
  const auto r = static_cast<int64_t>(grid.rows.size()), c = static_cast<int64_t>(grid.cols.size());
  TORCH_CHECK_VALUE(t.defined() && t.dim() == 2 && t.size(0) == r && t.size(1) == c, fn,
                    ": grid.inference.", name, " must be [", r, ", ", c, "], but got ",
                    t.defined() ? detail::shape_str(t) : std::string("an undefined tensor"));
  const at::Tensor v = t.to(at::kDouble).cpu().contiguous();
  const double* p = v.data_ptr<double>();
  nlohmann::json out = nlohmann::json::array();
  for (int64_t i = 0; i < r; ++i) {
    nlohmann::json row = nlohmann::json::array();
    for (int64_t j = 0; j < c; ++j) {
      if (std::isfinite(p[i * c + j])) {
        row.push_back(p[i * c + j]);
      } else {
        row.push_back(nullptr);
      }
    }
    out.push_back(std::move(row));
  }
  return out;
}

}  // namespace

nlohmann::json inference_to_json(const Grid& grid) {
  constexpr const char* fn = "grid_to_json";
  const GridInference& inf = grid.inference;
  nlohmann::json j;
  j["seed"] = inf.seed;
  j["level"] = inf.level;
  j["resamples"] = inf.resamples;
  j["permutations"] = inf.permutations;
  if (inf.resamples > 0) {
    j["method"] = inf.method;
    j["low"] = cell_matrix(fn, "low", grid, inf.low);
    j["high"] = cell_matrix(fn, "high", grid, inf.high);
    j["standard_error"] = cell_matrix(fn, "standard_error", grid, inf.standard_error);
    if (inf.invalid.defined()) j["invalid"] = cell_matrix(fn, "invalid", grid, inf.invalid);
  }
  if (inf.permutations > 0) {
    j["p_value"] = cell_matrix(fn, "p_value", grid, inf.p_value);
    j["null_mean"] = cell_matrix(fn, "null_mean", grid, inf.null_mean);
  }
  nlohmann::json undefined = nlohmann::json::array();
  for (const UndefinedCells& u : inf.undefined) {
    nlohmann::json cells = nlohmann::json::array();
    for (const auto& [row, col] : u.cells) cells.push_back({row, col});
    undefined.push_back({{"reason", u.reason}, {"cells", std::move(cells)}});
  }
  j["undefined"] = std::move(undefined);
  return j;
}

std::string grid_cells_csv(const Grid& grid) {
  constexpr const char* fn = "grid_cells_csv";
  at::Tensor v = checked_values(fn, grid);
  const GridInference& inf = grid.inference;
  const int64_t r = v.size(0), c = v.size(1);
  std::vector<std::pair<const char*, at::Tensor>> cols = {{"value", v}};
  if (inf.resamples > 0) {
    cols.insert(cols.end(),
                {{"low", inf.low}, {"high", inf.high}, {"standard_error", inf.standard_error}});
    if (inf.invalid.defined()) cols.emplace_back("invalid", inf.invalid);
  }
  if (inf.permutations > 0)
    cols.insert(cols.end(), {{"p_value", inf.p_value}, {"null_mean", inf.null_mean}});
  for (auto& [name, t] : cols) {
    TORCH_CHECK_VALUE(t.defined() && t.dim() == 2 && t.size(0) == r && t.size(1) == c, fn,
                      ": grid.inference.", name, " must be [", r, ", ", c, "]");
    t = t.to(at::kDouble).cpu().contiguous();
  }
  std::ostringstream out;
  out << csv_field(grid.row_label) << ',' << csv_field(grid.col_label);
  for (const auto& [name, t] : cols) out << ',' << name;
  out << "\r\n";
  for (int64_t i = 0; i < r; ++i) {
    for (int64_t j = 0; j < c; ++j) {
      out << csv_field(grid.rows[i]) << ',' << csv_field(grid.cols[j]);
      for (const auto& [name, t] : cols) {
        const double x = t.data_ptr<double>()[i * c + j];
        out << ',' << (std::isnan(x) ? std::string() : number17(x));
      }
      out << "\r\n";
    }
  }
  return out.str();
}

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
  if (has_inference(grid)) j["inference"] = inference_to_json(grid);
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
  constexpr int64_t kMaxReasonChars = 160;
  check_range(fn, options);
  at::Tensor v = checked_values(fn, grid);
  const int64_t nr = v.size(0), nc = v.size(1);
  const double* p = v.data_ptr<double>();
  const detail::UndefinedLegend legend = detail::undefined_legend(fn, grid, p);
  // Above kSvgMaxTooltipCells cells the cells are drawn compactly (see report.h) on whole pixels.
  const bool compact = nr * nc > kSvgMaxTooltipCells;
  const detail::CellSize size = detail::cell_size(nr, nc, 480.0, 4.0, 40.0, compact);
  const double cw = size.w, ch = size.h;
  const double row_font = std::clamp(ch - 2.0, 8.0, 12.0);
  const double col_font = std::clamp(cw - 2.0, 8.0, 12.0);
  const detail::AxisLabels rows = detail::axis_labels(grid.rows, ch, row_font);
  const detail::AxisLabels cols = detail::axis_labels(grid.cols, cw, col_font);
  const double title_font = 16.0, axis_font = 13.0, margin = 10.0, legend_font = 11.0;
  const double gap = 6.0, bracket = 3.0, legend_line = 15.0, swatch = 12.0;
  auto widest = [](const std::vector<detail::AxisName>& names, double font) {
    double w = 0.0;
    for (const auto& n : names) w = std::max(w, text_width(n.text, font));
    return w;
  };
  auto widest_group = [](const std::vector<detail::AxisGroup>& groups, double font) {
    double w = 0.0;
    for (const auto& g : groups) {
      if (g.labelled) w = std::max(w, text_width(g.text, font));
    }
    return w;
  };
  const double row_w = widest(rows.names, row_font), col_h = widest(cols.names, col_font);
  const double row_group_w = widest_group(rows.groups, row_font);
  const double col_group_h = widest_group(cols.groups, col_font);
  const bool row_groups = !rows.groups.empty(), col_groups = !cols.groups.empty();
  const std::string title = detail::heatmap_title(grid, options);
  const std::vector<std::string> reasons = detail::legend_lines(legend, kMaxReasonChars);

  double left = margin + axis_font + 8.0 +
                (row_groups ? (row_group_w > 0.0 ? row_group_w + gap : 0.0) + bracket + gap : 0.0) +
                row_w + gap;
  double top = margin + title_font + 14.0;
  if (compact) {
    left = std::ceil(left);
    top = std::ceil(top);
  }
  const double gw = cw * static_cast<double>(nc), gh = ch * static_cast<double>(nr);
  const double bar_x = left + gw + 20.0, bar_w = 16.0, bar_h = std::max(gh, 150.0);
  const double body_h = std::max(gh, bar_h);
  const double bracket_y = top + gh + gap + col_h + gap + bracket;
  const double below =
      std::max(top + body_h + gap + col_h,
               col_groups ? bracket_y + (col_group_h > 0.0 ? gap + col_group_h : 0.0) : 0.0);
  const double col_title_y = below + 8.0 + axis_font;
  const double legend_y = col_title_y + 12.0;
  double width =
      std::max(bar_x + bar_w + 8.0 + 60.0 + margin, text_width(title, title_font) + 2.0 * margin);
  for (const auto& line : reasons) {
    width = std::max(width, margin + swatch + gap + text_width(line, legend_font) + margin);
  }
  const double height =
      reasons.empty()
          ? col_title_y + margin
          : legend_y + swatch + legend_line * static_cast<double>(reasons.size()) + margin;
  const std::string mark = hex(detail::kMarkColor), missing = hex(detail::kMissingColor);

  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(1);
  s << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" viewBox=\"0 0 " << width << ' ' << height
    << "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n";
  // Colour bar gradient, bottom (vmin) to top (vmax); the tile of a compact undefined cell (one
  // cell unit: grey with a cross).
  s << "<defs><linearGradient id=\"colorbar\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">";
  for (int k = 0; k <= 10; ++k) {
    s << "<stop offset=\"" << k / 10.0 << "\" stop-color=\"" << hex(detail::colormap(k / 10.0))
      << "\"/>";
  }
  s << "</linearGradient>";
  if (compact && legend.total > 0) {
    s << "<pattern id=\"undefined-cell\" patternUnits=\"userSpaceOnUse\" width=\"1\" "
         "height=\"1\"><rect width=\"1\" height=\"1\" fill=\""
      << missing << "\"/><path d=\"M.2 .2L.8 .8M.8 .2L.2 .8\" stroke=\"" << mark
      << "\" stroke-width=\".15\"/></pattern>";
  }
  s << "</defs>\n";
  s << "<text x=\"" << width / 2.0 << "\" y=\"" << margin + title_font
    << "\" text-anchor=\"middle\" font-size=\"" << title_font << "\" font-weight=\"bold\">"
    << xml_escape(title) << "</text>\n";

  if (!compact) {
    // Cells, with the value (or why there is none) as a tooltip and, when there is room, the
    // value as text; undefined cells are grey with a cross.
    const bool values_fit = cw >= 30.0 && ch >= 30.0;
    std::ostringstream marks;
    marks.setf(std::ios::fixed);
    marks.precision(1);
    const double inset = 0.2 * std::min(cw, ch);
    const std::vector<bool> uncertain = detail::uncertain_cells(grid, options);
    const GridInference& inf = grid.inference;
    auto cells_of = [&](const at::Tensor& t) {
      return t.defined() && t.numel() == nr * nc ? t.to(at::kDouble).cpu().contiguous()
                                                 : at::Tensor();
    };
    const at::Tensor lo_t = cells_of(inf.low), hi_t = cells_of(inf.high),
                     p_t = cells_of(inf.p_value);
    auto cell_of = [&](const at::Tensor& t, int64_t i, int64_t j) {
      return t.defined() ? t.data_ptr<double>()[i * nc + j] : std::nan("");
    };
    std::ostringstream rings;
    rings.setf(std::ios::fixed);
    rings.precision(1);
    s << "<g id=\"cells\">\n";
    for (int64_t i = 0; i < nr; ++i) {
      for (int64_t j = 0; j < nc; ++j) {
        const double x = p[i * nc + j];
        const int32_t r = legend.cell_reason[static_cast<size_t>(i * nc + j)];
        const double t = detail::scaled(x, options.vmin, options.vmax);
        const double cx = left + cw * static_cast<double>(j);
        const double cy = top + ch * static_cast<double>(i);
        s << "<rect x=\"" << cx << "\" y=\"" << cy << "\" width=\"" << cw << "\" height=\"" << ch
          << "\" fill=\"" << hex(detail::colormap(t)) << "\"><title>" << xml_escape(grid.rows[i])
          << " / " << xml_escape(grid.cols[j]) << ": ";
        if (r >= 0) {
          s << "undefined (" << r + 1
            << "): " << xml_escape(legend.reasons[static_cast<size_t>(r)]);
          marks << "<path d=\"M" << cx + inset << ' ' << cy + inset << 'L' << cx + cw - inset << ' '
                << cy + ch - inset << 'M' << cx + cw - inset << ' ' << cy + inset << 'L'
                << cx + inset << ' ' << cy + ch - inset << "\"/>\n";
        } else {
          s << fixed(x, 4);
          if (has_inference(grid)) {
            const double lo = cell_of(lo_t, i, j), hi = cell_of(hi_t, i, j);
            const double pv = cell_of(p_t, i, j);
            if (std::isfinite(lo)) s << " [" << fixed(lo, 4) << ", " << fixed(hi, 4) << "]";
            if (std::isfinite(pv)) s << ", p = " << fixed(pv, 4);
          }
          if (uncertain[static_cast<size_t>(i * nc + j)]) {
            rings << "<circle cx=\"" << cx + 0.8 * cw << "\" cy=\"" << cy + 0.2 * ch << "\" r=\""
                  << 0.12 * std::min(cw, ch) << "\"/>\n";
          }
        }
        s << "</title></rect>";
        if (values_fit && r < 0) {
          const bool dark = t < 0.6;
          s << "<text x=\"" << cx + cw / 2.0 << "\" y=\"" << cy + ch / 2.0 + 3.5
            << "\" text-anchor=\"middle\" font-size=\"9\" fill=\"" << (dark ? "#ffffff" : "#000000")
            << "\">" << fixed(x, 2) << "</text>";
        }
        s << '\n';
      }
    }
    s << "</g>\n";
    if (!rings.str().empty()) {
      s << "<g id=\"uncertain-marks\" fill=\"none\" stroke=\"" << mark << "\" stroke-width=\""
        << std::max(0.6, std::min(cw, ch) / 24.0) << "\" pointer-events=\"none\">\n"
        << rings.str() << "</g>\n";
    }
    if (legend.total > 0) {
      // The crosses let the pointer through to the cell's tooltip.
      s << "<g id=\"undefined-marks\" fill=\"none\" stroke=\"" << mark << "\" stroke-width=\""
        << std::max(0.8, std::min(cw, ch) / 16.0) << "\" pointer-events=\"none\">\n"
        << marks.str() << "</g>\n";
    }
  } else {
    // In cell units (translate + scale), so every number is a small integer: per colour, one
    // stroked path of row runs ("m<dx> <dy>h<length>", relative to the previous run's end); per
    // reason, one path of filled row runs with the crossed tile and the reason as its tooltip.
    std::map<uint32_t, std::string> by_color;
    std::map<uint32_t, std::pair<int64_t, int64_t>> pen;  // each colour path's current point
    std::vector<std::string> by_reason(legend.reasons.size());
    std::vector<std::pair<int64_t, int64_t>> start(legend.reasons.size(), {-1, -1});
    auto move = [](std::string& d, const char* abs, const char* rel, int64_t x, int64_t y,
                   std::pair<int64_t, int64_t>& at) {
      if (at.first < 0) {
        d += abs + std::to_string(x) + ' ' + std::to_string(y);
      } else {
        d += rel + std::to_string(x - at.first) + ' ' + std::to_string(y - at.second);
      }
    };
    for (int64_t i = 0; i < nr; ++i) {
      for (int64_t j = 0; j < nc;) {
        const size_t k = static_cast<size_t>(i * nc + j);
        const int32_t r = legend.cell_reason[k];
        const detail::Rgb c = detail::colormap(detail::scaled(p[k], options.vmin, options.vmax));
        const uint32_t key = (uint32_t{c.r} << 16) | (uint32_t{c.g} << 8) | c.b;
        int64_t end = j + 1;
        auto same = [&](int64_t jj) {
          const size_t kk = static_cast<size_t>(i * nc + jj);
          if (legend.cell_reason[kk] != r) return false;
          if (r >= 0) return true;
          const detail::Rgb d = detail::colormap(detail::scaled(p[kk], options.vmin, options.vmax));
          return d.r == c.r && d.g == c.g && d.b == c.b;
        };
        while (end < nc && same(end)) ++end;
        const std::string len = std::to_string(end - j);
        if (r >= 0) {
          // A filled rectangle; after 'z' the current point is back at its start.
          auto& at = start[static_cast<size_t>(r)];
          std::string& d = by_reason[static_cast<size_t>(r)];
          move(d, "M", "m", j, i, at);
          d += 'h' + len + "v1h-" + len + 'z';
          at = {j, i};
        } else {
          // A horizontal stroke 1 unit wide along the row's middle (y + 0.5, written in the
          // first move only: later moves are relative).
          auto it = pen.find(key);
          std::string& d = by_color[key];
          if (it == pen.end()) {
            d += 'M' + std::to_string(j) + ' ' + std::to_string(i) + ".5";
            it = pen.emplace(key, std::pair<int64_t, int64_t>{j, i}).first;
          } else {
            move(d, "M", "m", j, i, it->second);
          }
          d += 'h' + len;
          it->second = {end, i};
        }
        j = end;
      }
    }
    s << "<g id=\"cells\" transform=\"translate(" << left << ' ' << top << ") scale(" << cw << ' '
      << ch << ")\" shape-rendering=\"crispEdges\">\n<g fill=\"none\" stroke-width=\"1\">\n";
    for (const auto& [key, d] : by_color) {
      char color[8];
      std::snprintf(color, sizeof(color), "#%06x", key);
      s << "<path stroke=\"" << color << "\" d=\"" << d << "\"/>\n";
    }
    s << "</g>\n";
    for (size_t r = 0; r < by_reason.size(); ++r) {
      s << "<path fill=\"url(#undefined-cell)\" d=\"" << by_reason[r] << "\"><title>undefined ("
        << r + 1 << "): " << xml_escape(legend.reasons[r]) << "</title></path>\n";
    }
    s << "</g>\n";
  }

  // Row names right-aligned left of the grid; column names below it, rotated to read upwards so
  // long names take height, not width. Groups (shared prefixes) get a bracket and their prefix.
  s << "<g id=\"row-names\" font-size=\"" << row_font << "\">\n";
  for (const auto& n : rows.names) {
    s << "<text x=\"" << left - gap << "\" y=\""
      << top + ch * (static_cast<double>(n.index) + 0.5) + row_font * 0.35
      << "\" text-anchor=\"end\">" << xml_escape(n.text) << "</text>\n";
  }
  s << "</g>\n";
  if (row_groups) {
    const double bx = left - gap - row_w - gap - bracket;
    s << "<g id=\"row-groups\" font-size=\"" << row_font
      << "\" stroke-width=\"0.75\" fill=\"none\">\n";
    for (const auto& g : rows.groups) {
      const double y0 = top + ch * static_cast<double>(g.first) + 1.0;
      const double y1 = std::max(y0, top + ch * static_cast<double>(g.last + 1) - 1.0);
      s << "<path stroke=\"#000000\" d=\"M" << bx + bracket << ' ' << y0 << 'H' << bx << 'V' << y1
        << 'H' << bx + bracket << "\"/>";
      if (g.labelled) {
        s << "<text fill=\"#000000\" x=\"" << bx - gap << "\" y=\""
          << (y0 + y1) / 2.0 + row_font * 0.35 << "\" text-anchor=\"end\">" << xml_escape(g.text)
          << "</text>";
      }
      s << '\n';
    }
    s << "</g>\n";
  }
  s << "<g id=\"col-names\" font-size=\"" << col_font << "\">\n";
  for (const auto& n : cols.names) {
    const double x = left + cw * (static_cast<double>(n.index) + 0.5) + col_font * 0.35;
    const double y = top + gh + gap;
    s << "<text transform=\"translate(" << x << ',' << y << ") rotate(-90)\" text-anchor=\"end\">"
      << xml_escape(n.text) << "</text>\n";
  }
  s << "</g>\n";
  if (col_groups) {
    s << "<g id=\"col-groups\" font-size=\"" << col_font
      << "\" stroke-width=\"0.75\" fill=\"none\">\n";
    for (const auto& g : cols.groups) {
      const double x0 = left + cw * static_cast<double>(g.first) + 1.0;
      const double x1 = std::max(x0, left + cw * static_cast<double>(g.last + 1) - 1.0);
      s << "<path stroke=\"#000000\" d=\"M" << x0 << ' ' << bracket_y - bracket << 'V' << bracket_y
        << 'H' << x1 << 'V' << bracket_y - bracket << "\"/>";
      if (g.labelled) {
        s << "<text fill=\"#000000\" transform=\"translate(" << (x0 + x1) / 2.0 + col_font * 0.35
          << ',' << bracket_y + gap << ") rotate(-90)\" text-anchor=\"end\">" << xml_escape(g.text)
          << "</text>";
      }
      s << '\n';
    }
    s << "</g>\n";
  }
  // Axis titles.
  s << "<text x=\"" << left + gw / 2.0 << "\" y=\"" << col_title_y
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
  s << "</g>\n";

  // The undefined cells' legend: a sample cell, then each reason once, numbered as in the
  // tooltips, shortened when very long (the whole reason is the line's tooltip).
  if (!reasons.empty()) {
    const double tx = margin + swatch + gap;
    s << "<g id=\"undefined-legend\" font-size=\"" << legend_font << "\">\n<rect x=\"" << margin
      << "\" y=\"" << legend_y << "\" width=\"" << swatch << "\" height=\"" << swatch
      << "\" fill=\"" << missing << "\"/><path d=\"M" << margin + 2.0 << ' ' << legend_y + 2.0
      << "l8 8m0 -8l-8 8\" stroke=\"" << mark << "\" stroke-width=\"1\"/>\n<text x=\"" << tx
      << "\" y=\"" << legend_y + swatch - 2.0 << "\">undefined cells (" << legend.total << " of "
      << nr * nc << "):</text>\n";
    for (size_t k = 0; k < reasons.size(); ++k) {
      s << "<text x=\"" << tx << "\" y=\""
        << legend_y + swatch + legend_line * static_cast<double>(k + 1) - 3.0 << "\">"
        << xml_escape(reasons[k]);
      if (k < legend.reasons.size() && static_cast<int64_t>(k) < detail::kMaxLegendReasons) {
        s << "<title>" << xml_escape(legend.reasons[k]) << "</title>";
      }
      s << "</text>\n";
    }
    s << "</g>\n";
  }
  s << "</svg>\n";
  return s.str();
}

std::vector<uint8_t> heatmap_png(const Grid& grid, const HeatmapOptions& options, int64_t* width,
                                 int64_t* height) {
  constexpr const char* fn = "heatmap_png";
  check_range(fn, options);
  at::Tensor v = checked_values(fn, grid);
  const int64_t nr = v.size(0), nc = v.size(1);
  const double* p = v.data_ptr<double>();
  const detail::UndefinedLegend legend = detail::undefined_legend(fn, grid, p);
  const detail::PngLayout l = detail::png_layout(grid, options);
  const std::vector<bool> uncertain = detail::uncertain_cells(grid, options);
  std::vector<uint8_t> px(static_cast<size_t>(l.width * l.height * 3), 255);
  auto put = [&](int64_t x, int64_t y, detail::Rgb c) {
    uint8_t* q = &px[static_cast<size_t>((y * l.width + x) * 3)];
    q[0] = c.r;
    q[1] = c.g;
    q[2] = c.b;
  };
  for (int64_t i = 0; i < nr; ++i) {
    for (int64_t j = 0; j < nc; ++j) {
      const int64_t x0 = l.grid_x + j * l.cell_w, y0 = l.grid_y + i * l.cell_h;
      if (legend.cell_reason[static_cast<size_t>(i * nc + j)] >= 0) {
        detail::draw_undefined_cell(px.data(), l.width, x0, y0, l.cell_w, l.cell_h);
        continue;
      }
      const detail::Rgb c =
          detail::colormap(detail::scaled(p[i * nc + j], options.vmin, options.vmax));
      for (int64_t y = 0; y < l.cell_h; ++y) {
        for (int64_t x = 0; x < l.cell_w; ++x) put(x0 + x, y0 + y, c);
      }
      if (uncertain[static_cast<size_t>(i * nc + j)] && l.cell_w >= 6 && l.cell_h >= 6) {
        // A hollow square in the top-right corner.
        const int64_t side = std::max<int64_t>(3, std::min(l.cell_w, l.cell_h) / 4);
        const int64_t sx = x0 + l.cell_w - side - 1, sy = y0 + 1;
        for (int64_t k = 0; k < side; ++k) {
          put(sx + k, sy, detail::kMarkColor);
          put(sx + k, sy + side - 1, detail::kMarkColor);
          put(sx, sy + k, detail::kMarkColor);
          put(sx + side - 1, sy + k, detail::kMarkColor);
        }
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
  for (const auto& line : l.lines) {
    for (int64_t y = line.y0; y <= line.y1; ++y) {
      for (int64_t x = line.x0; x <= line.x1; ++x) put(x, y, {0, 0, 0});
    }
  }
  if (l.swatch > 0) {
    detail::draw_undefined_cell(px.data(), l.width, l.swatch_x, l.swatch_y, l.swatch, l.swatch);
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

std::string undefined_summary(const Grid& grid) {
  at::Tensor v = checked_values("undefined_summary", grid);
  const detail::UndefinedLegend legend =
      detail::undefined_legend("undefined_summary", grid, v.data_ptr<double>());
  if (legend.total == 0) return "";
  std::string out = "undefined cells: " + std::to_string(legend.total) + " of " +
                    std::to_string(v.numel()) + "\n";
  for (const std::string& line : detail::legend_lines(legend, 240)) out += "  " + line + "\n";
  return out;
}

std::string heatmap_terminal(const Grid& grid, bool color) {
  at::Tensor v = checked_values("heatmap_terminal", grid);
  const int64_t nr = v.size(0), nc = v.size(1);
  const double* p = v.data_ptr<double>();
  const detail::UndefinedLegend legend = detail::undefined_legend("heatmap_terminal", grid, p);
  constexpr size_t kMaxName = 28;
  auto shorten = [](const std::string& s) {
    return s.size() <= kMaxName ? s : "~" + s.substr(s.size() - (kMaxName - 1));
  };
  size_t name_w = 0;
  for (const auto& r : grid.rows) name_w = std::max(name_w, shorten(r).size());
  auto pad = [&](const std::string& s) { return s + std::string(name_w - s.size(), ' '); };
  // An undefined cell: "x" (digits), or "xx" in dark grey on light grey (colours), unlike any
  // colour of the scale.
  const std::string mark = color ? "\x1b[48;5;252;38;5;238mxx\x1b[0m" : "x";
  // A cell: two spaces on an ANSI 256-colour background (the 6x6x6 cube), or one digit 0-9.
  auto cell = [&](double x) -> std::string {
    const double t = detail::scaled(x, 0.0, 1.0);
    if (!std::isfinite(t)) return mark;
    if (!color) {
      return std::string(1, static_cast<char>('0' + std::min(9, static_cast<int>(t * 10.0))));
    }
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
    if (legend.total > 0) out << ", " << mark << " = undefined";
  } else {
    out << "scale: digit d = value in [d/10, (d+1)/10), 9 includes 1, x = undefined";
  }
  out << "\ncolumns:";
  for (int64_t j = 0; j < nc; ++j) out << ' ' << j << '=' << grid.cols[j];
  out << '\n';
  out << undefined_summary(grid);
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
  // A unique temporary beside the target (mkstemp), synced, then renamed: the one atomic writer.
  try {
    detail::write_file_atomically(fn, path, bytes.data(), bytes.size());
  } catch (const c10::Error& e) {
    std::string why = e.what_without_backtrace();
    const std::string prefix = std::string(fn) + ": path must be writable, but ";
    if (why.rfind(prefix, 0) == 0) why = why.substr(prefix.size());
    TORCH_CHECK(false, fn, ": path \"", path, "\" could not be written (", why, ")");
  }
}

namespace {

// Writes `bytes` to the new file `path` (O_EXCL) and fsyncs it; returns "" or what failed.
std::string write_new_file(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd < 0) return std::string("open: ") + std::strerror(errno);
  std::string error;
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
  return error;
}

// The temporary folders of write_grid_files are ".<stem>.tmp.<pid>.XXXXXX"; those of writers
// that no longer run (killed mid-write) are removed, so that a SIGKILL leaves no lasting orphan.
void remove_stale_temporaries(const fs::path& dir, const std::string& stem) {
  const std::string prefix = "." + stem + ".tmp.";
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string rest = name.substr(prefix.size());  // "<pid>.XXXXXX"
    const size_t dot = rest.find('.');
    if (dot == std::string::npos || dot == 0 || rest.size() - dot - 1 != 6) continue;
    const std::string pid_text = rest.substr(0, dot);
    if (pid_text.find_first_not_of("0123456789") != std::string::npos || pid_text.size() > 9)
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
    std::error_code e2;
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH && it->is_directory(e2))
      fs::remove_all(it->path(), e2);
  }
}

}  // namespace

std::vector<std::string> write_grid_files(const Grid& grid, const std::string& dir,
                                          const std::string& stem, const HeatmapOptions& options) {
  constexpr const char* fn = "write_grid_files";
  TORCH_CHECK_VALUE(!stem.empty() && stem.find('/') == std::string::npos, fn,
                    ": stem must be a non-empty file name without '/', but got \"", stem, "\"");
  TORCH_CHECK_VALUE(!dir.empty(), fn, ": dir must be a folder name, but got an empty string");
  std::error_code ec;
  fs::create_directories(dir, ec);
  TORCH_CHECK(!ec && fs::is_directory(dir), fn, ": dir \"", dir,
              "\" must be a folder that exists or can be created, but ",
              ec ? ec.message() : std::string("it is not a folder"));
  // Render everything first, so that a rendering error writes no file at all.
  const std::string json = grid_to_json(grid).dump(2) + "\n";
  const std::string csv = grid_to_csv(grid);
  const std::string cells = has_inference(grid) ? grid_cells_csv(grid) : std::string();
  const std::string svg = heatmap_svg(grid, options);
  const auto png = heatmap_png(grid, options, nullptr, nullptr);
  std::vector<std::pair<const char*, std::string>> files = {
      {".json", json}, {".csv", csv}, {".svg", svg}, {".png", std::string(png.begin(), png.end())}};
  if (has_inference(grid)) files.emplace_back("_cells.csv", cells);
  const fs::path base = fs::path(dir) / stem;
  for (const auto& [ext, bytes] : files) {
    const std::string path = base.string() + ext;
    TORCH_CHECK(!fs::is_directory(path, ec), fn, ": dir \"", dir,
                "\" must not hold a folder named \"", stem + ext,
                "\" where the file is to be written");
  }
  remove_stale_temporaries(dir, stem);

  // The set is replaced all or nothing: every file is written into a fresh temporary folder in
  // `dir` (the same file system, so rename is atomic), and renamed in only once all are written.
  // A full disk or a failed write removes the folder and leaves the old set as it was.
  std::string tmpl =
      (fs::path(dir) / ("." + stem + ".tmp." + std::to_string(::getpid()) + ".XXXXXX")).string();
  TORCH_CHECK(
      ::mkdtemp(tmpl.data()) != nullptr, fn, ": dir \"", dir,
      "\" must be writable, but creating a temporary folder in it failed: ", std::strerror(errno));
  const fs::path tmp(tmpl);
  struct Cleanup {
    fs::path path;
    ~Cleanup() {
      std::error_code e;
      fs::remove_all(path, e);
    }
  } cleanup{tmp};
  for (const auto& [ext, bytes] : files) {
    const std::string error = write_new_file((tmp / (stem + ext)).string(), bytes);
    TORCH_CHECK(error.empty(), fn, ": path \"", base.string() + ext, "\" could not be written (",
                error, "); the previous files of the set, if any, are unchanged");
  }
  // The old files are kept (hard links in the temporary folder) until every rename is done, so
  // that a failing rename can put them back.
  std::vector<bool> kept(files.size(), false);
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string target = base.string() + files[i].first;
    const std::string old = (tmp / ("old" + std::string(files[i].first))).string();
    kept[i] = ::link(target.c_str(), old.c_str()) == 0;
  }
  std::vector<std::string> paths;
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string target = base.string() + files[i].first;
    if (std::rename((tmp / (stem + files[i].first)).c_str(), target.c_str()) != 0) {
      const std::string error = std::strerror(errno);
      for (size_t j = 0; j < i; ++j) {  // undo the renames done so far
        const std::string t = base.string() + files[j].first;
        const std::string old = (tmp / ("old" + std::string(files[j].first))).string();
        if (kept[j]) {
          std::rename(old.c_str(), t.c_str());
        } else {
          ::unlink(t.c_str());
        }
      }
      TORCH_CHECK(false, fn, ": path \"", target, "\" could not be written (rename: ", error,
                  "); the previous files of the set, if any, are unchanged");
    }
    paths.push_back(target);
  }
  // A set without inference has no cells file: one left by an earlier run would not belong to it.
  if (!has_inference(grid)) ::unlink((base.string() + "_cells.csv").c_str());
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);  // the renames themselves survive a crash
    ::close(dfd);
  }
  return paths;
}

}  // namespace svcca
