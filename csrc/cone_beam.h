// Cone-beam ray-driven (Joseph) projector: geometry and traversal shared by the CPU and CUDA twins.
//
// Shapes and conventions
//   volume      (N, D, H, W)  contiguous, N = B*C; voxel (k, j, i) = (z, y, x) has its centre at
//               world x = ox + (i - (W-1)/2) sx, y = oy + (j - (H-1)/2) sy, z = oz + (k - (D-1)/2) sz
//   sinogram    (N, V, R, U)  V views, R detector rows, U detector columns
//   views       (V, 12) float64, ASTRA cone_vec rows (src_xyz, det_centre_xyz, u_xyz, v_xyz):
//               pixel (r, c) sits at det + (c - (U-1)/2) u + (r - (R-1)/2) v
//   vol_geom    6 doubles (sz, sy, sx, oz, oy, ox): voxel size and volume centre offset in mm,
//               array order; the volume shape (D, H, W) is passed separately
//
// The forward projector integrates along the line from the source to each pixel centre with
// Joseph's method: step plane by plane along the axis in which the ray moves fastest (in voxel
// units), interpolate bilinearly in the other two axes (zero outside the volume), weight each
// plane by the world length of the ray between two planes. Every backprojector visits exactly the
// same (voxel, weight) pairs, so it is the transpose to rounding: by ray (joseph_traverse /
// joseph_traverse_box, splatting), by voxel (joseph_gather, each voxel summing the pixels whose
// rays weigh it) or by column (column_backproject.h). Per-ray set-up is one chain of functions,
// make_view_frame -> make_ray -> joseph_line(_core), and the plane crossing one (plane_q), with
// their multiply-adds written out (madd), so all of them see the same numbers on each device.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define U3D_HD __host__ __device__ __forceinline__
#define U3D_UNROLL _Pragma("unroll")
#else
#define U3D_HD inline
#define U3D_UNROLL
#endif

