// The offset each column of a frame carries, for the annotator's readout-pattern probe
// (d2d_ext.stripes.line_offsets). Plain C++ on raw arrays, called from the module function
// d2d_ext._C.line_offsets (d2d.cpp).
#pragma once

#include <cstdint>

namespace d2d {

struct ColumnOffsets {
  double size;   // 1.4826 times the median absolute offset: the pattern's robust size
  double error;  // the standard error of one offset (a median over the rows)
};

// For rows (n * W, row-major float32, n >= 1, W >= width): each pixel's departure from the
// median of the `width` (odd) pixels centred on it in its row, the edge pixels repeated beyond
// the edge; offsets[c] (W) the median over the rows of column c's departures (the mean of the
// two middle ones for an even n, as numpy takes it, in float32); and the pattern's size and one
// offset's standard error, as d2d_ext.stripes._offsets computes them; all NaN where a departure
// is not finite (a NaN or an infinity in the rows).
ColumnOffsets column_offsets(const float* rows, int64_t n, int64_t W, int width, float* offsets);

}  // namespace d2d
