// The "column" backprojector: the exact transpose of the Joseph forward projector, organised the
// way fast GPU backprojectors are (ASTRA's and TIGRE's voxel-driven kernels): a block of threads
// owns a 16 x 16 tile of (x, y) columns and a run of kZ slices, each thread one column walking z,
// the block loops over every view and writes each voxel once. What differs from those kernels is
// the weight: not an interpolation on the detector but the forward projector's own (voxel, weight)
// pairs, so the result is A^T, not an approximation of it.
//
// Per view the block
//   1. takes the detector window of its box (the hull of the box's projected corners, see
//      box_window) and cuts it into chunks of at most kCap pixels;
//   2. per chunk, computes the line of every pixel (make_ray + joseph_line_core: the forward's very
//      numbers) with the pixel's value folded into its weight, into shared memory (column_fill);
//   3. each thread then visits the pixels of its own column's window (column_gather). A pixel
//      whose ray is driven by x (or y) crosses the thread's plane x (or y) once, at (q_h, q_z): it
//      weighs voxel (h, z) iff h and z are the floor of q or the next index, with the forward's
//      bilinear weights; such a pixel reaches at most two voxels of the column. A z-driven pixel
//      (steep rays) crosses one plane per slice and is tried against each.
// Every (voxel, pixel) pair the forward projector visits has its ray through the box
// [x-1, x+1] x [y-1, y+1] x [z-1, z+1] around the voxel, hence its pixel in the window of any box
// that holds that one: nothing is missed, and the membership test is the forward's own.
//
// Numbers: per view and thread a hull (8 corner projections), then about 2-3 candidate pixels per
// voxel, each ~20 instructions (two shared-memory loads, two multiply-adds, floor, selects), and
// ~50 instructions per pixel of the block's window for its line, shared by the block's 256 columns.
// Indices inside a view and inside shared memory are 32-bit (rows * cols < 2^31 is checked); item
// and view offsets are 64-bit.
#pragma once

#include "cone_beam.h"

