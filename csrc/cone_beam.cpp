// CPU (OpenMP) twin of the cone-beam Joseph projector pair. See cone_beam.h for conventions.
//
// One forward projector (a gather along each ray) and three backprojectors that all visit
// exactly the forward's (voxel, weight) pairs, so each is the transpose of the forward to rounding:
//   "scatter" every thread owns a z-slab of the volume and re-traces every ray, clipped to its slab
//             (the original backprojector, kept as the reference the others are tested against).
//   "tile"    (CPU default) every thread owns a z-slab, walked in cache-sized tiles of planes; for
//             each tile and view it sets up only the rays of the detector rows that can reach the
//             tile (slab_rows), clips each to it (joseph_traverse_box, with the forward's own q
//             values) and splats it, two planes per SSE2 instruction, the value folded into the
//             ray weight once. No synchronisation between threads.
//   "gather"  one voxel at a time, the CUDA twin's code (joseph_gather) on the host: per view, each
//             thread tables the lines of the rows that reach its z-slab, then each voxel sums the
//             table entries of the pixels in its footprint window. Exact, deterministic and tested
//             here, but about 10x slower than "tile" on a CPU: each candidate pixel costs a full
//             weight evaluation (with data-dependent branches), where a splat shares one plane
//             crossing among four voxels.
//   "column"  the CUDA column backprojector's blocks run on the host (column_backproject.cpp).
// None of them uses atomics, so all are deterministic.
#include "cone_beam.h"

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace unrolled3d {
namespace {

// Geometry is computed in double on the CPU whatever the data type: it costs little here and
// keeps the CPU twin the accurate reference for the float32 CUDA twin.
using geom_t = double;

// The interior run of the forward projection of one ray: the sum over planes k0..k1 (all four
// neighbours inside) of the bilinear weights times the volume, two planes per SSE2 instruction as
// in splat_run below. Returns the run's sum; the caller adds the bounds-checked planes.
template <typename scalar_t>
inline double gather_run(const scalar_t* vol, const JosephLine<geom_t>& L, int64_t k0, int64_t k1, int64_t sa,
                         int64_t sb, int64_t sc) {
  const geom_t qb0 = L.qb0, db = L.db, qc0 = L.qc0, dc = L.dc, w = L.w;
  int64_t k = k0;
  double sum = 0.0;
#if defined(__SSE2__)
  if (k1 > k0) {
    const __m128d vqb0 = _mm_set1_pd(qb0), vdb = _mm_set1_pd(db), vqc0 = _mm_set1_pd(qc0), vdc = _mm_set1_pd(dc);
    const __m128d one = _mm_set1_pd(1.0), vw = _mm_set1_pd(w), two = _mm_set1_pd(2.0);
    __m128d vk = _mm_set_pd(static_cast<double>(k0 + 1), static_cast<double>(k0));
    __m128d acc0 = _mm_setzero_pd(), acc1 = _mm_setzero_pd();  // two chains: latency, not arithmetic
    auto pair = [&](int64_t i, int64_t j) {  // (vol[i], vol[j]) as doubles
      if constexpr (sizeof(scalar_t) == 4) {
        return _mm_cvtps_pd(_mm_unpacklo_ps(_mm_load_ss(reinterpret_cast<const float*>(vol) + i),
                                            _mm_load_ss(reinterpret_cast<const float*>(vol) + j)));
      } else {
        return _mm_loadh_pd(_mm_load_sd(reinterpret_cast<const double*>(vol) + i),
                            reinterpret_cast<const double*>(vol) + j);
      }
    };
    for (; k < k1; k += 2) {
      const __m128d qb = _mm_add_pd(vqb0, _mm_mul_pd(vk, vdb));
      const __m128d qc = _mm_add_pd(vqc0, _mm_mul_pd(vk, vdc));
      vk = _mm_add_pd(vk, two);
      const __m128i ib = _mm_cvttpd_epi32(qb), ic = _mm_cvttpd_epi32(qc);
      const __m128d fb = _mm_sub_pd(qb, _mm_cvtepi32_pd(ib)), fc = _mm_sub_pd(qc, _mm_cvtepi32_pd(ic));
      const __m128d omc = _mm_sub_pd(one, fc);
      const __m128d wb0 = _mm_mul_pd(vw, _mm_sub_pd(one, fb)), wb1 = _mm_mul_pd(vw, fb);
      const int64_t ib0 = _mm_cvtsi128_si32(ib), ib1 = _mm_cvtsi128_si32(_mm_srli_si128(ib, 4));
      const int64_t ic0 = _mm_cvtsi128_si32(ic), ic1 = _mm_cvtsi128_si32(_mm_srli_si128(ic, 4));
      const int64_t i0 = k * sa + ib0 * sb + ic0 * sc, i1 = (k + 1) * sa + ib1 * sb + ic1 * sc;
      acc0 = _mm_add_pd(acc0, _mm_mul_pd(_mm_mul_pd(wb0, omc), pair(i0, i1)));
      acc1 = _mm_add_pd(acc1, _mm_mul_pd(_mm_mul_pd(wb1, omc), pair(i0 + sb, i1 + sb)));
      acc0 = _mm_add_pd(acc0, _mm_mul_pd(_mm_mul_pd(wb0, fc), pair(i0 + sc, i1 + sc)));
      acc1 = _mm_add_pd(acc1, _mm_mul_pd(_mm_mul_pd(wb1, fc), pair(i0 + sb + sc, i1 + sb + sc)));
    }
    const __m128d acc = _mm_add_pd(acc0, acc1);
    sum = _mm_cvtsd_f64(acc) + _mm_cvtsd_f64(_mm_unpackhi_pd(acc, acc));
  }
#endif
  for (; k <= k1; ++k) {  // the scalar loop (and the odd last plane)
    const geom_t qb = plane_q(qb0, k, db);
    const geom_t qc = plane_q(qc0, k, dc);
    const int64_t ib = static_cast<int64_t>(qb), ic = static_cast<int64_t>(qc);
    const geom_t fb = qb - static_cast<geom_t>(ib), fc = qc - static_cast<geom_t>(ic);
    const int64_t i00 = k * sa + ib * sb + ic * sc;
    sum += w * (1.0 - fb) * (1.0 - fc) * static_cast<double>(vol[i00]) + w * fb * (1.0 - fc) * static_cast<double>(vol[i00 + sb]) +
           w * (1.0 - fb) * fc * static_cast<double>(vol[i00 + sc]) + w * fb * fc * static_cast<double>(vol[i00 + sb + sc]);
  }
  return sum;
}

// Bounds {row lo, row hi, col lo, col hi} of the central projection of the index-space box
// (-1, W) x (-1, H) x (z_lo, z_hi): the hull of its eight projected corners. False when the box
// reaches the source plane (den not of one sign), where the projection is unbounded.
inline bool box_shadow(const ViewProjection<double>& P, const VolumeIndexSpace<geom_t>& vs, double z_lo, double z_hi,
                       double bounds[4]) {
  const double xs[2] = {-1.0, static_cast<double>(vs.n[0])}, ys[2] = {-1.0, static_cast<double>(vs.n[1])};
  const double zs[2] = {z_lo, z_hi};
  int sign = 0;
  for (int i = 0; i < 8; ++i) {
    const double x = xs[i & 1], y = ys[(i >> 1) & 1], z = zs[i >> 2];
    const double den = P.den_c[0] * x + P.den_c[1] * y + P.den_c[2] * z + P.den_c[3];
    const int sg = den > 0.0 ? 1 : (den < 0.0 ? -1 : 0);
    if (sg == 0 || (sign != 0 && sg != sign)) return false;
    sign = sg;
    const double row = (P.row_c[0] * x + P.row_c[1] * y + P.row_c[2] * z + P.row_c[3]) / den;
    const double col = (P.col_c[0] * x + P.col_c[1] * y + P.col_c[2] * z + P.col_c[3]) / den;
    if (i == 0 || row < bounds[0]) bounds[0] = row;
    if (i == 0 || row > bounds[1]) bounds[1] = row;
    if (i == 0 || col < bounds[2]) bounds[2] = col;
    if (i == 0 || col > bounds[3]) bounds[3] = col;
  }
  return true;
}

// Detector window [r0, r1] x [c0, c1] of view `view` outside which no ray weighs a voxel of `vs`: a
// ray that weighs a voxel passes through the open box (-1, W) x (-1, H) x (-1, D) in index space,
// whose central projection is the convex hull of its eight projected corners when the box does not
// reach the source plane (den of one sign); otherwise the whole detector. Widened by a pixel
// against rounding, as slab_rows. Outside it the forward projection is exactly 0, so the projector
// skips those rays: a patch (A S^T) then costs its own shadow, not the whole detector's ray set-up.
inline void volume_window(const double* view, int64_t R, int64_t U, const VolumeIndexSpace<geom_t>& vs,
                          int64_t win[4]) {
  win[0] = 0;
  win[1] = R - 1;
  win[2] = 0;
  win[3] = U - 1;
  ViewProjection<double> P;
  if (!make_view_projection(view, R, U, vs, &P)) return;
  double b[4] = {0.0, 0.0, 0.0, 0.0};
  if (!box_shadow(P, vs, -1.0, static_cast<double>(vs.n[2]), b)) return;  // the box reaches the source plane
  const double rlo = std::max(b[0] - 1.0, 0.0), rhi = std::min(b[1] + 1.0, static_cast<double>(R - 1));
  const double clo = std::max(b[2] - 1.0, 0.0), chi = std::min(b[3] + 1.0, static_cast<double>(U - 1));
  if (rlo > rhi || clo > chi) {  // the volume's shadow misses the detector
    win[0] = win[2] = 0;
    win[1] = win[3] = -1;
    return;
  }
  win[0] = static_cast<int64_t>(std::ceil(rlo));
  win[1] = static_cast<int64_t>(std::floor(rhi));
  win[2] = static_cast<int64_t>(std::ceil(clo));
  win[3] = static_cast<int64_t>(std::floor(chi));
}

template <typename scalar_t>
void project_kernel(const scalar_t* vol, scalar_t* sino, const double* views, int64_t N, int64_t V, int64_t R,
                    int64_t U, const VolumeIndexSpace<geom_t>& vs) {
  const int64_t vol_numel = vs.n[0] * vs.n[1] * vs.n[2];
  const int64_t det_numel = V * R * U;
  const int64_t lo[3] = {0, 0, 0}, hi[3] = {vs.n[0], vs.n[1], vs.n[2]};
  std::vector<int64_t> windows(4 * V);
  for (int64_t v = 0; v < V; ++v) volume_window(views + 12 * v, R, U, vs, &windows[4 * v]);
#pragma omp parallel
  {
    std::vector<double> acc(N);
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t v = 0; v < V; ++v) {
      for (int64_t r = 0; r < R; ++r) {
        const int64_t* win = &windows[4 * v];
        for (int64_t c = 0; c < U; ++c) {
          if (r < win[0] || r > win[1] || c < win[2] || c > win[3]) {  // the ray misses every voxel
            for (int64_t n = 0; n < N; ++n) sino[n * det_numel + (v * R + r) * U + c] = scalar_t(0);
            continue;
          }
          const IndexRay<geom_t> ray = make_ray<geom_t>(views + 12 * v, r, c, R, U, vs);
          const int64_t out = (v * R + r) * U + c;
          if (N == 1) {  // the common case: the whole-volume box, its interior run in SIMD
            const JosephLine<geom_t> L = joseph_line(ray, vs);
            if (L.a < 0) {
              sino[out] = scalar_t(0);
              continue;
            }
            const int a = L.a, b = a == 2 ? 0 : a + 1, cc = a == 0 ? 2 : a - 1;
            double edge = 0.0, inner = 0.0;
            joseph_traverse_box(
                L, vs, lo, hi, [&](int64_t idx, geom_t w) { edge += w * static_cast<double>(vol[idx]); },
                [&](int64_t k0, int64_t k1) {
                  inner = gather_run(vol, L, k0, k1, vs.stride[a], vs.stride[b], vs.stride[cc]);
                });
            sino[out] = static_cast<scalar_t>(inner + edge);
            continue;
          }
          for (int64_t n = 0; n < N; ++n) acc[n] = 0.0;
          joseph_traverse(ray, vs, [&](int64_t idx, geom_t w) {
            for (int64_t n = 0; n < N; ++n) acc[n] += w * static_cast<double>(vol[n * vol_numel + idx]);
          });
          for (int64_t n = 0; n < N; ++n) sino[n * det_numel + out] = static_cast<scalar_t>(acc[n]);
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------- "scatter"
// The index space of the z-slab [z0, z1) of `vs`: same voxels, same index coordinates shifted by
// an integer, so every ray visits the slab's voxels with the weights it has in the full volume.
inline VolumeIndexSpace<geom_t> z_slab(const VolumeIndexSpace<geom_t>& vs, int64_t z0, int64_t z1) {
  VolumeIndexSpace<geom_t> s = vs;
  s.n[2] = z1 - z0;
  s.origin_idx[2] = vs.origin_idx[2] - static_cast<geom_t>(z0);
  return s;
}

template <typename scalar_t>
void scatter_kernel(const scalar_t* sino, scalar_t* vol, const double* views, int64_t N, int64_t V, int64_t R,
                    int64_t U, const VolumeIndexSpace<geom_t>& vs) {
  const int64_t vol_numel = vs.n[0] * vs.n[1] * vs.n[2];
  const int64_t det_numel = V * R * U;
  const int64_t slab_numel = vs.n[0] * vs.n[1];
  // Each thread owns a z-slab of the volume and scatters every ray's contribution to it: no two
  // threads write the same voxel, so no atomics and a deterministic result. Each ray's traversal
  // is clipped to the slab, so the extra cost is one ray set-up per ray and thread.
#pragma omp parallel
  {
    const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t z0 = vs.n[2] * t / T, z1 = vs.n[2] * (t + 1) / T;
    if (z1 > z0) {
      const VolumeIndexSpace<geom_t> slab = z_slab(vs, z0, z1);
      for (int64_t v = 0; v < V; ++v) {
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t c = 0; c < U; ++c) {
            const IndexRay<geom_t> ray = make_ray<geom_t>(views + 12 * v, r, c, R, U, slab);
            const int64_t in = (v * R + r) * U + c;
            for (int64_t n = 0; n < N; ++n) {
              const geom_t val = static_cast<geom_t>(sino[n * det_numel + in]);
              if (val == geom_t(0)) continue;
              scalar_t* dst = vol + n * vol_numel + z0 * slab_numel;
              joseph_traverse(ray, slab, [&](int64_t idx, geom_t w) { dst[idx] += static_cast<scalar_t>(w * val); });
            }
          }
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------- slab rows
// Detector rows [r0, r1] holding every pixel whose ray can weigh a voxel of the z-slab [z0, z1) of
// `vs`: such a ray passes within one voxel of a slab voxel, i.e. through the open box
// (-1, W) x (-1, H) x (z0 - 1, z1) in index space, whose central projection is the convex hull
// of its eight projected corners when the box does not reach the source plane (den of one sign);
// otherwise every row. Widened by a row against rounding (pairs are selected exactly later).
inline void slab_rows(const double* view, int64_t R, int64_t U, const VolumeIndexSpace<geom_t>& vs, int64_t z0,
                      int64_t z1, int64_t& r0, int64_t& r1) {
  r0 = 0;
  r1 = R - 1;
  ViewProjection<double> P;
  if (!make_view_projection(view, R, U, vs, &P)) return;
  double b[4] = {0.0, 0.0, 0.0, 0.0};
  if (!box_shadow(P, vs, static_cast<double>(z0) - 1.0, static_cast<double>(z1), b)) return;  // every row
  const double lo = std::max(b[0] - 1.0, 0.0), hi = std::min(b[1] + 1.0, static_cast<double>(R - 1));
  if (lo > hi) {
    r0 = 0;
    r1 = -1;
    return;
  }
  r0 = static_cast<int64_t>(std::ceil(lo));
  r1 = static_cast<int64_t>(std::floor(hi));
}

// ----------------------------------------------------------------------------- "tile"
// The interior run of joseph_traverse_box for one ray whose value is folded into w: planes k0..k1,
// all four neighbours inside, dst[i00 + {0, sb, sc, sb + sc}] += bilinear weights. Splatting is
// bound by instruction count (about 55 per plane in scalar code, a third of them int <-> double
// conversions), so with SSE2 (every x86-64 CPU) two planes go through each arithmetic
// instruction. Lane by lane it is the scalar loop's arithmetic (k exact in double, the same
// products in the same order, truncation = cvttpd2dq since 0 <= q < 2^31), and the eight
// read-modify-writes go in the scalar loop's order, so the result is bit-identical to it.
template <typename scalar_t>
inline void splat_run(scalar_t* dst, const JosephLine<geom_t>& L, int64_t k0, int64_t k1, int64_t sa, int64_t sb,
                      int64_t sc) {
  const geom_t qb0 = L.qb0, db = L.db, qc0 = L.qc0, dc = L.dc, w = L.w;
  int64_t k = k0;
#if defined(__SSE2__)
  if (k1 > k0) {
    const __m128d vqb0 = _mm_set1_pd(qb0), vdb = _mm_set1_pd(db), vqc0 = _mm_set1_pd(qc0), vdc = _mm_set1_pd(dc);
    const __m128d one = _mm_set1_pd(1.0), vw = _mm_set1_pd(w), two = _mm_set1_pd(2.0);
    __m128d vk = _mm_set_pd(static_cast<double>(k0 + 1), static_cast<double>(k0));
    for (; k < k1; k += 2) {
      const __m128d qb = _mm_add_pd(vqb0, _mm_mul_pd(vk, vdb));
      const __m128d qc = _mm_add_pd(vqc0, _mm_mul_pd(vk, vdc));
      vk = _mm_add_pd(vk, two);
      const __m128i ib = _mm_cvttpd_epi32(qb), ic = _mm_cvttpd_epi32(qc);
      const __m128d fb = _mm_sub_pd(qb, _mm_cvtepi32_pd(ib)), fc = _mm_sub_pd(qc, _mm_cvtepi32_pd(ic));
      const __m128d omc = _mm_sub_pd(one, fc);
      const __m128d wb0 = _mm_mul_pd(vw, _mm_sub_pd(one, fb)), wb1 = _mm_mul_pd(vw, fb);
      const __m128d w00 = _mm_mul_pd(wb0, omc), w10 = _mm_mul_pd(wb1, omc);
      const __m128d w01 = _mm_mul_pd(wb0, fc), w11 = _mm_mul_pd(wb1, fc);
      const int64_t ib0 = _mm_cvtsi128_si32(ib), ib1 = _mm_cvtsi128_si32(_mm_srli_si128(ib, 4));
      const int64_t ic0 = _mm_cvtsi128_si32(ic), ic1 = _mm_cvtsi128_si32(_mm_srli_si128(ic, 4));
      const int64_t i0 = k * sa + ib0 * sb + ic0 * sc, i1 = (k + 1) * sa + ib1 * sb + ic1 * sc;
      if constexpr (sizeof(scalar_t) == 4) {
        const __m128 f00 = _mm_cvtpd_ps(w00), f10 = _mm_cvtpd_ps(w10), f01 = _mm_cvtpd_ps(w01), f11 = _mm_cvtpd_ps(w11);
        dst[i0] += _mm_cvtss_f32(f00);
        dst[i0 + sb] += _mm_cvtss_f32(f10);
        dst[i0 + sc] += _mm_cvtss_f32(f01);
        dst[i0 + sb + sc] += _mm_cvtss_f32(f11);
        dst[i1] += _mm_cvtss_f32(_mm_shuffle_ps(f00, f00, 1));
        dst[i1 + sb] += _mm_cvtss_f32(_mm_shuffle_ps(f10, f10, 1));
        dst[i1 + sc] += _mm_cvtss_f32(_mm_shuffle_ps(f01, f01, 1));
        dst[i1 + sb + sc] += _mm_cvtss_f32(_mm_shuffle_ps(f11, f11, 1));
      } else {
        dst[i0] += _mm_cvtsd_f64(w00);
        dst[i0 + sb] += _mm_cvtsd_f64(w10);
        dst[i0 + sc] += _mm_cvtsd_f64(w01);
        dst[i0 + sb + sc] += _mm_cvtsd_f64(w11);
        dst[i1] += _mm_cvtsd_f64(_mm_unpackhi_pd(w00, w00));
        dst[i1 + sb] += _mm_cvtsd_f64(_mm_unpackhi_pd(w10, w10));
        dst[i1 + sc] += _mm_cvtsd_f64(_mm_unpackhi_pd(w01, w01));
        dst[i1 + sb + sc] += _mm_cvtsd_f64(_mm_unpackhi_pd(w11, w11));
      }
    }
  }
#endif
  for (; k <= k1; ++k) {  // the scalar loop (and the odd last plane)
    const geom_t qb = plane_q(qb0, k, db);
    const geom_t qc = plane_q(qc0, k, dc);
    const int64_t ib = static_cast<int64_t>(qb), ic = static_cast<int64_t>(qc);
    const geom_t fb = qb - static_cast<geom_t>(ib), fc = qc - static_cast<geom_t>(ic);
    const int64_t i00 = k * sa + ib * sb + ic * sc;
    dst[i00] += static_cast<scalar_t>(w * (1.0 - fb) * (1.0 - fc));
    dst[i00 + sb] += static_cast<scalar_t>(w * fb * (1.0 - fc));
    dst[i00 + sc] += static_cast<scalar_t>(w * (1.0 - fb) * fc);
    dst[i00 + sb + sc] += static_cast<scalar_t>(w * fb * fc);
  }
}

template <typename scalar_t>
void tile_kernel(const scalar_t* sino, scalar_t* vol, const double* views, int64_t N, int64_t V, int64_t R,
                 int64_t U, const VolumeIndexSpace<geom_t>& vs) {
  const int64_t W = vs.n[0], H = vs.n[1], D = vs.n[2];
  const int64_t vol_numel = W * H * D, det_numel = V * R * U, P = R * U;
  // One z-slab per thread and no synchronisation at all: a thread sets up only the rays of the
  // detector rows that can reach its slab (slab_rows), clips them to it, and splats. A barrier per
  // view (a shared per-view table) was measured to stall whenever a thread is descheduled on a
  // busy machine (64^3, 2 threads on 2 shared cores: 8x slower than 1 thread).
  //
  // Each thread walks its slab in sub-tiles ("tiles") of tz planes, each through all views, so
  // that the voxels in work fit in the cache: the splat's read-modify-writes then hit L2 when the
  // next detector row's rays come back to the same voxels. Measured at 128^3 float32 on one
  // thread (CPU time): whole 128-plane slab 1.13 s, 64 planes 0.88 s, 32-48 planes (2-3 MB)
  // 0.82-0.84 s, 16 planes 0.90 s, 8 planes 1.06 s (every tile boundary sets up its straddling
  // rays twice and takes them through the bounds-checked path on both sides). Hence a 2 MB budget
  // and at least 16 planes; at 64^3 a whole slab fits and is one tile.
  const int64_t slice_bytes = W * H * N * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t tz = std::max<int64_t>(16, (int64_t(2) << 20) / std::max<int64_t>(1, slice_bytes));
#pragma omp parallel
  {
    const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t s0 = D * t / T, s1 = D * (t + 1) / T;
    std::vector<double> vals(N);
    for (int64_t z0 = s0; z0 < s1; z0 += tz) {
      const int64_t z1 = std::min(s1, z0 + tz);
      const int64_t lo[3] = {0, 0, z0}, hi[3] = {W, H, z1};
      for (int64_t v = 0; v < V; ++v) {
        const double* view = views + 12 * v;
        int64_t r0, r1;
        slab_rows(view, R, U, vs, z0, z1, r0, r1);
        for (int64_t r = r0; r <= r1; ++r) {
          for (int64_t c = 0; c < U; ++c) {
            const int64_t in = v * P + r * U + c;
            bool any = false;
            for (int64_t n = 0; n < N; ++n) {
              vals[n] = static_cast<double>(sino[n * det_numel + in]);
              any = any || vals[n] != 0.0;
            }
            if (!any) continue;
            const JosephLine<geom_t> L = joseph_line(make_ray<geom_t>(view, r, c, R, U, vs), vs);
            if (L.a < 0) continue;
            const int a = L.a, b = a == 2 ? 0 : a + 1, cc = a == 0 ? 2 : a - 1;
            const int64_t sa = vs.stride[a], sb = vs.stride[b], sc = vs.stride[cc];
            if (N == 1) {
              // The value is folded into w once per ray: one product per pair fewer than
              // w * val per pair, equal to rounding.
              JosephLine<geom_t> Lv = L;
              Lv.w *= vals[0];
              joseph_traverse_box(
                  Lv, vs, lo, hi, [&](int64_t idx, geom_t w) { vol[idx] += static_cast<scalar_t>(w); },
                  [&](int64_t k0, int64_t k1) { splat_run(vol, Lv, k0, k1, sa, sb, sc); });
              continue;
            }
            // Several items: one traversal set-up, then each item's interior run through the splat.
            joseph_traverse_box(
                L, vs, lo, hi,
                [&](int64_t idx, geom_t w) {
                  for (int64_t n = 0; n < N; ++n) vol[n * vol_numel + idx] += static_cast<scalar_t>(w * vals[n]);
                },
                [&](int64_t k0, int64_t k1) {
                  for (int64_t n = 0; n < N; ++n) {
                    if (vals[n] == 0.0) continue;
                    JosephLine<geom_t> Ln = L;
                    Ln.w *= vals[n];
                    splat_run(vol + n * vol_numel, Ln, k0, k1, sa, sb, sc);
                  }
                });
          }
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------- "gather"
template <typename scalar_t>
void gather_kernel(const scalar_t* sino, scalar_t* vol, const double* views, int64_t N, int64_t V, int64_t R,
                   int64_t U, const VolumeIndexSpace<geom_t>& vs) {
  const int64_t W = vs.n[0], H = vs.n[1], D = vs.n[2];
  const int64_t vol_numel = W * H * D, det_numel = V * R * U, P = R * U;
  // As "tile": one z-slab per thread and no synchronisation. Per view, each thread builds its own
  // table of the lines of the rows that can reach its slab (O(R * U) memory in all), then every
  // voxel of its slab gathers from it.
#pragma omp parallel
  {
    const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t z0 = D * t / T, z1 = D * (t + 1) / T;
    std::vector<JosephLine<geom_t>> lines;
    for (int64_t v = 0; z1 > z0 && v < V; ++v) {
      const double* view = views + 12 * v;
      int64_t r0, r1;
      slab_rows(view, R, U, vs, z0, z1, r0, r1);
      if (r0 > r1) continue;
      lines.resize((r1 - r0 + 1) * U);
      int axes = 0;
      for (int64_t r = r0; r <= r1; ++r)
        for (int64_t c = 0; c < U; ++c) {
          const JosephLine<geom_t> L = joseph_line(make_ray<geom_t>(view, r, c, R, U, vs), vs);
          lines[(r - r0) * U + c] = L;
          if (L.a >= 0) axes |= 1 << L.a;
        }
      ViewProjection<geom_t> proj;
      const bool ok = make_view_projection(view, R, U, vs, &proj);
      const FootprintBound<geom_t> bound = make_footprint_bound(proj, ok, axes);
      const scalar_t* sv = sino + v * P + r0 * U;  // row r0 first, as in the table
      for (int64_t z = z0; z < z1; ++z)
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x) {
            int64_t wr0, wr1, c0, c1;
            footprint_window(bound, static_cast<geom_t>(x), static_cast<geom_t>(y), static_cast<geom_t>(z), R, U,
                             wr0, wr1, c0, c1);
            // Rows outside [r0, r1] cannot weigh this slab (slab_rows) and have no table entry;
            // the table and `sv` count rows from r0.
            wr0 = std::max(wr0, r0) - r0;
            wr1 = std::min(wr1, r1) - r0;
            const int64_t out = (z * H + y) * W + x;
            for (int64_t n = 0; n < N; ++n) {
              const scalar_t* sn = sv + n * det_numel;
              const double sum = joseph_gather<double>(lines.data(), static_cast<int32_t>(x), static_cast<int32_t>(y),
                                                       static_cast<int32_t>(z), U, wr0, wr1, c0, c1,
                                                       [&](int64_t p) { return sn[p]; });
              vol[n * vol_numel + out] += static_cast<scalar_t>(sum);
            }
          }
    }
  }
}

}  // namespace

at::Tensor cone_project_cpu(const at::Tensor& volume, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                            int64_t rows, int64_t cols) {
  check_views(views, volume);
  TORCH_CHECK(volume.device().is_cpu(), "unrolled3d: cone_project_cpu got a non-CPU tensor");
  TORCH_CHECK(rows > 0 && cols > 0, "unrolled3d: detector rows and cols must be positive");
  const VolumeGeom geom = check_vol_geom(vol_geom);
  const at::Tensor vol = volume.contiguous();
  const at::Tensor vw = views.contiguous();
  const int64_t B = vol.size(0), C = vol.size(1), D = vol.size(2), H = vol.size(3), W = vol.size(4);
  const int64_t V = vw.size(0);
  check_extents(D, H, W, rows, cols);
  at::Tensor sino = at::empty({B, C, V, rows, cols}, vol.options());
  const auto vs = make_index_space<geom_t>(D, H, W, geom);
  AT_DISPATCH_FLOATING_TYPES(vol.scalar_type(), "cone_project_cpu", [&] {
    project_kernel<scalar_t>(vol.data_ptr<scalar_t>(), sino.data_ptr<scalar_t>(), vw.data_ptr<double>(), B * C, V,
                             rows, cols, vs);
  });
  return sino;
}

at::Tensor cone_backproject_algo_cpu(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                     int64_t depth, int64_t height, int64_t width, c10::string_view algorithm) {
  const BackprojectAlgorithm algo = parse_backproject_algorithm(algorithm, /*cuda=*/false);
  check_views(views, sino);
  TORCH_CHECK(sino.device().is_cpu(), "unrolled3d: cone_backproject_cpu got a non-CPU tensor");
  TORCH_CHECK(depth > 0 && height > 0 && width > 0, "unrolled3d: volume shape must be positive");
  const VolumeGeom geom = check_vol_geom(vol_geom);
  const at::Tensor s = sino.contiguous();
  const at::Tensor vw = views.contiguous();
  TORCH_CHECK(s.size(2) == vw.size(0), "unrolled3d: sinogram has ", s.size(2), " views, geometry has ",
              vw.size(0));
  const int64_t B = s.size(0), C = s.size(1), V = s.size(2), R = s.size(3), U = s.size(4);
  check_extents(depth, height, width, R, U);
  const auto vs = make_index_space<geom_t>(depth, height, width, geom);
  if (algo == BackprojectAlgorithm::kColumn && s.numel() > 0) {  // writes every voxel once: no zero fill
    at::Tensor vol = at::empty({B, C, depth, height, width}, s.options());
    column_backproject_cpu(s, vol, vw, vs);
    return vol;
  }
  at::Tensor vol = at::zeros({B, C, depth, height, width}, s.options());
  if (s.numel() == 0) return vol;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "cone_backproject_cpu", [&] {
    const scalar_t* in = s.data_ptr<scalar_t>();
    scalar_t* out = vol.data_ptr<scalar_t>();
    const double* vp = vw.data_ptr<double>();
    switch (algo) {
      case BackprojectAlgorithm::kScatter: scatter_kernel<scalar_t>(in, out, vp, B * C, V, R, U, vs); break;
      case BackprojectAlgorithm::kGather: gather_kernel<scalar_t>(in, out, vp, B * C, V, R, U, vs); break;
      default: tile_kernel<scalar_t>(in, out, vp, B * C, V, R, U, vs); break;  // kTile, kAuto
    }
  });
  return vol;
}

at::Tensor cone_backproject_cpu(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                int64_t depth, int64_t height, int64_t width) {
  return cone_backproject_algo_cpu(sino, views, vol_geom, depth, height, width, "auto");
}

}  // namespace unrolled3d
