// The C++ part of the ``cpu`` rasterizer backend (renderer/cpu_backend.py): all views of a batch in
// one call -- projection, SH colours, tile rectangles, depth sort, tile binning, compositing -- and
// its backward.
//
// It implements the stages of the reference rasterizer (renderer/reference.py, the specification)
// with the original 3DGS rasterizer's per-pixel algorithm:
// - projection (``project_one``): the reference's ``project_gaussians`` in float64 from the inputs,
//   rounded to the input precision as the reference rounds its float64 projection, so means2d,
//   conics, depths and radii are the reference's values (the tile rectangles are computed from the
//   rounded means2d with the reference's float operations, so culling and binning agree too); SH
//   colours ``max(SH(normalize(mean - campos)) + 0.5, 0)`` in float64;
// - binning: per view, the visible Gaussians stably sorted by depth, then a counting sort by tile
//   (the stable sort by (tile, depth) of reference.bin_tiles);
// - compositing, for each pixel of each tile (``tile_size`` square), over the tile's depth-sorted list:
//   power = -0.5 (a dx^2 + c dy^2) - b dx dy,  dx = mean.x - px    (skipped unless power <= 0)
//   alpha = min(alpha_max, o exp(power))                            (skipped if alpha < alpha_min)
//   stop before the Gaussian with T (1 - alpha) < t_min; otherwise  C += alpha T f,  T *= 1 - alpha
//   with pixel centres at integer coordinates (the reference makes the same stop test on a float64
//   sum of log(1 - alpha); T is a float64 product here: they agree to double rounding). The forward
//   saves every contribution (which Gaussian, which pixel, exp(power), the T before it); the backward
//   replays them back to front, as inria's backward.cu does from n_contrib (see BackwardTile), with
//   the gradient straight through the alpha_max clamp;
// - backward of the projection and colours per Gaussian (``preprocess_backward_one``), summed over
//   the views in view order.
//
// Speed without changing a single decision: a (Gaussian, pixel) pair is only rejected early where
// the exact tests above would reject it (see Bound): ``cut`` bounds the power below which alpha <
// alpha_min, and a widened ellipse bounds the rows and, per row, the columns where power >= cut can
// hold. A tile is processed Gaussian by Gaussian over those rows and columns, each pixel keeping its
// own state, so every pixel still sees its Gaussians front to back with the per-pixel loop's
// operations; rows whose reachable columns hold no unfinished pixel are skipped before any arithmetic,
// and a tile stops when all its pixels have. exp is evaluated for a row's columns at once
// (``exp_nonpositive``, within 1 ulp of libm's expf, as torch's own vectorised exp is).
//
// Threads (torch's intra-op count) take whole tiles of all views from a shared counter (four 64x64
// views are 64 tiles, one view only 16). Each thread appends the contributions of its tiles to its
// own buffer, which the backward reads in place (they are written once). Gradients are summed per
// (tile, Gaussian) pair -- a pair belongs to one tile, hence one thread, so no atomics -- and then per
// Gaussian over its pairs in tile order, in parallel over Gaussians: results do not depend on the
// thread count or the schedule. T and the backward's sums are float64; positions, conics, alphas,
// features and the forward's sums keep the input precision, as in the reference.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

// Per-pair gradient slots before the features: mean x, mean y, conic a, b, c, opacity.
constexpr int64_t kGeomGrads = 6;
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Settings {
  int64_t width, height, tile_size, n_tiles_x, n_tiles;  // n_tiles: per view
  double alpha_max, alpha_min, t_min;
  int lane_bits;          // bits of a pixel's place in its tile (a contribution's lane)
  int64_t max_tile_list;  // tile lists are shorter: k << lane_bits fits an int32
};

// Integer floor / ceil of a finite double of magnitude < 2^62 (std::floor is a library call on
// baseline x86-64).
inline int64_t floor_i64(double v) {
  const int64_t t = static_cast<int64_t>(v);
  return static_cast<double>(t) > v ? t - 1 : t;
}
inline int64_t ceil_i64(double v) {
  const int64_t t = static_cast<int64_t>(v);
  return static_cast<double>(t) < v ? t + 1 : t;
}

// Each Gaussian's early-reject bounds (computed once per Gaussian and view, not per tile):
//
// cut: for power < cut, o exp(power) < alpha_min even with exp and the product rounded (the 1e-4
// margin in the exponent is ~1000x float rounding), so no exp is needed.
// ellipse: a pair can pass power >= cut only where the exact quadratic form q = d^T conic d is at
// most r2 = -2 cut (1 + rel)^2: the float q differs from the exact one by at most ~1e-7 (a + c)
// |d|^2 <= 1e-7 q (a + c) / lambda_min(conic), and rel is 100x that plus 1e-4. Its rows are those
// its widened ellipse reaches (|dy| <= sqrt(r2 Sigma_yy), Sigma = conic^-1, + 1e-3 px), its columns
// likewise (|dx| <= sqrt(r2 Sigma_xx) + 1e-3); on a row, its columns are narrowed by row_columns.
// Pixel centres are integers, so all are kept as integer ranges of the image. An ill-conditioned or
// non-positive-definite conic (rel >= 0.1) gets every pixel; a Gaussian that can reach no pixel
// (o < alpha_min, NaN, inf) gets none.
struct Bound {
  double cut;    // power below which alpha < alpha_min
  double r2;     // widened -2 cut of the ellipse bound; < 0: no ellipse bound
  double inv_a;  // 1 / conic a
  double det;    // conic a c - b^2
  int32_t x_lo, x_hi, y_lo, y_hi;  // the image columns and rows it can reach (none: y_lo > y_hi)
};

inline Bound make_bound(double x, double y, double ca, double cb, double cc, double o, double alpha_min,
                        int64_t width, int64_t height) {
  Bound bd;
  bd.cut = o > 0.0 ? std::log(alpha_min / o) - 1e-4 : kInf;
  bd.r2 = -1.0;
  bd.inv_a = bd.det = 0.0;
  bd.x_lo = bd.y_lo = 0;
  bd.x_hi = static_cast<int32_t>(width - 1);
  bd.y_hi = static_cast<int32_t>(height - 1);
  // o < alpha_min (or not > 0, or NaN), or a position whose power is NaN: no pixel passes
  if (!(bd.cut < 0.0) || !std::isfinite(x) || !std::isfinite(y)) {
    bd.y_hi = -1;
    return bd;
  }
  const double dt = ca * cc - cb * cb;
  if (!(ca > 0.0 && cc > 0.0 && dt > 0.0)) return bd;
  const double mid = 0.5 * (ca + cc);
  const double lambda_min = mid - std::sqrt(std::max(mid * mid - dt, 0.0));
  const double rel = lambda_min > 0.0 ? 1e-4 + 1e-5 * (ca + cc) / lambda_min : kInf;
  if (!(rel < 0.1)) return bd;
  bd.r2 = -2.0 * bd.cut * (1.0 + rel) * (1.0 + rel);
  bd.inv_a = 1.0 / ca;
  bd.det = dt;
  const double hy = std::sqrt(bd.r2 * ca / dt) + 1e-3, hx = std::sqrt(bd.r2 * cc / dt) + 1e-3;
  const int64_t lo = std::max<int64_t>(0, ceil_i64(std::max(y - hy, -1e15)));
  const int64_t hi = std::min<int64_t>(height - 1, floor_i64(std::min(y + hy, 1e15)));
  const int64_t clo = std::max<int64_t>(0, ceil_i64(std::max(x - hx, -1e15)));
  const int64_t chi = std::min<int64_t>(width - 1, floor_i64(std::min(x + hx, 1e15)));
  if (lo > hi || clo > chi) {
    bd.y_hi = -1;
    return bd;
  }
  bd.y_lo = static_cast<int32_t>(lo);
  bd.y_hi = static_cast<int32_t>(hi);
  bd.x_lo = static_cast<int32_t>(clo);
  bd.x_hi = static_cast<int32_t>(chi);
  return bd;
}

// Narrows the columns [*lo, *hi] to those a Gaussian at (x, y) with conic (a, b, .) can reach on
// pixel row py: with an ellipse bound, where q(dx) = a dx^2 + 2 b dy dx + c dy^2 <= r2, i.e. dx
// between (-b dy -+ sqrt(a r2 - det dy^2)) / a (float64, widened by 1e-3 px). False when none is left.
inline bool row_columns(const Bound& bd, double x, double y, double a, double b, int64_t py, int64_t* lo,
                        int64_t* hi) {
  if (bd.r2 >= 0.0) {
    const double dyd = y - static_cast<double>(py);
    const double disc = a * bd.r2 - bd.det * dyd * dyd;
    if (disc < 0.0) return false;
    const double centre = x + b * dyd * bd.inv_a;
    const double half = std::sqrt(disc) * bd.inv_a + 1e-3;
    *lo = std::max(*lo, ceil_i64(std::max(centre - half, -1e15)));
    *hi = std::min(*hi, floor_i64(std::min(centre + half, 1e15)));
  }
  return *lo <= *hi;
}

// Floats as one vector value (GCC / Clang vector extensions): eight when built for AVX, else four
// (SSE, NEON); wider than the machine's registers was slower than libm.
#ifdef __AVX__
constexpr int64_t kVector = 8;
#else
constexpr int64_t kVector = 4;
#endif
typedef float FloatV __attribute__((vector_size(4 * kVector)));
typedef int32_t IntV __attribute__((vector_size(4 * kVector)));
constexpr int64_t kDoubles = kVector / 2;
typedef double DoubleV __attribute__((vector_size(8 * kDoubles)));

// exp of kVector floats in [-87, 0] (clamped there; NaN stays NaN): 2^n e^r with n = round(x / ln 2)
// and r = x - n ln 2 in two parts (exact to float), e^r by its degree-7 Taylor-like minimax polynomial
// (Cephes' expf coefficients), about 1 ulp from the exact value -- libm's expf is correctly rounded
// to within 1 ulp too, and torch's vectorised exp (the reference's) differs from both by as much.
// The forward calls it for all columns of a row at once instead of one libm call per pixel.
inline FloatV exp_nonpositive(FloatV x) {
  const FloatV lo = FloatV{} - 87.0f;
  x = x < lo ? lo : x;
  x = x > FloatV{} ? FloatV{} : x;
  const FloatV magic = FloatV{} + 12582912.0f;  // 1.5 2^23: adding it rounds to an integer
  const FloatV n = (x * 1.44269504088896341f + magic) - magic;
  const FloatV r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  FloatV p = FloatV{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const IntV scale = (__builtin_convertvector(n, IntV) + 127) << 23;  // 2^n, n in [-126, 0]
  FloatV two_n;
  std::memcpy(&two_n, &scale, sizeof(two_n));
  return p * two_n;
}

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Runs body(tile, scratch) over all tiles: each thread pulls the next tile from a shared counter
// and owns scratches[its index] (sized here; kept by the caller, e.g. for the buffers it filled).
template <typename Body>
void for_each_tile(int64_t n_tiles, const Body& body, std::vector<typename Body::Scratch>& scratches) {
  std::atomic<int64_t> next(0);
  int n_threads = std::max<int>(1, at::get_num_threads());
  n_threads = static_cast<int>(std::min<int64_t>(n_threads, std::max<int64_t>(n_tiles, 1)));
  scratches.resize(n_threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(n_threads)
#endif
  {
    const int id = thread_index();
    typename Body::Scratch& scratch = scratches[id];
    scratch.thread = id;
    for (int64_t t = next.fetch_add(1); t < n_tiles; t = next.fetch_add(1)) body(t, scratch);
  }
}

// One Gaussian added to a pixel: its tile-list position k and the pixel's place in the tile (lane =
// row * tile_size + column), packed as k << lane_bits | lane, G = exp(power) (alpha = min(alpha_max,
// o G) is recomputed bit for bit) and the pixel's T before it. The forward stores a tile's
// contributions in the order it makes them -- entry by entry, so front to back within each pixel --
// and the backward replays them in reverse instead of searching the tile list, evaluating exp and
// dividing T again: 12 bytes per contribution in float32.
constexpr int64_t kMaxTileSize = 256;
inline int32_t pack_contribution(int64_t k, int64_t lane, int lane_bits) {
  return static_cast<int32_t>((k << lane_bits) | lane);
}

template <typename scalar_t>
struct Contribution {
  int32_t k_lane;
  scalar_t G;
  scalar_t T;  // the pixel's transmittance before this Gaussian (saves the backward a division each)
  // left unset: a buffer grows by a row's worth of slots before they are written (resize writes nothing)
  Contribution() {}
  Contribution(int32_t k_lane_, scalar_t G_, scalar_t T_) : k_lane(k_lane_), G(G_), T(T_) {}
};

// The contribution buffers are recycled: a buffer goes back to this pool when the backward (or the
// autograd graph) releases the forward's outputs, and the next forward appends into it without
// growing or touching fresh pages. Appending into new vectors cost more than the compositing itself
// (reallocation copies and page faults: 33 of 89 ms at 20k Gaussians, 256^2, one thread). At most
// kPooled buffers are kept, with their capacity (about the largest forward's contributions).
constexpr size_t kPooled = 16;
template <typename Record>
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* pool = new BufferPool();  // never destroyed: buffers may come back at exit
    return *pool;
  }
  // an empty buffer (its capacity kept)
  std::vector<Record>* take() {
    std::vector<Record>* buffer = take_sized(0);
    buffer->clear();
    return buffer;
  }
  // a buffer of at least ``size`` elements, contents unspecified
  std::vector<Record>* take_sized(size_t size) {
    std::vector<Record>* buffer = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        buffer = free_.back();
        free_.pop_back();
      }
    }
    if (buffer == nullptr) buffer = new std::vector<Record>();
    if (buffer->size() < size) buffer->resize(size);
    return buffer;
  }
  void give(std::vector<Record>* buffer) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < kPooled) {
      free_.push_back(buffer);
    } else {
      delete buffer;
    }
  }

 private:
  std::mutex mutex_;
  std::vector<std::vector<Record>*> free_;
};

