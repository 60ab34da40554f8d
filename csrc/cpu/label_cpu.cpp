// CPU kernel of d2d::label: connected components of a small 2-D boolean mask.
//
// The annotator labels about a dozen masks of tens of pixels a side per target (the window
// search's candidates, holes, a bright region's parts), where scipy.ndimage.label's per-call
// set-up costs more than the labelling. Labels are numbered 1, 2, ... in raster order of each
// component's first pixel (as scipy numbers them); the background is 0.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
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

at::Tensor label_cpu(const at::Tensor& mask, int64_t connectivity) {
  const char* op = "d2d.label";
  TORCH_CHECK(mask.dim() == 2, op, ": mask must have shape (H, W), got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": mask must be bool, got ", mask.scalar_type());
  TORCH_CHECK(connectivity == 4 || connectivity == 8, op, ": connectivity must be 4 or 8, got ",
              connectivity);
  const at::Tensor m = mask.contiguous();
  const int64_t H = m.size(0), W = m.size(1);
  TORCH_CHECK(H * W < std::numeric_limits<int32_t>::max(), op, ": a mask of ", H, "x", W,
              " has more pixels than int32 labels can number");
  at::Tensor out = at::zeros({H, W}, m.options().dtype(at::kInt));
  const bool* in = m.const_data_ptr<bool>();
  int32_t* lab = out.mutable_data_ptr<int32_t>();
  // Runs of each row, joined (union-find) to the runs of the row above that they touch: a run
  // reaches one pixel further on each side diagonally with 8-connectivity. The work is the scan
  // plus one step per run, however large a component is.
  const int64_t reach = connectivity == 8 ? 1 : 0;
  std::vector<Run> runs;
  std::vector<int64_t> parent;
  int64_t above = 0;  // first run of the row above
  for (int64_t y = 0; y < H; ++y) {
    const bool* row = in + y * W;
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
  // Final labels in raster order of each component's first pixel: runs are in raster order, so
  // a component's first run holds its first pixel.
  std::vector<int32_t> number(runs.size(), 0);
  int32_t n = 0;
  for (size_t r = 0; r < runs.size(); ++r) {
    const int64_t top = root(parent, static_cast<int64_t>(r));
    if (number[top] == 0) number[top] = ++n;
    const int32_t value = number[top];
    int32_t* dst = lab + runs[r].row * W;
    for (int64_t x = runs[r].begin; x < runs[r].end; ++x) dst[x] = value;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(d2d, CPU, m) { m.impl("label", &label_cpu); }

}  // namespace d2d