namespace unrolled3d {

// Geometry of one volume, in voxel-index space, with axes in (x, y, z) order.
template <typename T>
struct VolumeIndexSpace {
  int64_t n[3];       // (W, H, D)
  int64_t stride[3];  // (1, W, W*H)
  T inv_voxel[3];     // 1 / (sx, sy, sz)
  T voxel[3];         // (sx, sy, sz)
  T origin_idx[3];    // index coordinate of the world origin: (n-1)/2 - offset/voxel
};

// Volume geometry in mm, array order: voxel size (sz, sy, sx) and centre offset (oz, oy, ox).
struct VolumeGeom {
  double g[6];
};

template <typename T>
U3D_HD VolumeIndexSpace<T> make_index_space(int64_t D, int64_t H, int64_t W, const VolumeGeom& geom) {
  const double* vol_geom = geom.g;
  VolumeIndexSpace<T> s;
  s.n[0] = W; s.n[1] = H; s.n[2] = D;
  s.stride[0] = 1; s.stride[1] = W; s.stride[2] = W * H;
  const double voxel[3] = {vol_geom[2], vol_geom[1], vol_geom[0]};
  const double offset[3] = {vol_geom[5], vol_geom[4], vol_geom[3]};
  for (int a = 0; a < 3; ++a) {
    s.voxel[a] = static_cast<T>(voxel[a]);
    s.inv_voxel[a] = static_cast<T>(1.0 / voxel[a]);
    s.origin_idx[a] = static_cast<T>(0.5 * static_cast<double>(s.n[a] - 1) - offset[a] / voxel[a]);
  }
  return s;
}

// a * b + c. On a GPU this is one fused multiply-add, written out so that every kernel that
// shares a formula below (the forward projector and all its transposes) gets bit-identical numbers
// whatever nvcc would contract on its own; on the host (no FMA in baseline x86-64) two roundings,
// as the expression reads.
template <typename T>
U3D_HD T madd(T a, T b, T c) {
#ifdef __CUDA_ARCH__
  return fma(a, b, c);
#else
  return a * b + c;
#endif
}

// Where the line q = q0 + k * dq meets plane k: the one formula of every traversal and gather.
template <typename T, typename K>
U3D_HD T plane_q(T q0, K k, T dq) {
  return madd(static_cast<T>(k), dq, q0);
}

// One view's constants in the arithmetic type T: the cone_vec vectors (world mm), the source in
// index space, and the detector's centre in pixel units. Built once per view (host or device);
// make_ray then costs a handful of multiply-adds per pixel. For T = double this is exactly the
// arithmetic of the original per-pixel set-up; for T = float (the CUDA float32 path) it is the
// same formulas in float, which every CUDA kernel shares.
template <typename T>
struct ViewFrame {
  T src[3], det[3], u[3], v[3];  // world (x, y, z), mm
  T s[3];                        // the source in index coordinates
  T hc, hr;                      // (cols - 1) / 2, (rows - 1) / 2
};

template <typename T>
U3D_HD ViewFrame<T> make_view_frame(const double* view, int64_t rows, int64_t cols, const VolumeIndexSpace<T>& vs) {
  ViewFrame<T> f;
  for (int a = 0; a < 3; ++a) {
    f.src[a] = static_cast<T>(view[a]);
    f.det[a] = static_cast<T>(view[3 + a]);
    f.u[a] = static_cast<T>(view[6 + a]);
    f.v[a] = static_cast<T>(view[9 + a]);
    f.s[a] = madd(f.src[a], vs.inv_voxel[a], vs.origin_idx[a]);
  }
  f.hc = static_cast<T>(0.5 * static_cast<double>(cols - 1));
  f.hr = static_cast<T>(0.5 * static_cast<double>(rows - 1));
  return f;
}

// A ray in index space: start point (the source) and direction (to the pixel centre), plus the
// world length of the direction vector, so that world length = |t2 - t1| * world_norm.
template <typename T>
struct IndexRay {
  T s[3];
  T d[3];
  T world_norm;
};

template <typename T, typename I>
U3D_HD IndexRay<T> make_ray(const ViewFrame<T>& f, I r, I c, const VolumeIndexSpace<T>& vs) {
  const T cu = static_cast<T>(c) - f.hc;
  const T cv = static_cast<T>(r) - f.hr;
  IndexRay<T> ray;
  T norm2 = T(0);
  for (int a = 0; a < 3; ++a) {
    const T pix = madd(cv, f.v[a], madd(cu, f.u[a], f.det[a]));
    const T dw = pix - f.src[a];
    norm2 = madd(dw, dw, norm2);
    ray.s[a] = f.s[a];
    ray.d[a] = dw * vs.inv_voxel[a];
  }
  ray.world_norm = sqrt(norm2);
  return ray;
}

template <typename T>
U3D_HD IndexRay<T> make_ray(const double* view, int64_t r, int64_t c, int64_t rows, int64_t cols,
                            const VolumeIndexSpace<T>& vs) {
  return make_ray(make_view_frame<T>(view, rows, cols, vs), r, c, vs);
}

// The loop-invariant part of one ray's Joseph traversal: everything joseph_traverse needs besides
// the volume. The forward projector, both backprojectors and the per-view tables of the gather
// backprojector all compute it with this one function, so they see bit-identical numbers.
//   plane k (index along the driving axis a) is crossed at q_b = qb0 + k * db, q_c = qc0 + k * dc
//   (index coordinates along b = (a+1)%3 and c = (a+2)%3), and weighs w mm per unit interpolation
//   weight. Planes k_first..k_last are the ones whose bilinear footprint can touch the volume.
//   a == -1: the ray touches no voxel (degenerate ray, or a ray that misses the volume).
template <typename T>
struct JosephLine {
  T qb0, db, qc0, dc;
  T w;
  int32_t a;
  int32_t k_first, k_last;
};

// v[i] for a run-time i in 0..2, by selects: a GPU would put an array indexed at run time in
// local memory (the kernels' stack frame), where registers are what the selects use.
template <typename T>
U3D_HD T pick3(const T (&v)[3], int i) {
  return i == 0 ? v[0] : (i == 1 ? v[1] : v[2]);
}

// The line of a ray without its plane range (a = -1: degenerate ray). The column backprojector
// needs no range: its voxels are inside the volume, where the range holds by construction.
template <typename T>
U3D_HD JosephLine<T> joseph_line_core(const IndexRay<T>& ray) {
  JosephLine<T> L;
  L.qb0 = L.db = L.qc0 = L.dc = L.w = T(0);
  L.a = -1;
  L.k_first = 0;
  L.k_last = -1;
  // Driving axis: the one along which the ray advances fastest in index units. Ties go to the
  // lower axis (x before y before z).
  const T ax = fabs(ray.d[0]), ay = fabs(ray.d[1]), az = fabs(ray.d[2]);
  int a = 0;
  if (ay > ax && ay >= az) a = 1;
  else if (az > ax && az > ay) a = 2;
  const int b = (a + 1) % 3, c = (a + 2) % 3;
  const T da = pick3(ray.d, a);
  if (da == T(0)) return L;  // degenerate ray (source on the pixel)
  const T inv = T(1) / da;
  // Position on the other axes as a function of the plane index k: q = q0 + k * dq
  L.db = pick3(ray.d, b) * inv;
  L.dc = pick3(ray.d, c) * inv;
  const T sa = pick3(ray.s, a);
  L.qb0 = madd(-sa, L.db, pick3(ray.s, b));
  L.qc0 = madd(-sa, L.dc, pick3(ray.s, c));
  L.w = ray.world_norm * fabs(inv);  // world length between consecutive planes
  L.a = a;
  return L;
}

template <typename T>
U3D_HD JosephLine<T> joseph_line(const IndexRay<T>& ray, const VolumeIndexSpace<T>& vs) {
  JosephLine<T> L = joseph_line_core(ray);
  if (L.a < 0) return L;
  const int a = L.a, b = (a + 1) % 3, c = (a + 2) % 3;
  const T qb0 = L.qb0, db = L.db, qc0 = L.qc0, dc = L.dc;
  L.a = -1;  // unless a plane is found below
  // Planes whose bilinear footprint can touch the volume: -1 < q < n on both other axes.
  T kmin = T(0), kmax = static_cast<T>(pick3(vs.n, a) - 1);
  const T qs0[2] = {qb0, qc0};
  const T dqs[2] = {db, dc};
  const int64_t ns[2] = {pick3(vs.n, b), pick3(vs.n, c)};
  for (int o = 0; o < 2; ++o) {
    const T lo = T(-1), hi = static_cast<T>(ns[o]);
    if (dqs[o] == T(0)) {
      if (!(qs0[o] > lo && qs0[o] < hi)) return L;
    } else {
      T k1 = (lo - qs0[o]) / dqs[o], k2 = (hi - qs0[o]) / dqs[o];
      if (k1 > k2) { const T t = k1; k1 = k2; k2 = t; }
      if (k1 > kmin) kmin = k1;
      if (k2 < kmax) kmax = k2;
    }
  }
  if (kmin > kmax) return L;
  const int64_t k_first = static_cast<int64_t>(ceil(kmin));
  const int64_t k_last = static_cast<int64_t>(floor(kmax));
  if (k_first > k_last) return L;
  L.a = a;
  L.k_first = static_cast<int32_t>(k_first);
  L.k_last = static_cast<int32_t>(k_last);
  return L;
}

// Visit every (linear voxel index, weight) pair of the Joseph discretisation of the ray `L`.
// visit(I index, T weight) is called at most 4 times per crossed plane. I is the index type:
// int64_t, or int32_t where the volume has fewer than 2^31 voxels (the CUDA forward checks).
template <typename I = int64_t, typename T, typename Visit>
U3D_HD void joseph_traverse(const JosephLine<T>& L, const VolumeIndexSpace<T>& vs, Visit&& visit) {
  if (L.a < 0) return;
  const int a = L.a, b = (a + 1) % 3, c = (a + 2) % 3;
  const T qb0 = L.qb0, db = L.db, qc0 = L.qc0, dc = L.dc, w = L.w;
  const T qs0[2] = {qb0, qc0};
  const T dqs[2] = {db, dc};
  const I k_first = L.k_first, k_last = L.k_last;
  const I nb = static_cast<I>(pick3(vs.n, b)), nc = static_cast<I>(pick3(vs.n, c));
  const I sa = static_cast<I>(pick3(vs.stride, a)), sb = static_cast<I>(pick3(vs.stride, b));
  const I sc = static_cast<I>(pick3(vs.stride, c));

  // Planes where all four neighbours are inside (0 <= q < n - 1 on both axes) need no bounds
  // checks. The range is estimated in floating point, then its ends are verified exactly (q is
  // monotone in k, so valid ends mean every plane between is valid).
  auto interior = [&](I k) {
    const T qb = plane_q(qb0, k, db), qc = plane_q(qc0, k, dc);
    return qb >= T(0) && qb < static_cast<T>(nb - 1) && qc >= T(0) && qc < static_cast<T>(nc - 1);
  };
  I i_first = k_last + 1, i_last = k_last;  // empty unless found below
  {
    T lo = static_cast<T>(k_first), hi = static_cast<T>(k_last);
    const T his[2] = {static_cast<T>(nb - 1), static_cast<T>(nc - 1)};
    bool ok = true;
    for (int o = 0; o < 2; ++o) {
      if (dqs[o] == T(0)) {
        ok = ok && qs0[o] >= T(0) && qs0[o] < his[o];
      } else {
        T k1 = (T(0) - qs0[o]) / dqs[o], k2 = (his[o] - qs0[o]) / dqs[o];
        if (k1 > k2) { const T t = k1; k1 = k2; k2 = t; }
        if (k1 > lo) lo = k1;
        if (k2 < hi) hi = k2;
      }
    }
    if (ok && lo <= hi) {
      I f = static_cast<I>(ceil(lo)), l = static_cast<I>(floor(hi));
      while (f <= l && !interior(f)) ++f;  // at most a step or two: rounding at the ends
      while (l >= f && !interior(l)) --l;
      if (f <= l) { i_first = f; i_last = l; }
    }
  }

  auto plane_checked = [&](I k) {
    const T qb = plane_q(qb0, k, db);
    const T qc = plane_q(qc0, k, dc);
    // q > -1 on these planes, so truncation of q + 1 is floor(q) + 1 (no libm floor call).
    const I ib = static_cast<I>(qb + T(1)) - 1, ic = static_cast<I>(qc + T(1)) - 1;
    const T fb = qb - static_cast<T>(ib), fc = qc - static_cast<T>(ic);
    const I base = k * sa;
    const bool b0 = ib >= 0 && ib < nb, b1 = ib + 1 >= 0 && ib + 1 < nb;
    const bool c0 = ic >= 0 && ic < nc, c1 = ic + 1 >= 0 && ic + 1 < nc;
    if (b0 && c0) visit(base + ib * sb + ic * sc, w * (T(1) - fb) * (T(1) - fc));
    if (b1 && c0) visit(base + (ib + 1) * sb + ic * sc, w * fb * (T(1) - fc));
    if (b0 && c1) visit(base + ib * sb + (ic + 1) * sc, w * (T(1) - fb) * fc);
    if (b1 && c1) visit(base + (ib + 1) * sb + (ic + 1) * sc, w * fb * fc);
  };
  const I pre_end = i_first <= i_last ? i_first - 1 : k_last;
  for (I k = k_first; k <= pre_end; ++k) plane_checked(k);
  for (I k = i_first; k <= i_last; ++k) {
    const T qb = plane_q(qb0, k, db);
    const T qc = plane_q(qc0, k, dc);
    const I ib = static_cast<I>(qb), ic = static_cast<I>(qc);  // q >= 0: truncation = floor
    const T fb = qb - static_cast<T>(ib), fc = qc - static_cast<T>(ic);
    const I i00 = k * sa + ib * sb + ic * sc;
    visit(i00, w * (T(1) - fb) * (T(1) - fc));
    visit(i00 + sb, w * fb * (T(1) - fc));
    visit(i00 + sc, w * (T(1) - fb) * fc);
    visit(i00 + sb + sc, w * fb * fc);
  }
  if (i_first <= i_last)
    for (I k = i_last + 1; k <= k_last; ++k) plane_checked(k);
}
template <typename I = int64_t, typename T, typename Visit>
U3D_HD void joseph_traverse(const IndexRay<T>& ray, const VolumeIndexSpace<T>& vs, Visit&& visit) {
  joseph_traverse<I>(joseph_line(ray, vs), vs, visit);
}

template <typename T>
U3D_HD T min_(T a, T b) { return a < b ? a : b; }
template <typename T>
U3D_HD T max_(T a, T b) { return a > b ? a : b; }

// floor / ceil of a finite value that fits in int64, without a libm call on the host.
template <typename T>
U3D_HD int64_t floor_i64(T x) {
  const int64_t i = static_cast<int64_t>(x);
  return i - (x < static_cast<T>(i) ? 1 : 0);
}
template <typename T>
U3D_HD int64_t ceil_i64(T x) {
  const int64_t i = static_cast<int64_t>(x);
  return i + (x > static_cast<T>(i) ? 1 : 0);
}

// The pairs of joseph_traverse(L, vs, .) whose voxel lies in the box lo <= (x, y, z) < hi, with the
// same q = q0 + k dq and the same weights; `visit` gets the linear index in the full volume. Used
// by the CPU backprojector "tile" (a thread that owns the box visits exactly the box's share of
// the ray) and, with the whole volume as the box, by the CPU forward projector; no bounds checks
// on planes whose four neighbours are all inside the box.
//
// `run(k0, k1)` is called once with the planes k0..k1 (possibly empty) whose four neighbours are all
// in the box, where q >= 0: it must visit, for each such plane k, voxels i00 + {0, sb, sc, sb + sc}
// (i00 = k sa + trunc(qb) sb + trunc(qc) sc) with the weights w (1-fb)(1-fc), w fb (1-fc),
// w (1-fb) fc, w fb fc, fb = qb - trunc(qb), fc likewise, in that order. The overload without
// `run` does exactly that with `visit`; the CPU projectors pass a two-planes-at-a-time SIMD
// version of the same loop.
template <typename T, typename Visit, typename Run>
U3D_HD void joseph_traverse_box(const JosephLine<T>& L, const VolumeIndexSpace<T>& vs, const int64_t lo[3],
                                const int64_t hi[3], Visit&& visit, Run&& run) {
  const int a = L.a;
  if (a < 0) return;
  const int b = a == 2 ? 0 : a + 1, c = a == 0 ? 2 : a - 1;
  const T qb0 = L.qb0, db = L.db, qc0 = L.qc0, dc = L.dc, w = L.w;
  const int64_t kf = L.k_first > lo[a] ? L.k_first : lo[a];
  const int64_t kl = L.k_last < hi[a] - 1 ? L.k_last : hi[a] - 1;
  if (kf > kl) return;
  const int64_t lb = lo[b], hb = hi[b], lc = lo[c], hc = hi[c];
  const int64_t sa = vs.stride[a], sb = vs.stride[b], sc = vs.stride[c];
  // Planes whose footprint can reach the box (lo - 1 < q < hi on b and c), and planes whose four
  // neighbours are all in the box (lo <= q < hi - 1). Both are estimated in floating point and
  // widened (reach) or verified (interior) plane by plane, so rounding cannot drop or add a pair.
  T rmin = static_cast<T>(kf), rmax = static_cast<T>(kl), imin = rmin, imax = rmax;
  bool interior_ok = true;
  const T q0s[2] = {qb0, qc0}, dqs[2] = {db, dc};
  const int64_t los[2] = {lb, lc}, his[2] = {hb, hc};
  for (int o = 0; o < 2; ++o) {
    const T r_lo = static_cast<T>(los[o] - 1), r_hi = static_cast<T>(his[o]);
    const T i_lo = static_cast<T>(los[o]), i_hi = static_cast<T>(his[o] - 1);
    if (dqs[o] == T(0)) {
      if (!(q0s[o] > r_lo && q0s[o] < r_hi)) return;
      interior_ok = interior_ok && q0s[o] >= i_lo && q0s[o] < i_hi;
    } else {
      const T inv = T(1) / dqs[o];
      T k1 = (r_lo - q0s[o]) * inv, k2 = (r_hi - q0s[o]) * inv;
      if (k1 > k2) { const T t = k1; k1 = k2; k2 = t; }
      if (k1 > rmin) rmin = k1;
      if (k2 < rmax) rmax = k2;
      T j1 = (i_lo - q0s[o]) * inv, j2 = (i_hi - q0s[o]) * inv;
      if (j1 > j2) { const T t = j1; j1 = j2; j2 = t; }
      if (j1 > imin) imin = j1;
      if (j2 < imax) imax = j2;
    }
  }
  if (rmin > rmax + T(1)) return;
  // One plane of slack on each side: the checked planes below test every neighbour exactly.
  int64_t k_first = floor_i64(rmin), k_last = ceil_i64(rmax);
  if (k_first < kf) k_first = kf;
  if (k_last > kl) k_last = kl;
  auto interior = [&](int64_t k) {
    const T qb = plane_q(qb0, k, db), qc = plane_q(qc0, k, dc);
    return qb >= static_cast<T>(lb) && qb < static_cast<T>(hb - 1) && qc >= static_cast<T>(lc) &&
           qc < static_cast<T>(hc - 1);
  };
  int64_t i_first = k_last + 1, i_last = k_last;
  if (interior_ok && imin <= imax) {
    int64_t f = ceil_i64(imin), l = floor_i64(imax);
    if (f < k_first) f = k_first;
    if (l > k_last) l = k_last;
    while (f <= l && !interior(f)) ++f;  // a step or two at most: rounding at the ends
    while (l >= f && !interior(l)) --l;
    if (f <= l) { i_first = f; i_last = l; }
  }
  auto plane_checked = [&](int64_t k) {
    const T qb = plane_q(qb0, k, db);
    const T qc = plane_q(qc0, k, dc);
    // k is within L.k_first..L.k_last, where q > -1: truncation of q + 1 is floor(q) + 1.
    const int64_t ib = static_cast<int64_t>(qb + T(1)) - 1, ic = static_cast<int64_t>(qc + T(1)) - 1;
    const T fb = qb - static_cast<T>(ib), fc = qc - static_cast<T>(ic);
    const int64_t base = k * sa;
    const bool b0 = ib >= lb && ib < hb, b1 = ib + 1 >= lb && ib + 1 < hb;
    const bool c0 = ic >= lc && ic < hc, c1 = ic + 1 >= lc && ic + 1 < hc;
    if (b0 && c0) visit(base + ib * sb + ic * sc, w * (T(1) - fb) * (T(1) - fc));
    if (b1 && c0) visit(base + (ib + 1) * sb + ic * sc, w * fb * (T(1) - fc));
    if (b0 && c1) visit(base + ib * sb + (ic + 1) * sc, w * (T(1) - fb) * fc);
    if (b1 && c1) visit(base + (ib + 1) * sb + (ic + 1) * sc, w * fb * fc);
  };
  const int64_t pre_end = i_first <= i_last ? i_first - 1 : k_last;
  for (int64_t k = k_first; k <= pre_end; ++k) plane_checked(k);
  run(i_first, i_last);
  if (i_first <= i_last)
    for (int64_t k = i_last + 1; k <= k_last; ++k) plane_checked(k);
}

template <typename T, typename Visit>
U3D_HD void joseph_traverse_box(const JosephLine<T>& L, const VolumeIndexSpace<T>& vs, const int64_t lo[3],
                                const int64_t hi[3], Visit&& visit) {
  const int a = L.a < 0 ? 0 : L.a;
  const int64_t sa = vs.stride[a], sb = vs.stride[a == 2 ? 0 : a + 1], sc = vs.stride[a == 0 ? 2 : a - 1];
  joseph_traverse_box(L, vs, lo, hi, visit, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k <= k1; ++k) {
      const T qb = plane_q(L.qb0, k, L.db);
      const T qc = plane_q(L.qc0, k, L.dc);
      const int64_t ib = static_cast<int64_t>(qb), ic = static_cast<int64_t>(qc);  // q >= 0: truncation = floor
      const T fb = qb - static_cast<T>(ib), fc = qc - static_cast<T>(ic);
      const int64_t i00 = k * sa + ib * sb + ic * sc;
      visit(i00, L.w * (T(1) - fb) * (T(1) - fc));
      visit(i00 + sb, L.w * fb * (T(1) - fc));
      visit(i00 + sc, L.w * (T(1) - fb) * fc);
      visit(i00 + sb + sc, L.w * fb * fc);
    }
  });
}