// A scratch array kept between calls (the backward's per-pair gradient rows: ~100 MB at 100k Gaussians,
// 4 views of 256^2). A fresh allocation that large is mapped and faulted in page by page at every
// step, which cost the heavy training step ~20 ms. The contents are not cleared: every row is written
// before it is read. One lease at a time per element type; a concurrent caller gets its own array.
template <typename T>
class ScratchArray {
 public:
  explicit ScratchArray(size_t size) : array_(BufferPool<T>::instance().take_sized(size)) {}
  ~ScratchArray() { BufferPool<T>::instance().give(array_); }
  T* data() { return array_->data(); }

 private:
  std::vector<T>* array_;
};

// Where a tile's contributions are: thread buffer, first and one-past-last record (int64 x 3 per
// tile; all 0 for an empty tile).
constexpr int64_t kSpan = 3;

// Pixel geometry of tile ``tile`` (of all views): its view and its pixel rectangle.
struct TileBox {
  int64_t view, x0, y0, x1, y1;
};
inline TileBox tile_box(const Settings& s, int64_t tile) {
  TileBox t;
  t.view = tile / s.n_tiles;
  const int64_t local = tile - t.view * s.n_tiles;
  t.x0 = (local % s.n_tiles_x) * s.tile_size;
  t.y0 = (local / s.n_tiles_x) * s.tile_size;
  t.x1 = std::min(t.x0 + s.tile_size, s.width);
  t.y1 = std::min(t.y0 + s.tile_size, s.height);
  return t;
}

// The forward processes a tile entry by entry (front to back), each entry over the rows and, per row,
// the columns it can reach; every pixel ("lane") keeps its own state, so each pixel still sees its
// Gaussians in list order with the operations of the per-pixel loop. Entry-major order loads an
// entry's data once per tile and needs no per-row lists. Per-entry inputs of view v start at entry
// view_base[v] (the batched op lays each view's visible Gaussians out in depth order, so a tile's
// list reads them at increasing addresses); ids are relative to that base.
template <typename scalar_t, int kDim>
struct ForwardTile {
  struct Scratch {
    int thread = 0;
    std::vector<double> T;             // [tile rows, tile_size]; 0 marks a finished pixel
    std::vector<scalar_t> sums;        // [tile rows, tile_size, dim]: in the input precision, as the reference sums
    std::vector<int32_t> first, last;  // per tile row: its unfinished pixels lie in columns [first, last]
    std::vector<scalar_t> alphas = std::vector<scalar_t>(kMaxTileSize + kVector),
                          gexp = std::vector<scalar_t>(kMaxTileSize + kVector);
    std::vector<Contribution<scalar_t>>* added = nullptr;  // every tile of this thread, in the order done (pooled)
  };
  const Settings& s;
  const scalar_t *means2d, *conics, *opacities, *features;
  const int64_t *gauss_ids, *offsets;
  int64_t dim_;
  const int64_t* view_base;  // [V + 1]
  scalar_t* image;           // [V, H, W, dim]
  int64_t* spans;            // [n_tiles_all, kSpan]
  const Bound* bounds;       // per entry

  void operator()(int64_t tile, Scratch& scratch) const {
    const int64_t dim = kDim > 0 ? kDim : dim_;
    const int64_t r0 = offsets[tile], r1 = offsets[tile + 1];
    if (r1 == r0) return;  // the outputs are initialised to an empty pixel
    const TileBox box = tile_box(s, tile);
    const int64_t x0 = box.x0, x1 = box.x1, y0 = box.y0, y1 = box.y1, ts = s.tile_size;
    const int64_t go = view_base[box.view], pix0 = box.view * s.width * s.height;
    const scalar_t *m2 = means2d + 2 * go, *co = conics + 3 * go, *op = opacities + go, *fe = features + dim * go;
    const Bound* bd = bounds + go;
    const int64_t* ids = gauss_ids + r0;
    const scalar_t alpha_max = static_cast<scalar_t>(s.alpha_max);
    const scalar_t alpha_min = static_cast<scalar_t>(s.alpha_min);
    const double t_min = s.t_min;
    const int64_t rows = y1 - y0;
    scratch.T.assign(rows * ts, 1.0);
    scratch.sums.assign(rows * ts * dim, scalar_t(0));
    scratch.first.assign(rows, 0);
    scratch.last.assign(rows, static_cast<int32_t>(x1 - x0 - 1));
    double* __restrict T = scratch.T.data();
    scalar_t* __restrict acc = scratch.sums.data();
    int32_t* __restrict first = scratch.first.data();
    int32_t* __restrict last = scratch.last.data();
    scalar_t* __restrict alphas = scratch.alphas.data();
    scalar_t* __restrict gexp = scratch.gexp.data();
    if (scratch.added == nullptr) scratch.added = BufferPool<Contribution<scalar_t>>::instance().take();
    std::vector<Contribution<scalar_t>>& out = *scratch.added;
    const int64_t begin = static_cast<int64_t>(out.size());
    int64_t open_rows = rows;  // rows with an unfinished pixel
    for (int64_t k = 0; k < r1 - r0 && open_rows > 0; ++k) {
      const int64_t g = ids[k];
      const Bound& b = bd[g];
      const int64_t ry0 = std::max<int64_t>(b.y_lo, y0), ry1 = std::min<int64_t>(b.y_hi, y1 - 1);
      const int64_t cx0 = std::max<int64_t>(b.x_lo, x0), cx1 = std::min<int64_t>(b.x_hi, x1 - 1);
      if (ry0 > ry1 || cx0 > cx1) continue;
      const scalar_t ex = m2[2 * g], ey = m2[2 * g + 1], ea = co[3 * g], eb = co[3 * g + 1], ec = co[3 * g + 2];
      const scalar_t eo = op[g], cut = static_cast<scalar_t>(b.cut);
      const scalar_t* fk = fe + dim * g;
      for (int64_t py = ry0; py <= ry1; ++py) {
        const int64_t r = py - y0;
        int64_t lo = std::max<int64_t>(cx0, x0 + first[r]), hi = std::min<int64_t>(cx1, x0 + last[r]);
        if (lo > hi) continue;
        if (!row_columns(b, static_cast<double>(ex), static_cast<double>(ey), static_cast<double>(ea),
                         static_cast<double>(eb), py, &lo, &hi)) {
          continue;
        }
        // the per-pixel formula power = -0.5 ((a dx) dx + (c dy) dy) - (b dx) dy (the reference's
        // association), with what the row fixes computed once
        const scalar_t dy = ey - static_cast<scalar_t>(py);
        const scalar_t cdy2 = ec * dy * dy;
        const int64_t count = hi - lo + 1;
        // pass 1, per column: G = exp(power) and alpha = min(alpha_max, o G), or alpha = 0 where the
        // reference skips the pair -- power not <= 0 (NaN included), power below cut (then alpha <
        // alpha_min), alpha < alpha_min (a kept alpha is >= alpha_min > 0)
        if constexpr (std::is_same<scalar_t, float>::value) {
          // kVector columns at a time (the arrays have room for the last vector's overhang)
          FloatV iota;
          for (int64_t v = 0; v < kVector; ++v) iota[v] = static_cast<float>(v);
          for (int64_t j = 0; j < count; j += kVector) {
            const FloatV dx = ex - (static_cast<float>(lo + j) + iota);
            const FloatV pw = -0.5f * (ea * dx * dx + cdy2) - eb * dx * dy;
            const FloatV ge = exp_nonpositive(pw);
            FloatV al = eo * ge;
            al = al > alpha_max ? FloatV{} + alpha_max : al;
            al = (pw <= 0.0f) & (pw >= cut) & (al >= alpha_min) ? al : FloatV{};
            std::memcpy(gexp + j, &ge, sizeof(ge));
            std::memcpy(alphas + j, &al, sizeof(al));
          }
        } else {
          for (int64_t j = 0; j < count; ++j) {
            const scalar_t dx = ex - static_cast<scalar_t>(lo + j);
            const scalar_t pw = scalar_t(-0.5) * (ea * dx * dx + cdy2) - eb * dx * dy;
            gexp[j] = std::exp(pw);
            scalar_t al = eo * gexp[j];
            if (al > alpha_max) al = alpha_max;
            alphas[j] = pw <= scalar_t(0) && pw >= cut && al >= alpha_min ? al : scalar_t(0);
          }
        }
        // pass 2: the blend, pixel by pixel, its records written into count slots (the unused cut off after)
        double* __restrict Tr = T + r * ts;
        const size_t used = out.size();
        out.resize(used + count);
        Contribution<scalar_t>* __restrict record = out.data() + used;
        for (int64_t j = 0; j < count; ++j) {
          const int64_t c = lo + j - x0;
          const scalar_t alpha = alphas[j];
          if (alpha == scalar_t(0) || Tr[c] == 0.0) continue;
          const scalar_t G = gexp[j];
          const double next_t = Tr[c] * (1.0 - static_cast<double>(alpha));
          if (next_t < t_min) {  // this Gaussian is not added, nor any later one
            Tr[c] = 0.0;
            while (first[r] <= last[r] && Tr[first[r]] == 0.0) ++first[r];
            while (last[r] >= first[r] && Tr[last[r]] == 0.0) --last[r];
            if (first[r] > last[r]) --open_rows;
            continue;
          }
          const scalar_t w = static_cast<scalar_t>(static_cast<double>(alpha) * Tr[c]);
          scalar_t* a = acc + (r * ts + c) * dim;
          for (int64_t d = 0; d < dim; ++d) a[d] += w * fk[d];
          *record++ = Contribution<scalar_t>(pack_contribution(k, r * ts + c, s.lane_bits), G, static_cast<scalar_t>(Tr[c]));
          Tr[c] = next_t;
        }
        out.resize(record - out.data());
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      scalar_t* dst = image + (pix0 + (y0 + r) * s.width + x0) * dim;
      std::copy(acc + r * ts * dim, acc + (r * ts + x1 - x0) * dim, dst);
    }
    spans[kSpan * tile] = scratch.thread;
    spans[kSpan * tile + 1] = begin;
    spans[kSpan * tile + 2] = static_cast<int64_t>(out.size());
  }
};

// The backward replays a tile's stored contributions in reverse -- back to front for every pixel,
// as inria's backward.cu does (which recovers T_i = T_{i+1} / (1 - alpha_i); the record holds T_i):
//   dL/df_i     = alpha_i T_i dL/dC
//   dL/dalpha_i = T_i (f_i - A_i) . dL/dC,   A_i = alpha_{i+1} f_{i+1} + (1 - alpha_{i+1}) A_{i+1}
// with the gradient straight through the alpha_max clamp (dalpha/do = G, dalpha/dG = o). A pixel's A
// is advanced right after its contribution i is done (to A_{i-1}, what the next one replayed needs),
// the same operations inria makes one step later with the previous alpha and features kept. The forward
// stored each entry's contributions together, so an entry's sums run in float64 registers and go out
// as its (tile, Gaussian) pair's row when the entry changes; entries without contributions get zeros.
template <typename scalar_t, int kDim>
struct BackwardTile {
  struct Scratch {
    int thread = 0;
    std::vector<double> lanes, run;
    std::vector<scalar_t> centre_x, centre_y;  // per lane: its pixel centre
  };
  const Settings& s;
  const scalar_t *means2d, *conics, *opacities, *features;
  const int64_t *gauss_ids, *offsets;
  int64_t dim_;
  const int64_t* view_base;
  const int64_t* spans;
  const Contribution<scalar_t>* const* buffers;  // per forward thread
  const scalar_t* grad_image;
  const int64_t* pair_slots;  // pair -> its row of pair_grads (grouped by Gaussian)
  scalar_t* pair_grads;

