// A 5x8 bitmap font for printable ASCII (32..126) that labels the PNG heatmap; the glyphs are
// original to this project. Other bytes draw as '?' (one '?' per UTF-8 sequence); fit_text
// shortens long labels to "..." + their end so that the picture stays a sensible size.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "svcca/report/heatmap.h"

namespace svcca {
namespace detail {

// A glyph is 5 px wide and 8 px tall (rows 0-6 hold capitals and digits, row 7 descenders);
// characters advance by 6 px, so there is 1 px between them. Everything scales by `scale`.
inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 8;
inline constexpr int kGlyphAdvance = 6;

// The rows of `ch`'s glyph, top to bottom; bit 4 is the leftmost column. '?' for a character
// outside 32..126.
const std::array<uint8_t, kGlyphHeight>& glyph(char ch);

// `text` with every character outside 32..126 replaced by '?', one '?' per UTF-8 sequence
// (continuation bytes 0x80-0xBF after a lead byte are dropped).
std::string printable_text(const std::string& text);

// printable_text(text), and when that is longer than max_chars (>= 4), "..." followed by its
// last max_chars - 3 characters (layer names differ most at their end).
std::string fit_text(const std::string& text, int64_t max_chars);

// Width in px of printable_text(text) drawn at `scale`: chars * 6 * scale - scale (no spacing
// after the last character), 0 for an empty string. The height is always kGlyphHeight * scale.
int64_t text_width(const std::string& text, int64_t scale);

enum class TextDirection {
  kRight,  // left to right
  kUp,     // rotated 90 degrees counter-clockwise: reads from bottom to top
};

// Draws printable_text(text) into an RGB8 image (width x height, rows of width * 3 bytes) with
// the top-left corner of the text's bounding box at (x, y). The box is text_width(text, scale)
// by kGlyphHeight * scale for kRight, and kGlyphHeight * scale by text_width(text, scale) for kUp.
// Only ink pixels are written; pixels outside the image are skipped. Throws when scale < 1.
//   draw_text(px.data(), w, h, 10, 10, "conv1", 2, {0, 0, 0}, TextDirection::kRight);
void draw_text(uint8_t* rgb, int64_t width, int64_t height, int64_t x, int64_t y,
               const std::string& text, int64_t scale, Rgb color,
               TextDirection direction = TextDirection::kRight);

}  // namespace detail
}  // namespace svcca