// ----------------------------------------------------------------------------- gather form
// The backprojector's gather form visits, for each voxel, the pixels of one view whose Joseph
// traversal weighs that voxel, with the weight the traversal gives it:
//   pixel p with line L (a, qb0, db, qc0, dc, w, k_first..k_last) weighs voxel X = (x, y, z) iff
//   k = X[a] lies in k_first..k_last and both 1 - |qb0 + k db - X[b]| and 1 - |qc0 + k dc - X[c]|
//   are positive; the weight is w * (1 - |.|) * (1 - |.|).
// That is joseph_traverse's (voxel, weight) set: the traversal gives voxel floor(q) the weight
// 1 - frac(q) and voxel floor(q) + 1 the weight frac(q), i.e. 1 - |q - j| for the two j within 1
// of q, with the same q (same JosephLine). The two forms of the weight agree to the last bit
// when |q| >= 1 and to one rounding of 1 otherwise. Visiting pixels in a window that contains
// every contributing pixel (see ViewProjection) therefore computes exactly the transpose.

// Central projection of one view in index space: the line of detector point (col, row) (continuous
// pixel indices, pixel centres at integers) passes through the index-space point X = (x, y, z) iff
//   col = (col_c . X + col_c[3]) / (den_c . X + den_c[3]),  row = (row_c . X + row_c[3]) / (den_c . X + den_c[3]).
// den is the ray parameter of X along make_ray's direction (0 at the source, 1 at the detector),
// so it changes sign only on the plane through the source parallel to the detector.
template <typename T>
struct ViewProjection {
  T den_c[4], col_c[4], row_c[4];
};