  void operator()(int64_t tile, Scratch& scratch) const {
    const int64_t dim = kDim > 0 ? kDim : dim_;
    const int64_t r0 = offsets[tile], r1 = offsets[tile + 1];
    if (r1 == r0) return;
    const TileBox box = tile_box(s, tile);
    const int64_t x0 = box.x0, x1 = box.x1, y0 = box.y0, y1 = box.y1, ts = s.tile_size;
    const int64_t go = view_base[box.view], pix0 = box.view * s.width * s.height;
    const scalar_t *m2 = means2d + 2 * go, *co = conics + 3 * go, *op = opacities + go, *fe = features + dim * go;
    const int64_t* ids = gauss_ids + r0;
    const scalar_t alpha_max = static_cast<scalar_t>(s.alpha_max);
    const int64_t stride = kGeomGrads + dim;
    auto zero_rows = [&](int64_t k_lo, int64_t k_hi) {  // entries k_lo..k_hi added nothing
      for (int64_t k = k_lo; k <= k_hi; ++k) {
        scalar_t* dst = pair_grads + pair_slots[r0 + k] * stride;
        std::fill(dst, dst + stride, scalar_t(0));
      }
    };
    const int64_t j0 = spans[kSpan * tile + 1], j1 = spans[kSpan * tile + 2];
    if (j1 == j0) {
      zero_rows(0, r1 - r0 - 1);
      return;
    }
    const Contribution<scalar_t>* contrib = buffers[spans[kSpan * tile]];
    // per lane: dL/dC and A, what lies behind the next contribution replayed ([channel, lane]: the
    // lanes of consecutive pixels are one vector)
    const int64_t lanes = (y1 - y0) * ts;
    scratch.lanes.resize(lanes * 2 * dim);
    scratch.centre_x.resize(lanes);
    scratch.centre_y.resize(lanes);
    double* __restrict g = scratch.lanes.data();
    double* __restrict behind = g + lanes * dim;
    scalar_t* __restrict px = scratch.centre_x.data();
    scalar_t* __restrict py = scratch.centre_y.data();
    for (int64_t r = 0; r < y1 - y0; ++r) {
      for (int64_t c = 0; c < x1 - x0; ++c) {
        const int64_t lane = r * ts + c, pix = pix0 + (y0 + r) * s.width + x0 + c;
        px[lane] = static_cast<scalar_t>(x0 + c);
        py[lane] = static_cast<scalar_t>(y0 + r);
        for (int64_t d = 0; d < dim; ++d) {
          g[d * lanes + lane] = static_cast<double>(grad_image[pix * dim + d]);
          behind[d * lanes + lane] = 0.0;
        }
      }
    }
    // An entry's sums: dL/df (``feat``) and, for the geometry, the sums of p = dL/dpower times dx, dy,
    // dx^2, dx dy, dy^2 and of dL/dalpha G, turned into dL/d(mean, conic, opacity) once per entry.
    double feat_fixed[kDim > 0 ? kDim : 1], f_fixed[kDim > 0 ? kDim : 1];
    scratch.run.resize(2 * dim);
    double* __restrict feat = kDim > 0 ? feat_fixed : scratch.run.data();
    double* __restrict fkd = kDim > 0 ? f_fixed : scratch.run.data() + dim;  // the entry's features, float64
    double sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0, syy = 0.0, so = 0.0;
    // the same sums over the records taken kDoubles at a time (see below), added in at the flush
    DoubleV vfeat[kDim > 0 ? kDim : 1], vsx, vsy, vsxx, vsxy, vsyy, vso;
    auto clear_vectors = [&]() {
      for (auto& v : vfeat) v = DoubleV{};
      vsx = vsy = vsxx = vsxy = vsyy = vso = DoubleV{};
    };
    auto total = [](double scalar, DoubleV v) {
      for (int64_t i = 0; i < kDoubles; ++i) scalar += v[i];
      return scalar;
    };
    clear_vectors();
    int64_t run_k = -1, next_k = r1 - r0 - 1;  // entries above next_k have their rows written
    scalar_t ex = 0, ey = 0, eo = 0;
    double eod = 0.0;
    auto flush = [&]() {
      if (run_k < 0) return;
      const int64_t e = ids[run_k];
      const double ca = static_cast<double>(co[3 * e]), cb = static_cast<double>(co[3 * e + 1]),
                   cc = static_cast<double>(co[3 * e + 2]);
      scalar_t* dst = pair_grads + pair_slots[r0 + run_k] * stride;
      if constexpr (kDim > 0) {
        sx = total(sx, vsx), sy = total(sy, vsy), sxx = total(sxx, vsxx), sxy = total(sxy, vsxy);
        syy = total(syy, vsyy), so = total(so, vso);
        for (int64_t d = 0; d < kDim; ++d) feat[d] = total(feat[d], vfeat[d]);
      }
      // d power / d(mean x, mean y, a, b, c) = (-(a dx + b dy), -(c dy + b dx), -dx^2 / 2, -dx dy, -dy^2 / 2)
      dst[0] = static_cast<scalar_t>(-ca * sx - cb * sy);
      dst[1] = static_cast<scalar_t>(-cc * sy - cb * sx);
      dst[2] = static_cast<scalar_t>(-0.5 * sxx);
      dst[3] = static_cast<scalar_t>(-sxy);
      dst[4] = static_cast<scalar_t>(-0.5 * syy);
      dst[5] = static_cast<scalar_t>(so);
      for (int64_t d = 0; d < dim; ++d) dst[kGeomGrads + d] = static_cast<scalar_t>(feat[d]);
    };
    const int32_t lane_mask = (int32_t(1) << s.lane_bits) - 1;
    constexpr bool kGroups = kDim > 0 && std::is_same<scalar_t, float>::value;
    for (int64_t j = j1 - 1; j >= j0; --j) {
      const Contribution<scalar_t>& rec = contrib[j];
      const int64_t k = rec.k_lane >> s.lane_bits;
      if (k != run_k) {
        flush();
        zero_rows(k + 1, next_k);
        next_k = k - 1;
        run_k = k;
        sx = sy = sxx = sxy = syy = so = 0.0;
        clear_vectors();
        const int64_t e = ids[k];
        ex = m2[2 * e];
        ey = m2[2 * e + 1];
        eo = op[e];
        eod = static_cast<double>(eo);
        for (int64_t d = 0; d < dim; ++d) {
          feat[d] = 0.0;
          fkd[d] = static_cast<double>(fe[dim * e + d]);
        }
      }
      const int64_t lane = rec.k_lane & lane_mask;
      if constexpr (kGroups) {
        // this record and the kDoubles - 1 before it, of the same entry on the pixels just left of
        // this one (as a row's records mostly are): the same operations, one vector each
        bool group = j - (kDoubles - 1) >= j0 && lane >= kDoubles - 1;
        for (int64_t m = 1; group && m < kDoubles; ++m) group = contrib[j - m].k_lane == rec.k_lane - m;
        if (group) {
          const int64_t base = lane - (kDoubles - 1);  // record j - (kDoubles - 1) + i is at lane base + i
          DoubleV Gv, Tv, alphav, dxv, dyv;
          for (int64_t i = 0; i < kDoubles; ++i) {
            const Contribution<scalar_t>& ri = contrib[j - (kDoubles - 1) + i];
            scalar_t alpha_s = eo * ri.G;
            if (alpha_s > alpha_max) alpha_s = alpha_max;
            Gv[i] = ri.G;
            Tv[i] = ri.T;
            alphav[i] = alpha_s;
            dxv[i] = ex - px[base + i];
            dyv[i] = ey - py[base + i];
          }
          const DoubleV wv = alphav * Tv;
          DoubleV dl = DoubleV{};
          for (int64_t d = 0; d < kDim; ++d) {
            DoubleV gv, bv;
            std::memcpy(&gv, g + d * lanes + base, sizeof(gv));
            std::memcpy(&bv, behind + d * lanes + base, sizeof(bv));
            vfeat[d] += wv * gv;
            dl += (fkd[d] - bv) * gv;
            bv = alphav * fkd[d] + (1.0 - alphav) * bv;
            std::memcpy(behind + d * lanes + base, &bv, sizeof(bv));
          }
          dl *= Tv;
          const DoubleV dG = dl * Gv;
          vso += dG;
          const DoubleV pv = dG * eod, pdx = pv * dxv, pdy = pv * dyv;
          vsx += pdx;
          vsy += pdy;
          vsxx += pdx * dxv;
          vsxy += pdx * dyv;
          vsyy += pdy * dyv;
          j -= kDoubles - 1;
          continue;
        }
      }
      const scalar_t G = rec.G;
      const scalar_t dx = ex - px[lane];
      const scalar_t dy = ey - py[lane];
      scalar_t alpha_s = eo * G;
      if (alpha_s > alpha_max) alpha_s = alpha_max;
      const double alpha = static_cast<double>(alpha_s);
      const double Ti = static_cast<double>(rec.T);
      const double w = alpha * Ti;
      double dl_dalpha = 0.0;
      for (int64_t d = 0; d < dim; ++d) {
        const double gd = g[d * lanes + lane];
        double& bd = behind[d * lanes + lane];  // A_i: what lies behind Gaussian i, per unit of T_{i+1}
        feat[d] += w * gd;
        dl_dalpha += (fkd[d] - bd) * gd;
        bd = alpha * fkd[d] + (1.0 - alpha) * bd;  // A_{i-1}
      }
      dl_dalpha *= Ti;
      // straight through the clamp: alpha = o G, G = exp(power)
      const double Gd = static_cast<double>(G);
      const double dl_dG = dl_dalpha * Gd;
      so += dl_dG;
      const double p = dl_dG * eod;  // dL/dpower
      const double pdx = p * static_cast<double>(dx), pdy = p * static_cast<double>(dy);
      sx += pdx;
      sy += pdy;
      sxx += pdx * static_cast<double>(dx);
      sxy += pdx * static_cast<double>(dy);
      syy += pdy * static_cast<double>(dy);
    }
    flush();
    zero_rows(0, next_k);
  }
};

Settings make_settings(int64_t width, int64_t height, int64_t tile_size, double alpha_max,
                       double alpha_min, double t_min) {
  TORCH_CHECK(width > 0 && height > 0 && tile_size > 0, "width, height and tile_size must be positive");
  TORCH_CHECK(tile_size <= kMaxTileSize, "tile_size must be at most ", kMaxTileSize);
  Settings s;
  s.width = width;
  s.height = height;
  s.tile_size = tile_size;
  s.n_tiles_x = (width + tile_size - 1) / tile_size;
  s.n_tiles = s.n_tiles_x * ((height + tile_size - 1) / tile_size);
  s.alpha_max = alpha_max;
  s.alpha_min = alpha_min;
  s.t_min = t_min;
  s.lane_bits = 1;
  while ((int64_t(1) << s.lane_bits) < tile_size * tile_size) ++s.lane_bits;
  s.max_tile_list = int64_t(1) << (31 - s.lane_bits);
  return s;
}

void check_tile_list_length(int64_t length, const Settings& s) {
  TORCH_CHECK(length < s.max_tile_list, "a tile lists ", length, " Gaussians, more than the ", s.max_tile_list,
              " tiles of ", s.tile_size, " pixels can hold: use a smaller tile_size");
}

void check_tile_lists(const at::Tensor& gauss_ids, const at::Tensor& offsets, int64_t n_tiles_all, int64_t n,
                      const Settings& s) {
  TORCH_CHECK(gauss_ids.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong,
              "gauss_ids and offsets must be int64");
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) == n_tiles_all + 1, "offsets must be [n_tiles + 1]");
  TORCH_CHECK(gauss_ids.dim() == 1 && gauss_ids.size(0) < (int64_t(1) << 31),
              "gauss_ids must be [M] with M < 2^31");
  const int64_t* off = offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[n_tiles_all] == gauss_ids.size(0), "offsets must run from 0 to len(gauss_ids)");
  for (int64_t t = 0; t < n_tiles_all; ++t) {
    TORCH_CHECK(off[t] <= off[t + 1], "offsets must not decrease");
    check_tile_list_length(off[t + 1] - off[t], s);
  }
  if (gauss_ids.numel() > 0) {
    TORCH_CHECK(gauss_ids.min().item<int64_t>() >= 0 && gauss_ids.max().item<int64_t>() < n,
                "gauss_ids must index the N Gaussians");
  }
}