namespace unrolled3d {

constexpr int kColumnTX = 16, kColumnTY = 16;
constexpr int kColumnThreads = kColumnTX * kColumnTY;

// Slices per thread (kZ) and pixels per chunk (kCap) for a data type. On CUDA both live in shared
// memory with the accumulators: kCap * (4 + 2) * sizeof(T) + kZ * 256 * sizeof(T) = 28 KB either
// way (float: T = float; double: T = double). The CPU twin uses the same numbers, so the tests
// exercise the same blocks and chunks as the GPU. kMinBlocks: the blocks per multiprocessor the
// CUDA kernel is compiled for (__launch_bounds__), which caps its registers with no spill
// (ptxas -v, sm_90: float 76 registers, double 128).
template <typename scalar_t>
struct ColumnConfig;
template <>
struct ColumnConfig<float> {
  static constexpr int kZ = 16, kCap = 512, kMinBlocks = 3;
};
template <>
struct ColumnConfig<double> {
  static constexpr int kZ = 8, kCap = 256, kMinBlocks = 2;
};

// One pixel's line as the gather reads it: two aligned loads (16 + 8 bytes in float).
template <typename T>
struct alignas(4 * sizeof(T)) ColumnQ {
  T qb0, db, qc0, dc;
};
template <typename T>
struct alignas(2 * sizeof(T)) ColumnW {
  T wv;  // the line's weight times the pixel's value
  T a;   // driving axis 0, 1, 2 as T, or -1: nothing to backproject (degenerate ray or zero value)
};

// floor(x) as int32 for finite |x| < 2^30; larger values are clamped (they lie outside every
// volume and window: a line crosses the planes of the volume within the source's distance).
template <typename T>
U3D_HD int32_t floor_i32(T x) {
  const T lim = T(1 << 30);
  x = x < -lim ? -lim : (x > lim ? lim : x);
  const int32_t i = static_cast<int32_t>(x);
  return i - (x < static_cast<T>(i) ? 1 : 0);
}

// The forward's bilinear weight of index h on a plane the line crosses at q: 1 - frac(q) for
// floor(q), frac(q) for floor(q) + 1, else 0 (joseph_traverse's interior weights, same arithmetic).
template <typename T>
U3D_HD T tent_at(T q, int32_t h) {
  const int32_t i = floor_i32(q);
  const T f = q - static_cast<T>(i);
  return h == i ? T(1) - f : (h == i + 1 ? f : T(0));
}

// A detector window: rows r0..r1, columns c0..c1 (inclusive); empty when r0 > r1 or c0 > c1.
struct DetWindow {
  int32_t r0, r1, c0, c1;
};

U3D_HD bool window_empty(const DetWindow& w) { return w.r0 > w.r1 || w.c0 > w.c1; }

// The pixels whose lines can pass through the index-space box [x0, x1] x [y0, y1] x [z0, z1]:
// the hull of the 8 projected corners when the box does not reach the source plane (den of one
// sign over its corners), widened against rounding by footprint_window's margin (1e-2 pixel +
// 1e-3 of the window in float, 1e-6 + 1e-9 in double); the whole detector otherwise, or when the
// view has no central projection (`ok` false).
template <typename T>
U3D_HD DetWindow box_window(const ViewProjection<T>& P, bool ok, T x0, T x1, T y0, T y1, T z0, T z1, int32_t rows,
                            int32_t cols) {
  const DetWindow full{0, rows - 1, 0, cols - 1};
  if (!ok) return full;
  T rlo = T(0), rhi = T(0), clo = T(0), chi = T(0);
  int sign = 0;
U3D_UNROLL
  for (int i = 0; i < 8; ++i) {
    const T x = (i & 1) ? x1 : x0, y = (i & 2) ? y1 : y0, z = (i & 4) ? z1 : z0;
    const T den = madd(P.den_c[2], z, madd(P.den_c[1], y, madd(P.den_c[0], x, P.den_c[3])));
    const int sg = den > T(0) ? 1 : (den < T(0) ? -1 : 0);
    if (sg == 0 || (sign != 0 && sg != sign)) return full;  // the box reaches the source plane
    sign = sg;
    const T inv = T(1) / den;
    const T col = madd(P.col_c[2], z, madd(P.col_c[1], y, madd(P.col_c[0], x, P.col_c[3]))) * inv;
    const T row = madd(P.row_c[2], z, madd(P.row_c[1], y, madd(P.row_c[0], x, P.row_c[3]))) * inv;
    if (i == 0) {
      clo = chi = col;
      rlo = rhi = row;
    } else {
      clo = min_(clo, col); chi = max_(chi, col);
      rlo = min_(rlo, row); rhi = max_(rhi, row);
    }
  }
  const T m0 = sizeof(T) == 4 ? T(1e-2) : T(1e-6), m1 = sizeof(T) == 4 ? T(1e-3) : T(1e-9);
  const T mc = m0 + m1 * (chi - clo), mr = m0 + m1 * (rhi - rlo);
  // clip in floating point before converting: near the source plane the bounds can be huge
  clo = max_(clo - mc, T(0)); chi = min_(chi + mc, static_cast<T>(cols - 1));
  rlo = max_(rlo - mr, T(0)); rhi = min_(rhi + mr, static_cast<T>(rows - 1));
  if (!(clo <= chi) || !(rlo <= rhi)) return DetWindow{0, -1, 0, -1};
  return DetWindow{-floor_i32(-rlo), floor_i32(rhi), -floor_i32(-clo), floor_i32(chi)};
}

// The window of a block's box: columns bx0 .. bx0 + ntx - 1, rows by0 .. by0 + nty - 1, slices
// z0 .. z0 + nz - 1, each voxel widened by one on every side.
template <typename T>
U3D_HD DetWindow column_block_window(const ViewProjection<T>& P, bool ok, int32_t bx0, int32_t ntx, int32_t by0,
                                     int32_t nty, int32_t z0, int32_t nz, int32_t rows, int32_t cols) {
  return box_window(P, ok, static_cast<T>(bx0 - 1), static_cast<T>(bx0 + ntx), static_cast<T>(by0 - 1),
                    static_cast<T>(by0 + nty), static_cast<T>(z0 - 1), static_cast<T>(z0 + nz), rows, cols);
}

// The window of one thread's column (x, y, z0 .. z0 + nz - 1).
template <typename T>
U3D_HD DetWindow column_thread_window(const ViewProjection<T>& P, bool ok, int32_t x, int32_t y, int32_t z0,
                                      int32_t nz, int32_t rows, int32_t cols) {
  return box_window(P, ok, static_cast<T>(x - 1), static_cast<T>(x + 1), static_cast<T>(y - 1),
                    static_cast<T>(y + 1), static_cast<T>(z0 - 1), static_cast<T>(z0 + nz), rows, cols);
}

// Chunks of a window: cols_per columns by rows_per rows, at most `cap` pixels each.
struct ColumnChunks {
  int32_t rows_per, cols_per;
};

U3D_HD ColumnChunks column_chunks(const DetWindow& w, int32_t cap) {
  const int32_t width = w.c1 - w.c0 + 1;
  const int32_t cols_per = width < cap ? width : cap;
  return ColumnChunks{cap / cols_per, cols_per};
}

// The line of pixel (r, c) of one view, its weight times the pixel's value. `sino_view` is the
// view's (rows, cols) image.
template <typename T, typename scalar_t>
U3D_HD void column_fill(const ViewFrame<T>& f, const VolumeIndexSpace<T>& vs, const scalar_t* sino_view, int32_t cols,
                        int32_t r, int32_t c, ColumnQ<T>* q, ColumnW<T>* w) {
  const T val = static_cast<T>(sino_view[r * cols + c]);
  if (val == T(0)) {  // common outside the object's shadow: no line to compute
    w->a = T(-1);
    return;
  }
  const JosephLine<T> L = joseph_line_core(make_ray(f, r, c, vs));
  if (L.a < 0) {
    w->a = T(-1);
    return;
  }
  *q = ColumnQ<T>{L.qb0, L.db, L.qc0, L.dc};
  *w = ColumnW<T>{L.w * val, static_cast<T>(L.a)};
}

// One thread's share of one chunk (rows cr0 .., columns cc0 .. cc0 + ncc - 1, `nr` rows): the
// pixels of its window `tw` that weigh its voxels (x, y, z0 + j), j < nz. acc(j, value) adds.
template <typename T, typename Acc>
U3D_HD void column_gather(const ColumnQ<T>* Q, const ColumnW<T>* Wt, int32_t cr0, int32_t cc0, int32_t nr,
                          int32_t ncc, const DetWindow& tw, int32_t x, int32_t y, int32_t z0, int32_t nz, Acc&& acc) {
  const int32_t r0 = max_(tw.r0, cr0), r1 = min_(tw.r1, cr0 + nr - 1);
  const int32_t c0 = max_(tw.c0, cc0), c1 = min_(tw.c1, cc0 + ncc - 1);
  for (int32_t r = r0; r <= r1; ++r) {
    const int32_t row = (r - cr0) * ncc - cc0;
    for (int32_t c = c0; c <= c1; ++c) {
      const ColumnW<T> wa = Wt[row + c];
      if (wa.a < T(0)) continue;
      const ColumnQ<T> q = Q[row + c];
      if (wa.a == T(2)) {
        // z-driven: the line crosses the plane of every slice; b = x, c = y.
        for (int32_t j = 0; j < nz; ++j) {
          const int32_t z = z0 + j;
          const T tx = tent_at(plane_q(q.qb0, z, q.db), x);
          if (tx == T(0)) continue;
          const T ty = tent_at(plane_q(q.qc0, z, q.dc), y);
          if (ty == T(0)) continue;
          acc(j, wa.wv * tx * ty);
        }
        continue;
      }
      // x-driven (b = y, c = z) at the plane x, or y-driven (b = z, c = x) at the plane y
      const bool by_x = wa.a == T(0);
      const int32_t k = by_x ? x : y;
      const T qb = plane_q(q.qb0, k, q.db), qc = plane_q(q.qc0, k, q.dc);
      const T th = tent_at(by_x ? qb : qc, by_x ? y : x);
      if (th == T(0)) continue;
      const T qz = by_x ? qc : qb;
      const int32_t iz = floor_i32(qz);
      const T fz = qz - static_cast<T>(iz);
      const T base = wa.wv * th;
      const int32_t j = iz - z0;
      if (j >= 0 && j < nz) acc(j, base * (T(1) - fz));
      if (j + 1 >= 0 && j + 1 < nz) acc(j + 1, base * fz);
    }
  }
}

}  // namespace unrolled3d