// Builds the projection of view `view` (12 doubles, cone_vec) for the index space `vs` (in double
// whatever T, then rounded). Returns false when the detector vectors and the source-to-detector
// vector are linearly dependent (no projection; callers then scan the whole detector).
template <typename T, typename S>
U3D_HD bool make_view_projection(const double* view, int64_t rows, int64_t cols, const VolumeIndexSpace<S>& vs,
                                 ViewProjection<T>* out) {
  // Index-space frame of make_ray: X = s + lambda * (D0 + cu u + cv v).
  double s[3], D0[3], u[3], v[3];
  for (int a = 0; a < 3; ++a) {
    const double iv = static_cast<double>(vs.inv_voxel[a]), o = static_cast<double>(vs.origin_idx[a]);
    s[a] = view[a] * iv + o;
    D0[a] = (view[3 + a] - view[a]) * iv;
    u[a] = view[6 + a] * iv;
    v[a] = view[9 + a] * iv;
  }
  // Rows of the inverse of M = [D0 u v] (columns): (lambda, lambda cu, lambda cv) = M^-1 (X - s).
  const double c0[3] = {u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]};  // u x v
  const double c1[3] = {v[1] * D0[2] - v[2] * D0[1], v[2] * D0[0] - v[0] * D0[2], v[0] * D0[1] - v[1] * D0[0]};  // v x D0
  const double c2[3] = {D0[1] * u[2] - D0[2] * u[1], D0[2] * u[0] - D0[0] * u[2], D0[0] * u[1] - D0[1] * u[0]};  // D0 x u
  const double det = D0[0] * c0[0] + D0[1] * c0[1] + D0[2] * c0[2];
  const double scale = sqrt((D0[0] * D0[0] + D0[1] * D0[1] + D0[2] * D0[2]) *
                            (c0[0] * c0[0] + c0[1] * c0[1] + c0[2] * c0[2]));
  // Nearly dependent vectors make the inverse ill-conditioned (errors ~ eps / |cos|): below
  // |cos(D0, u x v)| = 1e-6 the bound could be off by more than footprint_window's margin.
  if (!(fabs(det) > 1e-6 * scale)) return false;
  const double hc = 0.5 * static_cast<double>(cols - 1), hr = 0.5 * static_cast<double>(rows - 1);
  double den[3], col[3], row[3];
  for (int a = 0; a < 3; ++a) {
    den[a] = c0[a] / det;
    col[a] = c1[a] / det + hc * den[a];  // cu + (cols-1)/2, times lambda
    row[a] = c2[a] / det + hr * den[a];
  }
  double dk = 0.0, ck = 0.0, rk = 0.0;
  for (int a = 0; a < 3; ++a) {
    dk -= den[a] * s[a];
    ck -= col[a] * s[a];
    rk -= row[a] * s[a];
  }
  for (int a = 0; a < 3; ++a) {
    out->den_c[a] = static_cast<T>(den[a]);
    out->col_c[a] = static_cast<T>(col[a]);
    out->row_c[a] = static_cast<T>(row[a]);
  }
  out->den_c[3] = static_cast<T>(dk);
  out->col_c[3] = static_cast<T>(ck);
  out->row_c[3] = static_cast<T>(rk);
  return true;
}