void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                  const at::Tensor& features, const at::Tensor& gauss_ids, const at::Tensor& offsets,
                  const Settings& s) {
  const int64_t n = means2d.size(0);
  for (const auto* t : {&means2d, &conics, &opacities, &features, &gauss_ids, &offsets}) {
    TORCH_CHECK(t->device().is_cpu(), "the CPU rasterizer takes CPU tensors");
    TORCH_CHECK(t->is_contiguous(), "the CPU rasterizer takes contiguous tensors");
  }
  TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2, "means2d must be [N, 2]");
  TORCH_CHECK(conics.dim() == 2 && conics.size(0) == n && conics.size(1) == 3, "conics must be [N, 3]");
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n, "opacities must be [N]");
  TORCH_CHECK(features.dim() == 2 && features.size(0) == n, "features must be [N, D]");
  for (const auto* t : {&conics, &opacities, &features}) {
    TORCH_CHECK(t->scalar_type() == means2d.scalar_type(), "all float inputs must share one dtype");
  }
  check_tile_lists(gauss_ids, offsets, s.n_tiles, n, s);
}

// Per-Gaussian bounds [count], from [count, 2] means2d, [count, 3] conics and [count] opacities.
template <typename scalar_t>
std::vector<Bound> make_bounds(const scalar_t* m2, const scalar_t* co, const scalar_t* op, int64_t count,
                               const Settings& s) {
  std::vector<Bound> bounds(count);
  at::parallel_for(0, count, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      bounds[i] = make_bound(m2[2 * i], m2[2 * i + 1], co[3 * i], co[3 * i + 1], co[3 * i + 2], op[i], s.alpha_min,
                             s.width, s.height);
    }
  });
  return bounds;
}

// The forward's thread buffers as byte tensors that own them (no copy); freeing a tensor returns its
// buffer to the pool.
template <typename scalar_t, typename Scratch>
std::vector<at::Tensor> buffers_as_tensors(std::vector<Scratch>& scratches) {
  using Record = Contribution<scalar_t>;
  std::vector<at::Tensor> out;
  for (auto& sc : scratches) {
    std::vector<Record>* owned = sc.added != nullptr ? sc.added : BufferPool<Record>::instance().take();
    sc.added = nullptr;
    const int64_t bytes = static_cast<int64_t>(owned->size() * sizeof(Record));
    out.push_back(at::from_blob(owned->data(), {bytes},
                                [owned](void*) { BufferPool<Record>::instance().give(owned); },
                                at::TensorOptions().dtype(at::kByte)));
  }
  return out;
}

template <typename scalar_t>
std::vector<const Contribution<scalar_t>*> buffer_pointers(const std::vector<at::Tensor>& buffers) {
  std::vector<const Contribution<scalar_t>*> out;
  for (const auto& b : buffers) {
    TORCH_CHECK(b.scalar_type() == at::kByte && b.is_contiguous() && b.numel() % sizeof(Contribution<scalar_t>) == 0,
                "contribution buffers must be the forward's byte tensors");
    out.push_back(reinterpret_cast<const Contribution<scalar_t>*>(b.data_ptr<uint8_t>()));
  }
  return out;
}

void check_pixel_state(const at::Tensor& spans, const std::vector<at::Tensor>& buffers, int64_t n_tiles_all,
                       size_t record) {
  TORCH_CHECK(spans.scalar_type() == at::kLong && spans.is_contiguous() && spans.numel() == n_tiles_all * kSpan,
              "spans must be int64 [n_tiles, 3]");
  const int64_t* sp = spans.data_ptr<int64_t>();
  for (int64_t t = 0; t < n_tiles_all; ++t) {
    const int64_t th = sp[kSpan * t], b = sp[kSpan * t + 1], e = sp[kSpan * t + 2];
    if (e == b) continue;
    TORCH_CHECK(th >= 0 && th < static_cast<int64_t>(buffers.size()) && 0 <= b && b <= e &&
                    e * static_cast<int64_t>(record) <= buffers[th].numel(),
                "spans must point into the contribution buffers");
  }
}

// Sums the per-pair gradient rows [M, stride], grouped by (view, Gaussian) g in rows
// pair_start[g]:pair_start[g + 1] (in tile order), into out[g] (float64, overwritten), in parallel over g.
template <typename scalar_t>
void reduce_pairs(const scalar_t* pair_grads, int64_t stride, const int64_t* pair_start, int64_t count, double* out) {
  at::parallel_for(0, count, 256, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      double* dst = out + g * stride;
      std::fill(dst, dst + stride, 0.0);
      for (int64_t j = pair_start[g]; j < pair_start[g + 1]; ++j) {
        const scalar_t* src = pair_grads + j * stride;
        for (int64_t d = 0; d < stride; ++d) dst[d] += static_cast<double>(src[d]);
      }
    }
  });
}

// The pairs of each entry of ``ids`` (tile lists over n_tiles_all tiles of V views) grouped by
// g = view * n + id in list order: pair_start [V n + 1] and each pair's row, slot [M].
void pairs_by_gaussian(const int64_t* ids, const int64_t* off, int64_t n_tiles_all, int64_t n_tiles, int64_t n,
                       int64_t n_views, std::vector<int64_t>* start, std::vector<int64_t>* slot) {
  start->assign(n_views * n + 1, 0);
  for (int64_t t = 0; t < n_tiles_all; ++t) {
    const int64_t base = (t / n_tiles) * n;
    for (int64_t k = off[t]; k < off[t + 1]; ++k) ++(*start)[base + ids[k] + 1];
  }
  for (int64_t g = 0; g < n_views * n; ++g) (*start)[g + 1] += (*start)[g];
  slot->resize(off[n_tiles_all]);
  std::vector<int64_t> cursor(start->begin(), start->end() - 1);
  for (int64_t t = 0; t < n_tiles_all; ++t) {
    const int64_t base = (t / n_tiles) * n;
    for (int64_t k = off[t]; k < off[t + 1]; ++k) (*slot)[k] = cursor[base + ids[k]]++;
  }
}

// ---------------------------------------------------------------------------------------------
// Projection and SH colours, forward (per view and Gaussian) and backward (per Gaussian, summed over
// the views), in float64 from the inputs. The rules are the reference's (autograd of its torch code,
// with its deliberate exceptions): culled Gaussians (z <= near) use z = 1, a clamped t.x/t.z
// (t.y/t.z) makes t.x (t.y) a constant in the EWA Jacobian, det == 0 uses det = 1, the colour clamp
// at 0 passes the gradient where SH + 0.5 >= 0 (torch.clamp_min), and a zero direction is not
// normalised.
// ---------------------------------------------------------------------------------------------
constexpr double kShC0 = 0.28209479177387814;
constexpr double kShC1 = 0.4886025119029199;
constexpr double kShC2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
                             0.5462742152960396};
constexpr double kShC3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
                             -0.4570457994644658, 1.445305721320277, -0.5900435899266435};

// The real SH basis (inria's constants and signs) at unit direction (x, y, z) and its gradient
// with respect to the direction's components; returns the number of basis functions.
int sh_basis(int degree, double x, double y, double z, double* Y, double (*dY)[3]) {
  auto put = [&](int k, double v, double dx, double dy, double dz) {
    Y[k] = v;
    dY[k][0] = dx;
    dY[k][1] = dy;
    dY[k][2] = dz;
  };
  put(0, kShC0, 0.0, 0.0, 0.0);
  if (degree < 1) return 1;
  put(1, -kShC1 * y, 0.0, -kShC1, 0.0);
  put(2, kShC1 * z, 0.0, 0.0, kShC1);
  put(3, -kShC1 * x, -kShC1, 0.0, 0.0);
  if (degree < 2) return 4;
  const double xx = x * x, yy = y * y, zz = z * z;
  put(4, kShC2[0] * x * y, kShC2[0] * y, kShC2[0] * x, 0.0);
  put(5, kShC2[1] * y * z, 0.0, kShC2[1] * z, kShC2[1] * y);
  put(6, kShC2[2] * (2.0 * zz - xx - yy), -2.0 * kShC2[2] * x, -2.0 * kShC2[2] * y, 4.0 * kShC2[2] * z);
  put(7, kShC2[3] * x * z, kShC2[3] * z, 0.0, kShC2[3] * x);
  put(8, kShC2[4] * (xx - yy), 2.0 * kShC2[4] * x, -2.0 * kShC2[4] * y, 0.0);
  if (degree < 3) return 9;
  put(9, kShC3[0] * y * (3.0 * xx - yy), kShC3[0] * 6.0 * x * y, kShC3[0] * (3.0 * xx - 3.0 * yy), 0.0);
  put(10, kShC3[1] * x * y * z, kShC3[1] * y * z, kShC3[1] * x * z, kShC3[1] * x * y);
  put(11, kShC3[2] * y * (4.0 * zz - xx - yy), kShC3[2] * -2.0 * x * y, kShC3[2] * (4.0 * zz - xx - 3.0 * yy),
      kShC3[2] * 8.0 * y * z);
  put(12, kShC3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy), kShC3[3] * -6.0 * x * z, kShC3[3] * -6.0 * y * z,
      kShC3[3] * (6.0 * zz - 3.0 * xx - 3.0 * yy));
  put(13, kShC3[4] * x * (4.0 * zz - xx - yy), kShC3[4] * (4.0 * zz - 3.0 * xx - yy), kShC3[4] * -2.0 * x * y,
      kShC3[4] * 8.0 * x * z);
  put(14, kShC3[5] * z * (xx - yy), kShC3[5] * 2.0 * x * z, kShC3[5] * -2.0 * y * z, kShC3[5] * (xx - yy));
  put(15, kShC3[6] * x * (xx - 3.0 * yy), kShC3[6] * (3.0 * xx - 3.0 * yy), kShC3[6] * -6.0 * x * y, 0.0);
  return 16;
}

// A view's camera: float64 [25] = R (9, row-major world-to-view rotation), t (3), campos (3), fx, fy,
// lim_x, lim_y (1.3 tan(fov/2)), near, W/2, H/2, low_pass, cx, cy.
constexpr int64_t kCameraValues = 25;
struct CameraParams {
  double R[9], t[3], campos[3];
  double fx, fy, lim_x, lim_y, near, half_w, half_h, low_pass, cx, cy;
};

CameraParams read_camera(const double* cp) {
  CameraParams cam;
  std::copy(cp, cp + 9, cam.R);
  std::copy(cp + 9, cp + 12, cam.t);
  std::copy(cp + 12, cp + 15, cam.campos);
  cam.fx = cp[15]; cam.fy = cp[16]; cam.lim_x = cp[17]; cam.lim_y = cp[18]; cam.near = cp[19];
  cam.half_w = cp[20]; cam.half_h = cp[21]; cam.low_pass = cp[22]; cam.cx = cp[23]; cam.cy = cp[24];
  return cam;
}

