// The column offsets of a readout pattern (line_offsets.h).
//
// The probe runs on every frame with points, on about 4,096 pixels: in numpy its running median
// (a sorting network of 7 shifted copies) and its per-column sort are some fifty calls on arrays
// that small, each costing more in the call than in the work. Here the same steps are loops the
// compiler vectorises across a row: the running median by the same odd-even transposition
// network, elementwise over the row's shifted copies, and each column's median by the network
// across the rows (a selection per column where the rows are many).
#include "line_offsets.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace d2d {
namespace {

// Sorts lanes[0..m) elementwise over `count` positions (lane k at lanes + k * stride): m rounds of
// compare-exchanges of neighbouring lanes, from lane 0 or 1 on.
void sort_lanes(float* lanes, int64_t m, int64_t stride, int64_t count) {
  for (int64_t round = 0; round < m; ++round) {
    for (int64_t k = round % 2; k + 1 < m; k += 2) {
      float* a = lanes + k * stride;
      float* b = a + stride;
      for (int64_t c = 0; c < count; ++c) {
        const float lo = std::min(a[c], b[c]);
        const float hi = std::max(a[c], b[c]);
        a[c] = lo;
        b[c] = hi;
      }
    }
  }
}

// The median of values[0..m) as numpy's median gives it for float32: the middle one, or the
// two middle ones' mean in float32. Reorders values.
float median(float* values, int64_t m) {
  const int64_t k = m / 2;
  std::nth_element(values, values + k, values + m);
  if (m % 2 == 1) return values[k];
  const float below = *std::max_element(values, values + k);
  return 0.5f * (below + values[k]);
}

// Above this many rows each column's median is a selection, not a network (n^2 / 2 exchanges).
constexpr int64_t kNetworkRows = 64;

}  // namespace

ColumnOffsets column_offsets(const float* rows, int64_t n, int64_t W, int width, float* offsets) {
  const int64_t h = width / 2;
  std::vector<float> departures(n * W);
  std::vector<float> lanes(static_cast<size_t>(width) * W);
  for (int64_t r = 0; r < n; ++r) {
    const float* row = rows + r * W;
    // lane j holds the row shifted by j - h, the edge pixel repeated
    for (int64_t j = 0; j < width; ++j) {
      float* lane = lanes.data() + j * W;
      for (int64_t c = 0; c < W; ++c) lane[c] = row[std::clamp<int64_t>(c + j - h, 0, W - 1)];
    }
    sort_lanes(lanes.data(), width, W, W);
    const float* middle = lanes.data() + h * W;
    float* out = departures.data() + r * W;
    for (int64_t c = 0; c < W; ++c) out[c] = row[c] - middle[c];
  }
  // a frame with a NaN or an infinity has no pattern to read (and a selection needs an order)
  for (const float d : departures) {
    if (!std::isfinite(d)) {
      std::fill(offsets, offsets + W, std::nanf(""));
      return {std::nan(""), std::nan("")};
    }
  }
  // each column's median over the rows
  if (n <= kNetworkRows) {
    std::vector<float> sorted(departures);
    sort_lanes(sorted.data(), n, W, W);
    const float* lo = sorted.data() + ((n - 1) / 2) * W;
    const float* hi = sorted.data() + (n / 2) * W;
    for (int64_t c = 0; c < W; ++c) offsets[c] = 0.5f * (lo[c] + hi[c]);
  } else {
    std::vector<float> column(n);
    for (int64_t c = 0; c < W; ++c) {
      for (int64_t r = 0; r < n; ++r) column[r] = departures[r * W + c];
      offsets[c] = median(column.data(), n);
    }
  }
  std::vector<float> magnitude(W);
  for (int64_t c = 0; c < W; ++c) magnitude[c] = std::fabs(offsets[c]);
  double spread = 0.0;  // sum of |departure - offset|
  for (int64_t r = 0; r < n; ++r) {
    const float* d = departures.data() + r * W;
    for (int64_t c = 0; c < W; ++c) spread += std::fabs(d[c] - offsets[c]);
  }
  // a median's standard error is 1.2533 sd / sqrt(n); the sd of Gaussian departures 1.2533
  // times their mean absolute value
  const double mean_abs = spread / static_cast<double>(n * W);
  return {1.4826 * static_cast<double>(median(magnitude.data(), W)),
          1.2533 * 1.2533 * mean_abs / std::sqrt(static_cast<double>(n))};
}

}  // namespace d2d