// Half-widths of the footprint bound: every contributing ray with driving axis a meets the
// voxel's plane X[a] inside the open square |P_b - X_b| < 1, |P_c - X_c| < 1, so the voxel's
// candidate pixels lie in the projection of X + {0} x [-1, 1]^2 (axes a, b, c). For a view whose
// lines use several driving axes, the union of those squares lies in the cube X + [-1, 1]^3.
// axes_mask: bit a set when some line of the view has driving axis a.
template <typename T>
struct FootprintBound {
  ViewProjection<T> p;
  T rden, rcol, rrow;  // sums of |coefficient| over the axes the squares span
  bool full;           // no projection: scan the whole detector
};

template <typename T>
U3D_HD FootprintBound<T> make_footprint_bound(const ViewProjection<T>& p, bool ok, int axes_mask) {
  FootprintBound<T> f;
  f.p = p;
  f.full = !ok;
  f.rden = f.rcol = f.rrow = T(0);
  // Axes a square spans: all but a when one driving axis is present; all three otherwise.
  int span = 7;
  if (axes_mask == 1) span = 6;
  else if (axes_mask == 2) span = 5;
  else if (axes_mask == 4) span = 3;
  for (int e = 0; e < 3; ++e)
    if (span & (1 << e)) {
      f.rden += fabs(p.den_c[e]);
      f.rcol += fabs(p.col_c[e]);
      f.rrow += fabs(p.row_c[e]);
    }
  return f;
}