// The EWA Jacobian at view-space point t (z: t.z, or 1 when culled) with the direction clamped to
// lim (the clamped t.x/t.z times z; the backward treats it as a constant), times the view rotation:
// M = J W. Sets jx, jy (the t.x, t.y used in J) and whether each was clamped.
struct Ewa {
  double M[2][3];
  double jx, jy;
  bool clamp_x, clamp_y;
};
inline Ewa ewa_jacobian(const CameraParams& cam, const double* t, double z) {
  Ewa e;
  const double txtz = t[0] / z, tytz = t[1] / z;
  e.clamp_x = txtz < -cam.lim_x || txtz > cam.lim_x;
  e.clamp_y = tytz < -cam.lim_y || tytz > cam.lim_y;
  e.jx = e.clamp_x ? std::min(std::max(txtz, -cam.lim_x), cam.lim_x) * z : t[0];
  e.jy = e.clamp_y ? std::min(std::max(tytz, -cam.lim_y), cam.lim_y) * z : t[1];
  const double J[2][3] = {{cam.fx / z, 0.0, -cam.fx * e.jx / (z * z)}, {0.0, cam.fy / z, -cam.fy * e.jy / (z * z)}};
  const double* R = cam.R;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) e.M[i][j] = J[i][0] * R[j] + J[i][1] * R[3 + j] + J[i][2] * R[6 + j];
  return e;
}

// The rotation matrix of an unnormalised quaternion (w, x, y, z) by the 3DGS formula.
inline void quat_rotation(double qr, double qx, double qy, double qz, double Rq[3][3]) {
  const double rows[3][3] = {
      {1.0 - 2.0 * (qy * qy + qz * qz), 2.0 * (qx * qy - qr * qz), 2.0 * (qx * qz + qr * qy)},
      {2.0 * (qx * qy + qr * qz), 1.0 - 2.0 * (qx * qx + qz * qz), 2.0 * (qy * qz - qr * qx)},
      {2.0 * (qx * qz - qr * qy), 2.0 * (qy * qz + qr * qx), 1.0 - 2.0 * (qx * qx + qy * qy)}};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) Rq[i][j] = rows[i][j];
}

struct ProjectionSettings {
  double min_discriminant, radius_sigmas;
  int64_t tile_size, n_tiles_x, n_tiles_y;
};

// The reference's project_gaussians for one Gaussian in one view (see reference.py for the
// formulas), plus its tile rectangle [x0, x1) x [y0, y1) (inria's getRect on the rounded means2d,
// in the input precision as the reference computes it). Writes means2d, conic, depth (rounded) and
// returns the radius (0: culled, or touching no tile).
template <typename scalar_t>
int32_t project_one(const CameraParams& cam, const ProjectionSettings& ps, const scalar_t* m_in, const scalar_t* q_in,
                    const scalar_t* s_in, const scalar_t* sp, scalar_t* means2d, scalar_t* conic, scalar_t* depth,
                    int32_t* rect) {
  const double* R = cam.R;
  const double m[3] = {double(m_in[0]), double(m_in[1]), double(m_in[2])};
  double t[3];
  for (int i = 0; i < 3; ++i) t[i] = R[3 * i] * m[0] + R[3 * i + 1] * m[1] + R[3 * i + 2] * m[2] + cam.t[i];
  const bool in_front = t[2] > cam.near;
  const double z = in_front ? t[2] : 1.0;
  double u = cam.fx * t[0] / z + cam.cx;
  double v = cam.fy * t[1] / z + cam.cy;
  if (sp != nullptr) {
    u = u + double(sp[0]) * cam.half_w;
    v = v + double(sp[1]) * cam.half_h;
  }
  const Ewa ewa = ewa_jacobian(cam, t, z);
  const auto& M = ewa.M;
  double Rq[3][3];
  quat_rotation(q_in[0], q_in[1], q_in[2], q_in[3], Rq);
  const double sc[3] = {double(s_in[0]), double(s_in[1]), double(s_in[2])};
  double MA[2][3];  // M R(q) S: cov = (M A)(M A)^T with A = R(q) S
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) MA[i][j] = (M[i][0] * Rq[0][j] + M[i][1] * Rq[1][j] + M[i][2] * Rq[2][j]) * sc[j];
  const double a = MA[0][0] * MA[0][0] + MA[0][1] * MA[0][1] + MA[0][2] * MA[0][2] + cam.low_pass;
  const double b = MA[0][0] * MA[1][0] + MA[0][1] * MA[1][1] + MA[0][2] * MA[1][2];
  const double c = MA[1][0] * MA[1][0] + MA[1][1] * MA[1][1] + MA[1][2] * MA[1][2] + cam.low_pass;
  const double det = a * c - b * b;
  const bool det_ok = det != 0.0;
  const double det_safe = det_ok ? det : 1.0;
  conic[0] = static_cast<scalar_t>(c / det_safe);
  conic[1] = static_cast<scalar_t>(-b / det_safe);
  conic[2] = static_cast<scalar_t>(a / det_safe);
  means2d[0] = static_cast<scalar_t>(u);
  means2d[1] = static_cast<scalar_t>(v);
  *depth = static_cast<scalar_t>(t[2]);

  const double mid = 0.5 * (a + c);
  const double gap = std::sqrt(std::max(mid * mid - det, ps.min_discriminant));
  const double radius_d = std::ceil(ps.radius_sigmas * std::sqrt(std::max(mid + gap, mid - gap)));
  // the reference: 0 unless in front, det != 0 and finite; clamped to 2^30 before the int cast
  int32_t radius = 0;
  if (in_front && det_ok && std::isfinite(radius_d)) radius = static_cast<int32_t>(std::min(radius_d, 1073741824.0));
  // getRect on the rounded position, in the input precision: trunc((u -+ r [+ ts] - 1) / ts) in [0, n]
  const scalar_t us = means2d[0], vs = means2d[1], rs = static_cast<scalar_t>(radius);
  const scalar_t ts = static_cast<scalar_t>(ps.tile_size);
  auto cell = [](scalar_t q, int64_t n) -> int32_t {
    const double tq = std::trunc(static_cast<double>(q));
    return static_cast<int32_t>(std::min(std::max(tq, 0.0), static_cast<double>(n)));
  };
  const bool finite = std::isfinite(static_cast<double>(us)) && std::isfinite(static_cast<double>(vs));
  rect[0] = finite ? cell((us - rs) / ts, ps.n_tiles_x) : 0;
  rect[1] = finite ? cell((vs - rs) / ts, ps.n_tiles_y) : 0;
  rect[2] = finite ? cell((((us + rs) + ts) - scalar_t(1)) / ts, ps.n_tiles_x) : 0;
  rect[3] = finite ? cell((((vs + rs) + ts) - scalar_t(1)) / ts, ps.n_tiles_y) : 0;
  if (radius <= 0 || rect[2] <= rect[0] || rect[3] <= rect[1]) radius = 0;
  return radius;
}

// max(SH(normalize(mean - campos)) + 0.5, 0) at ``degree`` (the reference's colors_from_sh), float64
template <typename scalar_t>
void sh_color(const CameraParams& cam, int degree, const scalar_t* m_in, const scalar_t* sh, scalar_t* rgb) {
  const double d[3] = {double(m_in[0]) - cam.campos[0], double(m_in[1]) - cam.campos[1], double(m_in[2]) - cam.campos[2]};
  const double norm = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  const double inv = norm > 0.0 ? 1.0 / norm : 1.0;
  double Y[16], dY[16][3];
  const int k_used = sh_basis(degree, d[0] * inv, d[1] * inv, d[2] * inv, Y, dY);
  for (int c = 0; c < 3; ++c) {
    double val = 0.5;
    for (int k = 0; k < k_used; ++k) val += Y[k] * double(sh[k * 3 + c]);
    rgb[c] = static_cast<scalar_t>(std::max(val, 0.0));
  }
}

// The backward of project_one's means2d / conic / depth and of sh_color for one Gaussian in one
// view, added into the float64 accumulators gm_out [3], gq_out [4], gs_out [3] and gsh_out [K, 3]
// (SH only); gsp_out [2] (d loss / d NDC xy of this view) is written.
template <typename scalar_t>
void preprocess_backward_one(const CameraParams& cam, int sh_degree, int64_t n_coeffs, const scalar_t* m_in,
                             const scalar_t* q_in, const scalar_t* s_in, const scalar_t* sh_in,
                             const double* g_uv, const double* g_conic, double g_depth,
                             const double* g_color, double* gm_out, double* gq_out, double* gs_out,
                             double* gsh_out, double* gsp_out) {
  const double* R = cam.R;
  const double m[3] = {double(m_in[0]), double(m_in[1]), double(m_in[2])};
  double gm[3] = {0.0, 0.0, 0.0};

  // SH colours: colour_c = max(sum_k Y_k(dir) sh_kc + 0.5, 0), dir = normalize(mean - campos)
  if (sh_in != nullptr) {
    const double d[3] = {m[0] - cam.campos[0], m[1] - cam.campos[1], m[2] - cam.campos[2]};
    const double norm = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
    const double inv = norm > 0.0 ? 1.0 / norm : 1.0;
    const double dir[3] = {d[0] * inv, d[1] * inv, d[2] * inv};
    double Y[16], dY[16][3];
    const int k_used = sh_basis(sh_degree, dir[0], dir[1], dir[2], Y, dY);
    double g_val[3];
    for (int c = 0; c < 3; ++c) {
      double val = 0.5;
      for (int k = 0; k < k_used; ++k) val += Y[k] * double(sh_in[k * 3 + c]);
      g_val[c] = val >= 0.0 ? double(g_color[c]) : 0.0;
    }
    double g_dir[3] = {0.0, 0.0, 0.0};
    for (int k = 0; k < n_coeffs; ++k) {
      for (int c = 0; c < 3; ++c) if (k < k_used) gsh_out[k * 3 + c] += Y[k] * g_val[c];
    }
    for (int k = 1; k < k_used; ++k) {
      const double gy = double(sh_in[k * 3]) * g_val[0] + double(sh_in[k * 3 + 1]) * g_val[1] +
                        double(sh_in[k * 3 + 2]) * g_val[2];
      for (int j = 0; j < 3; ++j) g_dir[j] += gy * dY[k][j];
    }
    if (norm > 0.0) {  // d/dd (d / |d|) = (I - dir dir^T) / |d|
      const double proj = g_dir[0] * dir[0] + g_dir[1] * dir[1] + g_dir[2] * dir[2];
      for (int j = 0; j < 3; ++j) gm[j] += (g_dir[j] - proj * dir[j]) * inv;
    } else {
      for (int j = 0; j < 3; ++j) gm[j] += g_dir[j];
    }
  }

  // view space, screen position and depth
  double t[3];
  for (int i = 0; i < 3; ++i) t[i] = R[3 * i] * m[0] + R[3 * i + 1] * m[1] + R[3 * i + 2] * m[2] + cam.t[i];
  const bool in_front = t[2] > cam.near;
  const double z = in_front ? t[2] : 1.0;
  const double gu = double(g_uv[0]), gv = double(g_uv[1]);
  gsp_out[0] = gu * cam.half_w;
  gsp_out[1] = gv * cam.half_h;
  double gt[3] = {gu * cam.fx / z, gv * cam.fy / z, 0.0};
  double gz = -gu * cam.fx * t[0] / (z * z) - gv * cam.fy * t[1] / (z * z);
  double g_tz = g_depth;

  // EWA Jacobian with the clamped direction a constant
  const Ewa ewa = ewa_jacobian(cam, t, z);
  const auto& M = ewa.M;
  const double jx = ewa.jx, jy = ewa.jy;
  const bool clamp_x = ewa.clamp_x, clamp_y = ewa.clamp_y;

  // 3D covariance A A^T, A = R(q) diag(s), with the unnormalised quaternion formula
  const double qr = q_in[0], qx = q_in[1], qy = q_in[2], qz = q_in[3];
  double Rq[3][3];
  quat_rotation(qr, qx, qy, qz, Rq);
  const double sc[3] = {double(s_in[0]), double(s_in[1]), double(s_in[2])};
  double A[3][3], S3[3][3];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) A[i][j] = Rq[i][j] * sc[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) S3[i][j] = A[i][0] * A[j][0] + A[i][1] * A[j][1] + A[i][2] * A[j][2];
  double MS[2][3];  // M S3
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) MS[i][j] = M[i][0] * S3[0][j] + M[i][1] * S3[1][j] + M[i][2] * S3[2][j];
  const double a = MS[0][0] * M[0][0] + MS[0][1] * M[0][1] + MS[0][2] * M[0][2] + cam.low_pass;
  const double b = MS[0][0] * M[1][0] + MS[0][1] * M[1][1] + MS[0][2] * M[1][2];
  const double c = MS[1][0] * M[1][0] + MS[1][1] * M[1][1] + MS[1][2] * M[1][2] + cam.low_pass;

  // conic = (c, -b, a) / det  ->  (a, b, c) of the covariance
  const double gA = double(g_conic[0]), gB = double(g_conic[1]), gC = double(g_conic[2]);
  const double det = a * c - b * b;
  double ga, gb, gc;
  if (det != 0.0) {
    const double i2 = 1.0 / (det * det);
    ga = (-c * c * gA + b * c * gB - b * b * gC) * i2;
    gb = (2.0 * b * c * gA - (det + 2.0 * b * b) * gB + 2.0 * a * b * gC) * i2;
    gc = (-b * b * gA + a * b * gB - a * a * gC) * i2;
  } else {
    ga = gC;
    gb = -gB;
    gc = gA;
  }
  // cov = M S3 M^T, read as a = cov00, b = cov01, c = cov11: with Gs = G + G^T = [[2ga, gb], [gb, 2gc]],
  // dL/dM = Gs M S3 and dL/dS3 = M^T G M (only its symmetric part matters for S3 = A A^T)
  const double Gs[2][2] = {{2.0 * ga, gb}, {gb, 2.0 * gc}};
  double gM[2][3];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) gM[i][j] = Gs[i][0] * MS[0][j] + Gs[i][1] * MS[1][j];
  double P[3][3];  // M^T Gs M = dL/dS3 + dL/dS3^T
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      P[i][j] = M[0][i] * (Gs[0][0] * M[0][j] + Gs[0][1] * M[1][j]) + M[1][i] * (Gs[1][0] * M[0][j] + Gs[1][1] * M[1][j]);
  double gA3[3][3];  // dL/dA = P A
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) gA3[i][j] = P[i][0] * A[0][j] + P[i][1] * A[1][j] + P[i][2] * A[2][j];
  double gR[3][3];
  for (int j = 0; j < 3; ++j) {
    double gsj = 0.0;
    for (int i = 0; i < 3; ++i) {
      gR[i][j] = gA3[i][j] * sc[j];
      gsj += gA3[i][j] * Rq[i][j];
    }
    gs_out[j] += gsj;
  }
  gq_out[0] += (2.0 * (-qz * gR[0][1] + qy * gR[0][2] + qz * gR[1][0] - qx * gR[1][2] - qy * gR[2][0] +
                              qx * gR[2][1]));
  gq_out[1] += (2.0 * (qy * gR[0][1] + qz * gR[0][2] + qy * gR[1][0] - 2.0 * qx * gR[1][1] -
                              qr * gR[1][2] + qz * gR[2][0] + qr * gR[2][1] - 2.0 * qx * gR[2][2]));
  gq_out[2] += (2.0 * (-2.0 * qy * gR[0][0] + qx * gR[0][1] + qr * gR[0][2] + qx * gR[1][0] +
                              qz * gR[1][2] - qr * gR[2][0] + qz * gR[2][1] - 2.0 * qy * gR[2][2]));
  gq_out[3] += (2.0 * (-2.0 * qz * gR[0][0] - qr * gR[0][1] + qx * gR[0][2] + qr * gR[1][0] -
                              2.0 * qz * gR[1][1] + qy * gR[1][2] + qx * gR[2][0] + qy * gR[2][1]));

  // M = J W -> J -> view-space mean
  double gJ[2][3];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) gJ[i][j] = gM[i][0] * R[3 * j] + gM[i][1] * R[3 * j + 1] + gM[i][2] * R[3 * j + 2];
  const double z2 = z * z, z3 = z2 * z;
  gz += -gJ[0][0] * cam.fx / z2 + gJ[0][2] * 2.0 * cam.fx * jx / z3 - gJ[1][1] * cam.fy / z2 +
        gJ[1][2] * 2.0 * cam.fy * jy / z3;
  if (!clamp_x) gt[0] += -gJ[0][2] * cam.fx / z2;
  if (!clamp_y) gt[1] += -gJ[1][2] * cam.fy / z2;
  gt[2] = (in_front ? gz : 0.0) + g_tz;
  for (int j = 0; j < 3; ++j) gm[j] += R[j] * gt[0] + R[3 + j] * gt[1] + R[6 + j] * gt[2];
  for (int j = 0; j < 3; ++j) gm_out[j] += gm[j];
}

