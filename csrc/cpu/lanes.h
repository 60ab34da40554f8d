// Whole-vector runs of the diffusion's per-pixel math with the east and west neighbours' values
// taken from the vectors already loaded (a lane shift of the current vector and its successor or
// predecessor) instead of loaded again one element off, which on the run's cache-line-aligned
// vectors would split two lines and cost two loads each. The per-pixel expression is the one of
// diffusion_math.h applied to whole vectors.
//
// GCC and Clang vector extensions; elsewhere (or without AVX), kLanes is 0 and callers keep their
// scalar loops, which the compiler vectorises with the shifted loads.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

// Whether the vector extensions are used (else callers keep their scalar loops).
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__AVX512F__) || defined(__AVX__))
#define D2D_LANES 1
#else
#define D2D_LANES 0
#endif

namespace d2d {

#if D2D_LANES
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

template <typename T>
struct Lanes {
  static constexpr int64_t n = kVectorBytes / int64_t(sizeof(T));
  typedef T V __attribute__((vector_size(kVectorBytes)));

  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  // the vector whose lane 0 is x (the others are never read)
  static V first(T x) {
    V v = {};
    v[0] = x;
    return v;
  }
  static V last(T x) {
    V v = {};
    v[n - 1] = x;
    return v;
  }
  // lane i of the result: lane i + 1 of (cur, nxt) (the east neighbours of cur's pixels)
  template <std::size_t... I>
  static V east(V cur, V nxt, std::index_sequence<I...>) {
    return shuffle<(I + 1)...>(cur, nxt);
  }
  static V east(V cur, V nxt) { return east(cur, nxt, std::make_index_sequence<n>{}); }
  // lane i of the result: lane i - 1 of (prv, cur) (the west neighbours)
  template <std::size_t... I>
  static V west(V prv, V cur, std::index_sequence<I...>) {
    return shuffle<(I + n - 1)...>(prv, cur);
  }
  static V west(V prv, V cur) { return west(prv, cur, std::make_index_sequence<n>{}); }

 private:
  // lane i of the result: lane K_i of the concatenation (x, y)
  template <std::size_t... K>
  static V shuffle(V x, V y) {
#if defined(__clang__)
    return __builtin_shufflevector(x, y, K...);
#else  // GCC (__builtin_shufflevector only from GCC 12)
    using Index = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
    typedef Index M __attribute__((vector_size(kVectorBytes)));
    return __builtin_shuffle(x, y, M{Index(K)...});
#endif
  }
};

template <typename T>
constexpr int64_t kLanes = Lanes<T>::n;
template <typename T>
using Vec = typename Lanes<T>::V;
#else
template <typename T>
struct Lanes {  // never used: callers test kLanes first
  static constexpr int64_t n = 0;
  typedef T V;
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
};
template <typename T>
constexpr int64_t kLanes = 0;
template <typename T>
using Vec = T;
#endif

// fn(j, west, mid, east) for j = 0, n, 2n, ... < len / n * n: the vectors of the run mid's
// elements j - 1 .., j .. and j + 1 ..; mid[-1] and mid[len] are read, nothing beyond. Returns
// the number of elements done, a whole number of vectors (0 without vector extensions); the
// caller's scalar loop does the rest (the same arithmetic where, as in diffusion_cpu.cpp, the
// compiler may not contract multiply-adds).
template <typename T, typename Fn>
int64_t lane_runs(const T* __restrict__ mid, int64_t len, Fn&& fn) {
#if D2D_LANES
  using L = Lanes<T>;
  using V = typename L::V;
  constexpr int64_t n = L::n;
  const int64_t full = len / n * n;
  if (full == 0) return 0;
  V prv = L::last(mid[-1]), cur = L::load(mid);
  for (int64_t j = 0; j < full; j += n) {
    const V nxt = j + n < full ? L::load(mid + j + n) : L::first(mid[j + n]);
    fn(j, L::west(prv, cur), cur, L::east(cur, nxt));
    prv = cur;
    cur = nxt;
  }
  return full;
#else
  (void)mid;
  (void)len;
  (void)fn;
  return 0;
#endif
}

}  // namespace d2d
