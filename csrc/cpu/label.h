// Connected components of a small 2-D bool mask, for the annotator (d2d_ext.morphology.label).
// Plain C++ on raw arrays, called from the module function d2d_ext._C.label (d2d.cpp).
#pragma once

#include <cstdint>

namespace d2d {

// Writes to labels (H * W, row-major) the 4- or 8-connected components of mask (H * W,
// row-major), numbered 1, 2, ... in raster order of each component's first pixel (as
// scipy.ndimage.label numbers them), 0 for the background; returns their count.
int32_t label_components(const bool* mask, int32_t* labels, int64_t H, int64_t W,
                         int connectivity);

}  // namespace d2d