// Stable sort of Gaussian indices by depth (ties keep index order, as torch.sort(stable=True)). The
// visible Gaussians' depths are > near > 0, and the bits of positive floats order as the values: an
// LSD radix sort on them (3 passes of 11 bits) is ~10x faster than std::stable_sort, which float64
// depths and a near plane <= 0 still use.
inline void sort_by_depth(const double* depths, std::vector<int32_t>* order) {
  std::stable_sort(order->begin(), order->end(), [depths](int32_t p, int32_t q) { return depths[p] < depths[q]; });
}
inline void sort_by_depth(const float* depths, std::vector<int32_t>* order) {
  const size_t n = order->size();
  std::vector<uint32_t> keys(n), keys_tmp(n);
  std::vector<int32_t> tmp(n);
  uint32_t signs = 0;
  for (size_t j = 0; j < n; ++j) {
    std::memcpy(&keys[j], &depths[(*order)[j]], sizeof(float));
    signs |= keys[j];
  }
  if (signs >> 31) {  // a negative depth (a near plane <= 0): the bits do not order as the values
    std::stable_sort(order->begin(), order->end(), [depths](int32_t p, int32_t q) { return depths[p] < depths[q]; });
    return;
  }
  int32_t* src = order->data();
  int32_t* dst = tmp.data();
  uint32_t* ksrc = keys.data();
  uint32_t* kdst = keys_tmp.data();
  for (int shift = 0; shift < 32; shift += 11) {
    size_t count[2049] = {0};
    for (size_t j = 0; j < n; ++j) ++count[((ksrc[j] >> shift) & 2047) + 1];
    for (int b = 0; b < 2048; ++b) count[b + 1] += count[b];
    for (size_t j = 0; j < n; ++j) {
      const size_t at = count[(ksrc[j] >> shift) & 2047]++;
      dst[at] = src[j];
      kdst[at] = ksrc[j];
    }
    std::swap(src, dst);
    std::swap(ksrc, kdst);
  }
  if (src != order->data()) std::copy(src, src + n, order->data());  // 3 passes: the result is in tmp
}

// ---------------------------------------------------------------------------------------------
// the ops
// ---------------------------------------------------------------------------------------------
void check_float_input(const at::Tensor& t, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type(), what,
              " must be a contiguous CPU tensor of the means' dtype");
}