// Pixel window [r0, r1] x [c0, c1] (inclusive, clipped to the detector, empty when r0 > r1 or
// c0 > c1) that holds every pixel whose line can weigh voxel (x, y, z). Conservative: the bound
// of a ratio over a box is taken over the corners of (numerator, denominator) intervals, and the
// window is widened against rounding (the membership test is exact anyway; a wider window only
// costs candidates). The rounding to cover is that of the lines (q in float32 carries ~1e-7 of
// the source distance in voxels, ~1e-4 voxel) and of the projection: the margin is 1e-2 pixel
// plus 1e-3 of the window in float32, 1e-6 pixel plus 1e-9 of the window in float64.
template <typename T>
U3D_HD void footprint_window(const FootprintBound<T>& f, T x, T y, T z, int64_t rows, int64_t cols, int64_t& r0,
                             int64_t& r1, int64_t& c0, int64_t& c1) {
  const T m0 = sizeof(T) == 4 ? T(1e-2) : T(1e-6), m1 = sizeof(T) == 4 ? T(1e-3) : T(1e-9);
  if (!f.full) {
    const T den = f.p.den_c[0] * x + f.p.den_c[1] * y + f.p.den_c[2] * z + f.p.den_c[3];
    const T dlo = den - f.rden, dhi = den + f.rden;
    if (dlo > T(0) || dhi < T(0)) {  // the box does not reach the source plane: bounded ratio
      const T i1 = T(1) / dlo, i2 = T(1) / dhi;
      const T nc = f.p.col_c[0] * x + f.p.col_c[1] * y + f.p.col_c[2] * z + f.p.col_c[3];
      const T nr = f.p.row_c[0] * x + f.p.row_c[1] * y + f.p.row_c[2] * z + f.p.row_c[3];
      const T ca = (nc - f.rcol) * i1, cb = (nc - f.rcol) * i2, cc = (nc + f.rcol) * i1, cd = (nc + f.rcol) * i2;
      const T ra = (nr - f.rrow) * i1, rb = (nr - f.rrow) * i2, rc = (nr + f.rrow) * i1, rd = (nr + f.rrow) * i2;
      T clo = min_(min_(ca, cb), min_(cc, cd)), chi = max_(max_(ca, cb), max_(cc, cd));
      T rlo = min_(min_(ra, rb), min_(rc, rd)), rhi = max_(max_(ra, rb), max_(rc, rd));
      const T mc = m0 + m1 * (chi - clo), mr = m0 + m1 * (rhi - rlo);
      clo -= mc; chi += mc;
      rlo -= mr; rhi += mr;
      // Clip in floating point before converting (the bounds can be huge near the source plane).
      clo = max_(clo, T(0)); chi = min_(chi, static_cast<T>(cols - 1));
      rlo = max_(rlo, T(0)); rhi = min_(rhi, static_cast<T>(rows - 1));
      if (!(clo <= chi) || !(rlo <= rhi)) { r0 = 0; r1 = -1; c0 = 0; c1 = -1; return; }
      c0 = ceil_i64(clo); c1 = floor_i64(chi);
      r0 = ceil_i64(rlo); r1 = floor_i64(rhi);
      return;
    }
  }
  r0 = 0; r1 = rows - 1; c0 = 0; c1 = cols - 1;
}

