// Connected components of a small 2-D bool mask (label.h).
//
// The annotator labels about a dozen masks of tens of pixels a side per target (the window
// search's candidates, holes, a bright region's parts). At that size the cost is in the call:
// scipy.ndimage.label's set-up takes 20 us and more, and a torch op's dispatch, whose code
// the numpy work between two calls pushes out of the instruction cache, about as much. So this
// is a module function on numpy arrays (d2d.cpp), and the labelling is runs of each row joined
// by union-find: the scan plus one step per run, however large a component is (a window's
// background, which hole filling labels, is most of its pixels).
#include "label.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace d2d {
namespace {

struct Run {
  int64_t row, begin, end;  // pixels [begin, end) of the row
};

// Root of run r, halving the path on the way.
int64_t root(std::vector<int64_t>& parent, int64_t r) {
  while (parent[r] != r) {
    parent[r] = parent[parent[r]];
    r = parent[r];
  }
  return r;
}

}  // namespace

int32_t label_components(const bool* mask, int32_t* labels, int64_t H, int64_t W,
                         int connectivity) {
  std::memset(labels, 0, sizeof(int32_t) * H * W);
  // A run joins the runs of the row above that it touches: with 8-connectivity it reaches one
  // pixel further on each side diagonally.
  const int64_t reach = connectivity == 8 ? 1 : 0;
  std::vector<Run> runs;
  std::vector<int64_t> parent;
  int64_t above = 0;  // first run of the row above
  for (int64_t y = 0; y < H; ++y) {
    const bool* row = mask + y * W;
    const int64_t first = static_cast<int64_t>(runs.size());
    int64_t k = above;  // runs of the row above that may still touch this row's next run
    for (int64_t x = 0; x < W;) {
      if (!row[x]) {
        ++x;
        continue;
      }
      const int64_t begin = x;
      while (x < W && row[x]) ++x;
      const int64_t r = static_cast<int64_t>(runs.size());
      runs.push_back({y, begin, x});
      parent.push_back(r);
      while (k < first && runs[k].end + reach <= begin) ++k;  // ends left of this run
      for (int64_t j = k; j < first && runs[j].begin < x + reach; ++j) {
        const int64_t a = root(parent, j), b = root(parent, r);
        if (a != b) parent[std::max(a, b)] = std::min(a, b);
      }
    }
    above = first;
  }
  // Runs are in raster order, so a component's first run holds its first pixel.
  std::vector<int32_t> number(runs.size(), 0);
  int32_t n = 0;
  for (size_t r = 0; r < runs.size(); ++r) {
    const int64_t top = root(parent, static_cast<int64_t>(r));
    if (number[top] == 0) number[top] = ++n;
    int32_t* dst = labels + runs[r].row * W;
    std::fill(dst + runs[r].begin, dst + runs[r].end, number[top]);
  }
  return n;
}

}  // namespace d2d