// All views of a batch: V cameras, N Gaussians. means [N,3], quats [N,4] (w,x,y,z, not normalised),
// scales [S,N,3] (S = 1: shared, or V: per view), opacities [N], sh_or_colors [N,K,3] SH (use_sh) or
// [N,3] colours, screen [V,N,2] (or empty: no densification leaf), cameras float64 [V,25],
// sh_degrees int64 [V].
// -> image [V,H,W,5] (rgb, depth, alpha sums), means2d [V,N,2], depths [V,N], conics [V,N,3],
//    radii [V,N] int32; the entries (each view's visible Gaussians in depth order, view v's from
//    view_base[v]): their means2d [E,2], conics [E,3], opacities [E], features [E,5] (rgb, depth, 1) and
//    Gaussian [E], view_base [V+1]; the tile lists gauss_ids [M] (entries relative to the view's base),
//    offsets [V n_tiles + 1]; pair_start [E + 1] and pair_slot [M] (each pair's row, grouped by entry);
//    spans, then one contribution buffer per thread
std::vector<at::Tensor> rasterize_forward(at::Tensor means, at::Tensor quats, at::Tensor scales, at::Tensor opacities,
                                          at::Tensor sh_or_colors, at::Tensor screen, at::Tensor cameras,
                                          at::Tensor sh_degrees, bool use_sh, int64_t width, int64_t height,
                                          int64_t tile_size, double alpha_max, double alpha_min, double t_min,
                                          double min_discriminant, double radius_sigmas) {
  const Settings s = make_settings(width, height, tile_size, alpha_max, alpha_min, t_min);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be [N, 3]");
  const int64_t n = means.size(0), n_views = cameras.size(0), n_tiles_all = n_views * s.n_tiles;
  TORCH_CHECK(means.device().is_cpu() && means.is_contiguous() && at::isFloatingType(means.scalar_type()),
              "means must be a contiguous CPU float tensor");
  check_float_input(quats, means, "quats");
  check_float_input(scales, means, "scales");
  check_float_input(opacities, means, "opacities");
  check_float_input(sh_or_colors, means, "sh_or_colors");
  TORCH_CHECK(quats.dim() == 2 && quats.size(0) == n && quats.size(1) == 4, "quats must be [N, 4]");
  TORCH_CHECK(scales.dim() == 3 && (scales.size(0) == 1 || scales.size(0) == n_views) && scales.size(1) == n &&
                  scales.size(2) == 3, "scales must be [1 or V, N, 3]");
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n, "opacities must be [N]");
  if (use_sh) {
    TORCH_CHECK(sh_or_colors.dim() == 3 && sh_or_colors.size(0) == n && sh_or_colors.size(2) == 3, "sh must be [N, K, 3]");
  } else {
    TORCH_CHECK(sh_or_colors.dim() == 2 && sh_or_colors.size(0) == n && sh_or_colors.size(1) == 3, "colors must be [N, 3]");
  }
  const bool with_screen = screen.numel() > 0;
  if (with_screen) {
    check_float_input(screen, means, "screen");
    TORCH_CHECK(screen.dim() == 3 && screen.size(0) == n_views && screen.size(1) == n && screen.size(2) == 2,
                "screen must be [V, N, 2]");
  }
  TORCH_CHECK(cameras.scalar_type() == at::kDouble && cameras.is_contiguous() && cameras.dim() == 2 &&
                  cameras.size(1) == kCameraValues, "cameras must be float64 [V, 25]");
  TORCH_CHECK(sh_degrees.scalar_type() == at::kLong && sh_degrees.is_contiguous() && sh_degrees.numel() == n_views,
              "sh_degrees must be int64 [V]");
  const int64_t n_coeffs = use_sh ? sh_or_colors.size(1) : 0;
  const int64_t* degrees = sh_degrees.data_ptr<int64_t>();
  for (int64_t v = 0; v < n_views; ++v) {
    TORCH_CHECK(!use_sh || (degrees[v] >= 0 && degrees[v] <= 3 && n_coeffs >= (degrees[v] + 1) * (degrees[v] + 1)),
                "each SH degree must be in 0..3 with enough coefficients");
  }
  constexpr int64_t dim = 5;
  const auto fopt = means.options();
  auto image = at::zeros({n_views, height, width, dim}, fopt);
  auto means2d = at::empty({n_views, n, 2}, fopt);
  auto depths = at::empty({n_views, n}, fopt);
  auto conics = at::empty({n_views, n, 3}, fopt);
  auto radii = at::empty({n_views, n}, fopt.dtype(at::kInt));
  auto features = at::empty({n_views, n, dim}, fopt);
  auto offsets = at::zeros({n_tiles_all + 1}, fopt.dtype(at::kLong));
  auto spans = at::zeros({n_tiles_all, kSpan}, fopt.dtype(at::kLong));
  at::Tensor gauss_ids, pair_slot, pair_start, view_base, entry_ids, s_means2d, s_conics, s_opacities, s_features;
  std::vector<at::Tensor> buffers;
  std::vector<CameraParams> cams(n_views);
  for (int64_t v = 0; v < n_views; ++v) cams[v] = read_camera(cameras.data_ptr<double>() + v * kCameraValues);
  const ProjectionSettings ps{min_discriminant, radius_sigmas, tile_size, s.n_tiles_x, s.n_tiles / s.n_tiles_x};

  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "lucid_rasterize_forward", [&] {
    const scalar_t *mp = means.data_ptr<scalar_t>(), *qp = quats.data_ptr<scalar_t>(), *sp = scales.data_ptr<scalar_t>(),
                   *op = opacities.data_ptr<scalar_t>(), *cp = sh_or_colors.data_ptr<scalar_t>();
    const scalar_t* scr = with_screen ? screen.data_ptr<scalar_t>() : nullptr;
    scalar_t *m2 = means2d.data_ptr<scalar_t>(), *de = depths.data_ptr<scalar_t>(), *co = conics.data_ptr<scalar_t>(),
             *fe = features.data_ptr<scalar_t>();
    int32_t* ra = radii.data_ptr<int32_t>();
    const int64_t scale_stride = scales.size(0) == 1 ? 0 : n * 3;
    std::vector<int32_t> rects(n_views * n * 4);
    // 1. projection and colours, per (view, Gaussian)
    at::parallel_for(0, n_views * n, 1024, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t v = g / n, i = g - v * n;
        ra[g] = project_one<scalar_t>(cams[v], ps, mp + 3 * i, qp + 4 * i, sp + v * scale_stride + 3 * i,
                                      scr ? scr + 2 * g : nullptr, m2 + 2 * g, co + 3 * g, de + g, &rects[4 * g]);
        scalar_t* f = fe + dim * g;
        if (use_sh) {
          sh_color<scalar_t>(cams[v], static_cast<int>(degrees[v]), mp + 3 * i, cp + n_coeffs * 3 * i, f);
        } else {
          f[0] = cp[3 * i]; f[1] = cp[3 * i + 1]; f[2] = cp[3 * i + 2];
        }
        f[3] = de[g];
        f[4] = scalar_t(1);
      }
    });
    // 2. binning: per view, the visible Gaussians by depth (stable); they become the view's entries, laid
    // out in that order (a tile's list then reads increasing addresses); then counted into tiles
    int64_t* off = offsets.data_ptr<int64_t>();
    std::vector<std::vector<int32_t>> order(n_views);
    at::parallel_for(0, n_views, 1, [&](int64_t v0, int64_t v1) {
      for (int64_t v = v0; v < v1; ++v) {
        std::vector<int32_t>& ord = order[v];
        const int32_t* rv = ra + v * n;
        const scalar_t* dv = de + v * n;
        for (int64_t i = 0; i < n; ++i) if (rv[i] > 0) ord.push_back(static_cast<int32_t>(i));
        sort_by_depth(dv, &ord);
      }
    });
    view_base = at::zeros({n_views + 1}, fopt.dtype(at::kLong));
    int64_t* vb = view_base.data_ptr<int64_t>();
    for (int64_t v = 0; v < n_views; ++v) vb[v + 1] = vb[v] + static_cast<int64_t>(order[v].size());
    const int64_t n_entries = vb[n_views];
    s_means2d = at::empty({n_entries, 2}, fopt);
    s_conics = at::empty({n_entries, 3}, fopt);
    s_opacities = at::empty({n_entries}, fopt);
    s_features = at::empty({n_entries, dim}, fopt);
    entry_ids = at::empty({n_entries}, fopt.dtype(at::kLong));
    pair_start = at::zeros({n_entries + 1}, fopt.dtype(at::kLong));
    scalar_t *sm = s_means2d.data_ptr<scalar_t>(), *sc = s_conics.data_ptr<scalar_t>(),
             *so = s_opacities.data_ptr<scalar_t>(), *sf = s_features.data_ptr<scalar_t>();
    int64_t *eid = entry_ids.data_ptr<int64_t>(), *pst = pair_start.data_ptr<int64_t>();
    at::parallel_for(0, n_views, 1, [&](int64_t v0, int64_t v1) {
      for (int64_t v = v0; v < v1; ++v) {
        int64_t* counts = off + v * s.n_tiles + 1;
        for (size_t r = 0; r < order[v].size(); ++r) {
          const int64_t i = order[v][r], g = v * n + i, e = vb[v] + static_cast<int64_t>(r);
          eid[e] = i;
          std::copy(m2 + 2 * g, m2 + 2 * g + 2, sm + 2 * e);
          std::copy(co + 3 * g, co + 3 * g + 3, sc + 3 * e);
          std::copy(fe + dim * g, fe + dim * g + dim, sf + dim * e);
          so[e] = op[i];
          const int32_t* rc = &rects[4 * g];
          for (int64_t ty = rc[1]; ty < rc[3]; ++ty)
            for (int64_t tx = rc[0]; tx < rc[2]; ++tx) ++counts[ty * s.n_tiles_x + tx];
          pst[e + 1] = int64_t(rc[2] - rc[0]) * (rc[3] - rc[1]);
        }
      }
    });
    for (int64_t t = 0; t < n_tiles_all; ++t) {
      off[t + 1] += off[t];
      check_tile_list_length(off[t + 1] - off[t], s);
    }
    for (int64_t e = 0; e < n_entries; ++e) pst[e + 1] += pst[e];
    const int64_t m = off[n_tiles_all];
    TORCH_CHECK(m < (int64_t(1) << 31), "more than 2^31 (tile, Gaussian) pairs");
    gauss_ids = at::empty({m}, fopt.dtype(at::kLong));
    pair_slot = at::empty({m}, fopt.dtype(at::kLong));
    int64_t *gid = gauss_ids.data_ptr<int64_t>(), *slot = pair_slot.data_ptr<int64_t>();
    at::parallel_for(0, n_views, 1, [&](int64_t v0, int64_t v1) {
      for (int64_t v = v0; v < v1; ++v) {
        std::vector<int64_t> cursor(off + v * s.n_tiles, off + (v + 1) * s.n_tiles);
        for (size_t r = 0; r < order[v].size(); ++r) {
          const int32_t* rc = &rects[4 * (v * n + order[v][r])];
          int64_t j = pst[vb[v] + static_cast<int64_t>(r)];
          for (int64_t ty = rc[1]; ty < rc[3]; ++ty) {
            for (int64_t tx = rc[0]; tx < rc[2]; ++tx) {
              const int64_t k = cursor[ty * s.n_tiles_x + tx]++;
              gid[k] = static_cast<int64_t>(r);  // the entry, relative to the view's base
              slot[k] = j++;
            }
          }
        }
      }
    });
    // 3. compositing over the tiles of all views
    const std::vector<Bound> bounds = make_bounds<scalar_t>(sm, sc, so, n_entries, s);
    std::vector<typename ForwardTile<scalar_t, dim>::Scratch> scratches;
    for_each_tile(n_tiles_all,
                  ForwardTile<scalar_t, dim>{s, sm, sc, so, sf, gid, off, dim, vb, image.data_ptr<scalar_t>(),
                                             spans.data_ptr<int64_t>(), bounds.data()},
                  scratches);
    buffers = buffers_as_tensors<scalar_t>(scratches);
  });
  std::vector<at::Tensor> out = {image, means2d, depths, conics, radii, s_means2d, s_conics, s_opacities, s_features,
                                 entry_ids, view_base, gauss_ids, offsets, pair_start, pair_slot, spans};
  out.insert(out.end(), buffers.begin(), buffers.end());
  return out;
}

// -> grad means [N,3], quats [N,4], scales [S,N,3], opacities [N], sh_or_colors (its shape), screen [V,N,2]
std::vector<at::Tensor> rasterize_backward(
    at::Tensor means, at::Tensor quats, at::Tensor scales, at::Tensor opacities, at::Tensor sh_or_colors,
    at::Tensor cameras, at::Tensor sh_degrees, bool use_sh, at::Tensor s_means2d, at::Tensor s_conics,
    at::Tensor s_opacities, at::Tensor s_features, at::Tensor entry_ids, at::Tensor view_base, at::Tensor gauss_ids,
    at::Tensor offsets, at::Tensor pair_start, at::Tensor pair_slot,
    at::Tensor spans, std::vector<at::Tensor> buffers,
    at::Tensor grad_image, at::Tensor grad_means2d, at::Tensor grad_conics, at::Tensor grad_depths, int64_t width,
    int64_t height, int64_t tile_size, double alpha_max, double alpha_min, double t_min) {
  const Settings s = make_settings(width, height, tile_size, alpha_max, alpha_min, t_min);
  const int64_t n = means.size(0), n_views = cameras.size(0), n_tiles_all = n_views * s.n_tiles;
  constexpr int64_t dim = 5;
  const int64_t stride = kGeomGrads + dim;
  for (const auto* t : {&quats, &scales, &opacities, &sh_or_colors, &s_means2d, &s_conics, &s_opacities, &s_features}) {
    check_float_input(*t, means, "every float input");
  }
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3 && quats.dim() == 2 && quats.size(0) == n && quats.size(1) == 4 &&
                  scales.dim() == 3 && (scales.size(0) == 1 || scales.size(0) == n_views) && scales.size(1) == n &&
                  scales.size(2) == 3 && opacities.numel() == n && sh_or_colors.size(0) == n &&
                  sh_degrees.scalar_type() == at::kLong && sh_degrees.numel() == n_views,
              "means [N,3], quats [N,4], scales [1 or V,N,3], opacities [N], sh_or_colors [N,...], sh_degrees [V]");
  TORCH_CHECK(view_base.scalar_type() == at::kLong && view_base.numel() == n_views + 1 &&
                  entry_ids.scalar_type() == at::kLong, "view_base / entry_ids must come from the forward");
  const int64_t* vb = view_base.data_ptr<int64_t>();
  const int64_t n_entries = vb[n_views];
  TORCH_CHECK(entry_ids.numel() == n_entries && s_means2d.numel() == n_entries * 2 && s_conics.numel() == n_entries * 3 &&
                  s_opacities.numel() == n_entries && s_features.numel() == n_entries * dim,
              "the entries must come from the forward");
  TORCH_CHECK(cameras.scalar_type() == at::kDouble && cameras.is_contiguous() && cameras.size(1) == kCameraValues,
              "cameras must be float64 [V, 25]");
  check_tile_lists(gauss_ids, offsets, n_tiles_all, n, s);
  TORCH_CHECK(pair_start.scalar_type() == at::kLong && pair_start.numel() == n_entries + 1 &&
                  pair_slot.scalar_type() == at::kLong && pair_slot.numel() == gauss_ids.numel(),
              "pair_start / pair_slot must come from the forward");
  TORCH_CHECK(grad_image.numel() == n_views * height * width * dim, "grad_image must be [V, H, W, 5]");
  grad_image = grad_image.to(means.scalar_type()).contiguous();
  const bool with_g2 = grad_means2d.numel() > 0, with_gc = grad_conics.numel() > 0, with_gd = grad_depths.numel() > 0;
  if (with_g2) grad_means2d = grad_means2d.to(means.scalar_type()).contiguous();
  if (with_gc) grad_conics = grad_conics.to(means.scalar_type()).contiguous();
  if (with_gd) grad_depths = grad_depths.to(means.scalar_type()).contiguous();
  TORCH_CHECK((!with_g2 || grad_means2d.numel() == n_views * n * 2) && (!with_gc || grad_conics.numel() == n_views * n * 3) &&
                  (!with_gd || grad_depths.numel() == n_views * n), "output gradients must be [V, N, .]");
  const int64_t m = gauss_ids.numel();
  const int64_t n_coeffs = use_sh ? sh_or_colors.size(1) : 0;
  const int64_t* degrees = sh_degrees.data_ptr<int64_t>();
  std::vector<CameraParams> cams(n_views);
  for (int64_t v = 0; v < n_views; ++v) cams[v] = read_camera(cameras.data_ptr<double>() + v * kCameraValues);

  auto g_means = at::empty_like(means), g_quats = at::empty_like(quats), g_scales = at::zeros_like(scales);
  auto g_opac = at::empty_like(opacities), g_color = at::empty_like(sh_or_colors);
  auto g_screen = at::zeros({n_views, n, 2}, means.options());
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "lucid_rasterize_backward", [&] {
    check_pixel_state(spans, buffers, n_tiles_all, sizeof(Contribution<scalar_t>));
    const auto pointers = buffer_pointers<scalar_t>(buffers);
    // 1. compositing, per (tile, entry) pair, then summed per entry
    ScratchArray<scalar_t> pair_grads(static_cast<size_t>(m * stride));
    std::vector<typename BackwardTile<scalar_t, dim>::Scratch> scratches;
    for_each_tile(n_tiles_all,
                  BackwardTile<scalar_t, dim>{s, s_means2d.data_ptr<scalar_t>(), s_conics.data_ptr<scalar_t>(),
                                              s_opacities.data_ptr<scalar_t>(), s_features.data_ptr<scalar_t>(),
                                              gauss_ids.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), dim, vb,
                                              spans.data_ptr<int64_t>(), pointers.data(), grad_image.data_ptr<scalar_t>(),
                                              pair_slot.data_ptr<int64_t>(), pair_grads.data()},
                  scratches);
    ScratchArray<double> per_entry(static_cast<size_t>(n_entries * stride));
    reduce_pairs<scalar_t>(pair_grads.data(), stride, pair_start.data_ptr<int64_t>(), n_entries,
                           per_entry.data());
    std::vector<int64_t> entry_of(n_views * n, -1);  // (view, Gaussian) -> entry; -1: not visible there
    const int64_t* eid = entry_ids.data_ptr<int64_t>();
    for (int64_t v = 0; v < n_views; ++v)
      for (int64_t e = vb[v]; e < vb[v + 1]; ++e) entry_of[v * n + eid[e]] = e;
    const std::vector<double> nothing(stride, 0.0);
    // 2. projection and colours, per Gaussian over the views in order
    const scalar_t *mp = means.data_ptr<scalar_t>(), *qp = quats.data_ptr<scalar_t>(), *sp = scales.data_ptr<scalar_t>(),
                   *cp = sh_or_colors.data_ptr<scalar_t>();
    const scalar_t* g2 = with_g2 ? grad_means2d.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gc = with_gc ? grad_conics.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gd = with_gd ? grad_depths.data_ptr<scalar_t>() : nullptr;
    scalar_t *om = g_means.data_ptr<scalar_t>(), *oq = g_quats.data_ptr<scalar_t>(), *os = g_scales.data_ptr<scalar_t>(),
             *oo = g_opac.data_ptr<scalar_t>(), *oc = g_color.data_ptr<scalar_t>(), *osp = g_screen.data_ptr<scalar_t>();
    const int64_t n_scales = scales.size(0), scale_stride = n_scales == 1 ? 0 : n * 3;
    const int64_t color_size = use_sh ? n_coeffs * 3 : 3;
    at::parallel_for(0, n, 512, [&](int64_t i0, int64_t i1) {
      std::vector<double> gsh(color_size), gs(n_scales * 3);
      for (int64_t i = i0; i < i1; ++i) {
        double gm[3] = {0.0, 0.0, 0.0}, gq[4] = {0.0, 0.0, 0.0, 0.0}, go = 0.0;
        std::fill(gsh.begin(), gsh.end(), 0.0);
        std::fill(gs.begin(), gs.end(), 0.0);
        for (int64_t v = 0; v < n_views; ++v) {
          const int64_t g = v * n + i;
          const double* pv = entry_of[g] >= 0 ? per_entry.data() + entry_of[g] * stride : nothing.data();
          double guv[2] = {pv[0], pv[1]}, gco[3] = {pv[2], pv[3], pv[4]}, gcl[3] = {pv[6], pv[7], pv[8]};
          double gde = pv[9];
          go += pv[5];
          if (g2) { guv[0] += double(g2[2 * g]); guv[1] += double(g2[2 * g + 1]); }
          if (gc) for (int j = 0; j < 3; ++j) gco[j] += double(gc[3 * g + j]);
          if (gd) gde += double(gd[g]);
          if (!use_sh) for (int j = 0; j < 3; ++j) gsh[j] += gcl[j];
          bool any = gde != 0.0 || guv[0] != 0.0 || guv[1] != 0.0;
          for (int j = 0; j < 3; ++j) any |= gco[j] != 0.0 || (use_sh && gcl[j] != 0.0);
          if (!any) continue;  // culled or unseen in this view: all zero, as autograd gives (no 0 * inf)
          double gsp[2];
          preprocess_backward_one<scalar_t>(cams[v], static_cast<int>(degrees[v]), n_coeffs, mp + 3 * i, qp + 4 * i,
                                            sp + v * scale_stride + 3 * i, use_sh ? cp + color_size * i : nullptr,
                                            guv, gco, gde, gcl, gm, gq, &gs[n_scales == 1 ? 0 : 3 * v],
                                            use_sh ? gsh.data() : nullptr, gsp);
          osp[2 * g] = static_cast<scalar_t>(gsp[0]);
          osp[2 * g + 1] = static_cast<scalar_t>(gsp[1]);
        }
        for (int j = 0; j < 3; ++j) om[3 * i + j] = static_cast<scalar_t>(gm[j]);
        for (int j = 0; j < 4; ++j) oq[4 * i + j] = static_cast<scalar_t>(gq[j]);
        for (int64_t v = 0; v < n_scales; ++v)
          for (int j = 0; j < 3; ++j) os[v * n * 3 + 3 * i + j] = static_cast<scalar_t>(gs[3 * v + j]);
        oo[i] = static_cast<scalar_t>(go);
        for (int64_t j = 0; j < color_size; ++j) oc[color_size * i + j] = static_cast<scalar_t>(gsh[j]);
      }
    });
  });
  return {g_means, g_quats, g_scales, g_opac, g_color, g_screen};
}