// The weight joseph_traverse gives voxel (x, y, z) in the line L, or 0 when it gives none.
// Voxel coordinates are 32-bit like k_first / k_last (one axis never reaches 2^31 voxels), and
// they are picked with selects, not by indexing an array with L.a: on a GPU both 64-bit integer
// arithmetic and a dynamically indexed array (local memory) would cost.
template <typename T>
U3D_HD T joseph_weight(const JosephLine<T>& L, int32_t x, int32_t y, int32_t z) {
  const int a = L.a;
  if (a < 0) return T(0);
  const int32_t k = a == 0 ? x : (a == 1 ? y : z);
  if (k < L.k_first || k > L.k_last) return T(0);
  const int32_t jb = a == 0 ? y : (a == 1 ? z : x), jc = a == 0 ? z : (a == 1 ? x : y);
  const T tb = T(1) - fabs(plane_q(L.qb0, k, L.db) - static_cast<T>(jb));
  if (!(tb > T(0))) return T(0);
  const T tc = T(1) - fabs(plane_q(L.qc0, k, L.dc) - static_cast<T>(jc));
  if (!(tc > T(0))) return T(0);
  return L.w * tb * tc;  // same association as joseph_traverse: (w * tb) * tc
}

// Gather for one voxel and one view: sum over the window of weight * value(p), p = r * cols + c.
template <typename Acc, typename T, typename Value>
U3D_HD Acc joseph_gather(const JosephLine<T>* lines, int32_t x, int32_t y, int32_t z, int64_t cols, int64_t r0,
                         int64_t r1, int64_t c0, int64_t c1, Value&& value) {
  Acc acc = Acc(0);
  for (int64_t r = r0; r <= r1; ++r)
    for (int64_t c = c0; c <= c1; ++c) {
      const int64_t p = r * cols + c;
      const T w = joseph_weight(lines[p], x, y, z);
      if (w != T(0)) acc += static_cast<Acc>(w) * static_cast<Acc>(value(p));
    }
  return acc;
}

}  // namespace unrolled3d