// Tile lists from the tile rectangles [x0, x1) x [y0, y1) of the Gaussians in ``order`` (visible
// ones, front to back): a counting sort by tile that keeps the order within each tile, i.e. the
// stable sort by (tile, depth) of reference.bin_tiles. -> (gauss_ids [M], tile_ids [M], offsets)
std::vector<at::Tensor> bin_tiles(at::Tensor order, at::Tensor x0, at::Tensor y0, at::Tensor x1,
                                  at::Tensor y1, int64_t n_tiles_x, int64_t n_tiles_y) {
  for (const auto* t : {&order, &x0, &y0, &x1, &y1}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == at::kLong && t->dim() == 1,
                "bin_tiles takes contiguous 1D int64 CPU tensors");
  }
  const int64_t n = x0.size(0), n_order = order.size(0), n_tiles = n_tiles_x * n_tiles_y;
  for (const auto* t : {&y0, &x1, &y1}) TORCH_CHECK(t->size(0) == n, "tile rectangles must be [N]");
  const int64_t *ord = order.data_ptr<int64_t>(), *rx0 = x0.data_ptr<int64_t>(), *ry0 = y0.data_ptr<int64_t>(),
                *rx1 = x1.data_ptr<int64_t>(), *ry1 = y1.data_ptr<int64_t>();
  for (int64_t i = 0; i < n_order; ++i) {
    const int64_t g = ord[i];
    TORCH_CHECK(g >= 0 && g < n, "order must index the N Gaussians");
    TORCH_CHECK(0 <= rx0[g] && rx1[g] <= n_tiles_x && 0 <= ry0[g] && ry1[g] <= n_tiles_y,
                "tile rectangles must lie in the tile grid");
  }
  auto offsets = at::zeros({n_tiles + 1}, order.options());
  int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t i = 0; i < n_order; ++i) {
    const int64_t g = ord[i];
    for (int64_t ty = ry0[g]; ty < ry1[g]; ++ty)
      for (int64_t tx = rx0[g]; tx < rx1[g]; ++tx) ++off[ty * n_tiles_x + tx + 1];
  }
  for (int64_t t = 0; t < n_tiles; ++t) off[t + 1] += off[t];
  const int64_t m = off[n_tiles];
  auto gauss_ids = at::empty({m}, order.options());
  auto tile_ids = at::empty({m}, order.options());
  int64_t *gid = gauss_ids.data_ptr<int64_t>(), *tid = tile_ids.data_ptr<int64_t>();
  std::vector<int64_t> cursor(off, off + n_tiles);
  for (int64_t i = 0; i < n_order; ++i) {
    const int64_t g = ord[i];
    for (int64_t ty = ry0[g]; ty < ry1[g]; ++ty) {
      for (int64_t tx = rx0[g]; tx < rx1[g]; ++tx) {
        const int64_t t = ty * n_tiles_x + tx;
        const int64_t k = cursor[t]++;
        gid[k] = g;
        tid[k] = t;
      }
    }
  }
  return {gauss_ids, tile_ids, offsets};
}

// One view, any channel count D (reference.composite_tiles): -> (image [H, W, D], spans,
// then the contribution buffers)
std::vector<at::Tensor> composite_forward(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                          at::Tensor features, at::Tensor gauss_ids, at::Tensor offsets,
                                          int64_t width, int64_t height, int64_t tile_size,
                                          double alpha_max, double alpha_min, double t_min) {
  const Settings s = make_settings(width, height, tile_size, alpha_max, alpha_min, t_min);
  check_inputs(means2d, conics, opacities, features, gauss_ids, offsets, s);
  const int64_t dim = features.size(1), n = means2d.size(0);
  auto image = at::zeros({height, width, dim}, features.options());
  auto spans = at::zeros({s.n_tiles, kSpan}, features.options().dtype(at::kLong));
  std::vector<at::Tensor> buffers;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "lucid_composite_forward", [&] {
    const scalar_t *m2 = means2d.data_ptr<scalar_t>(), *co = conics.data_ptr<scalar_t>(),
                   *op = opacities.data_ptr<scalar_t>(), *fe = features.data_ptr<scalar_t>();
    const std::vector<Bound> bounds = make_bounds<scalar_t>(m2, co, op, n, s);
    std::vector<typename ForwardTile<scalar_t, 0>::Scratch> scratches;
    const int64_t view_base[2] = {0, n};
    for_each_tile(s.n_tiles,
                  ForwardTile<scalar_t, 0>{s, m2, co, op, fe, gauss_ids.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
                                           dim, view_base, image.data_ptr<scalar_t>(),
                                           spans.data_ptr<int64_t>(), bounds.data()},
                  scratches);
    buffers = buffers_as_tensors<scalar_t>(scratches);
  });
  std::vector<at::Tensor> out = {image, spans};
  out.insert(out.end(), buffers.begin(), buffers.end());
  return out;
}

// -> (grad means2d [N, 2], grad conics [N, 3], grad opacities [N], grad features [N, D])
std::vector<at::Tensor> composite_backward(at::Tensor means2d, at::Tensor conics, at::Tensor opacities,
                                           at::Tensor features, at::Tensor gauss_ids, at::Tensor offsets,
                                           at::Tensor spans,
                                           std::vector<at::Tensor> buffers, at::Tensor grad_image,
                                           int64_t width, int64_t height, int64_t tile_size,
                                           double alpha_max, double alpha_min, double t_min) {
  const Settings s = make_settings(width, height, tile_size, alpha_max, alpha_min, t_min);
  check_inputs(means2d, conics, opacities, features, gauss_ids, offsets, s);
  const int64_t n = means2d.size(0), dim = features.size(1), m = gauss_ids.size(0);
  const int64_t stride = kGeomGrads + dim;
  TORCH_CHECK(grad_image.numel() == height * width * dim, "grad_image must be [H, W, D]");
  grad_image = grad_image.to(features.scalar_type()).contiguous();
  auto grads = at::zeros({n, stride}, features.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "lucid_composite_backward", [&] {
    check_pixel_state(spans, buffers, s.n_tiles, sizeof(Contribution<scalar_t>));
    const auto pointers = buffer_pointers<scalar_t>(buffers);
    auto pair_grads = at::empty({m, stride}, features.options());
    const int64_t *ids = gauss_ids.data_ptr<int64_t>(), *off = offsets.data_ptr<int64_t>();
    std::vector<int64_t> start, slot;
    pairs_by_gaussian(ids, off, s.n_tiles, s.n_tiles, n, 1, &start, &slot);
    std::vector<typename BackwardTile<scalar_t, 0>::Scratch> scratches;
    const int64_t view_base[2] = {0, n};
    for_each_tile(s.n_tiles,
                  BackwardTile<scalar_t, 0>{s, means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(),
                                            opacities.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(), ids, off, dim,
                                            view_base,
                                            spans.data_ptr<int64_t>(), pointers.data(), grad_image.data_ptr<scalar_t>(),
                                            slot.data(), pair_grads.data_ptr<scalar_t>()},
                  scratches);
    reduce_pairs<scalar_t>(pair_grads.data_ptr<scalar_t>(), stride, start.data(), n, grads.data_ptr<double>());
  });
  auto grads_t = grads.to(features.scalar_type());
  return {grads_t.narrow(1, 0, 2).contiguous(), grads_t.narrow(1, 2, 3).contiguous(),
          grads_t.select(1, 5).contiguous(), grads_t.narrow(1, kGeomGrads, dim).contiguous()};
}

}  // namespace

// Loaded with torch.ops.load_library; no pybind11, which keeps the build at ~15 s instead of ~50 s.
TORCH_LIBRARY(lucid_rasterizer_cpu, m) {
  m.def("rasterize_forward", &rasterize_forward);
  m.def("rasterize_backward", &rasterize_backward);
  m.def("bin_tiles", &bin_tiles);
  m.def("composite_forward", &composite_forward);
  m.def("composite_backward", &composite_backward);
}