// Entry points (defined in cone_beam.cpp / cone_beam_cuda.cu; schemas in schemas.h).
//   cone_project:      volume (B, C, D, H, W) -> sinogram (B, C, V, rows, cols)
//   cone_backproject:  its transpose, sinogram (B, C, V, R, U) -> volume (B, C, depth, height, width),
//                      with the device's default algorithm ("auto")
//   cone_backproject_algo: the same transpose with a chosen algorithm:
//     "auto"    the device's default: "tile" on the CPU, "scatter" on CUDA (the default on CUDA
//               changes once another is measured faster there; see bench/run_gpu.sh)
//     "scatter" CPU: threads own z-slabs and re-trace every ray; CUDA: one thread per ray, atomicAdd
//     "tile"    CPU only: each thread owns a z-slab and splats the rays that reach it (SIMD)
//     "gather"  one thread per voxel sums the pixels of its footprint window (joseph_gather) from
//               per-pixel line tables: no atomics, deterministic; the same code on both devices
//     "column"  a block owns a tile of (x, y) columns and a run of slices, each thread a column
//               walking z, per view the block's lines in shared memory (column_backproject.h):
//               no atomics, each voxel written once; the same code on both devices
//   views (V, 12) float64 on the data's device; vol_geom = 6 doubles (sz, sy, sx, oz, oy, ox) in mm.
// Inputs are validated in Python (unrolled3d/ops/projector.py); the C++ side re-checks cheaply.
#include <torch/types.h>
namespace unrolled3d {
enum class BackprojectAlgorithm { kAuto, kScatter, kTile, kGather, kColumn };

inline BackprojectAlgorithm parse_backproject_algorithm(c10::string_view name, bool cuda) {
  if (name == "auto") return BackprojectAlgorithm::kAuto;
  if (name == "scatter") return BackprojectAlgorithm::kScatter;
  if (name == "gather") return BackprojectAlgorithm::kGather;
  if (name == "column") return BackprojectAlgorithm::kColumn;
  if (name == "tile") {
    TORCH_CHECK(!cuda, "unrolled3d: backprojection algorithm 'tile' is CPU-only; use 'column', 'gather' or 'scatter' on CUDA");
    return BackprojectAlgorithm::kTile;
  }
  TORCH_CHECK(false, "unrolled3d: unknown backprojection algorithm '", std::string(name),
              "' (expected 'auto', 'scatter', 'tile', 'gather' or 'column')");
}

// The column backprojector (column_backproject.cpp / column_backproject_cuda.cu): writes every
// voxel of `vol` (B, C, D, H, W), contiguous like the contiguous `sino`; `vs` in double (the CUDA
// twin rounds it to its arithmetic type).
void column_backproject_cpu(const at::Tensor& sino, at::Tensor& vol, const at::Tensor& views,
                            const VolumeIndexSpace<double>& vs);
#ifdef WITH_CUDA
void column_backproject_cuda(const at::Tensor& sino, at::Tensor& vol, const at::Tensor& views, const VolumeGeom& geom);
#endif

at::Tensor cone_project_cpu(const at::Tensor& volume, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                            int64_t rows, int64_t cols);
at::Tensor cone_backproject_cpu(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                int64_t depth, int64_t height, int64_t width);
at::Tensor cone_backproject_algo_cpu(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                     int64_t depth, int64_t height, int64_t width, c10::string_view algorithm);
#ifdef WITH_CUDA
at::Tensor cone_project_cuda(const at::Tensor& volume, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                             int64_t rows, int64_t cols);
at::Tensor cone_backproject_cuda(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                 int64_t depth, int64_t height, int64_t width);
at::Tensor cone_backproject_algo_cuda(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                      int64_t depth, int64_t height, int64_t width, c10::string_view algorithm);
#endif

// Shared argument checks, so that both twins refuse the same inputs with the same words.
inline VolumeGeom check_vol_geom(at::ArrayRef<double> vol_geom) {
  TORCH_CHECK(vol_geom.size() == 6, "unrolled3d: vol_geom must hold 6 numbers (sz, sy, sx, oz, oy, ox), got ",
              vol_geom.size());
  VolumeGeom g;
  for (int i = 0; i < 6; ++i) g.g[i] = vol_geom[i];
  for (int i = 0; i < 3; ++i) TORCH_CHECK(g.g[i] > 0.0, "unrolled3d: voxel sizes must be positive");
  return g;
}
// Plane indices (JosephLine::k_first / k_last) and the gather's voxel and pixel coordinates are
// 32-bit: every axis of the volume and of the detector must stay below 2^31.
inline void check_extents(int64_t depth, int64_t height, int64_t width, int64_t rows, int64_t cols) {
  constexpr int64_t kMax = (int64_t(1) << 31) - 1;
  TORCH_CHECK(depth <= kMax && height <= kMax && width <= kMax && rows <= kMax && cols <= kMax,
              "unrolled3d: every volume and detector axis must be below 2^31");
}
inline void check_views(const at::Tensor& views, const at::Tensor& data) {
  TORCH_CHECK(views.dim() == 2 && views.size(1) == 12, "unrolled3d: views must have shape (V, 12), got ",
              views.sizes());
  TORCH_CHECK(views.scalar_type() == at::kDouble, "unrolled3d: views must be float64");
  TORCH_CHECK(views.device() == data.device(), "unrolled3d: views must be on the data's device");
  TORCH_CHECK(data.scalar_type() == at::kFloat || data.scalar_type() == at::kDouble,
              "unrolled3d: data must be float32 or float64, got ", data.scalar_type());
  TORCH_CHECK(data.dim() == 5, "unrolled3d: data must be 5-D (B, C, ...), got ", data.dim(), "-D");
}
}  // namespace unrolled3d
