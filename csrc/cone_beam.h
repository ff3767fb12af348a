// Cone-beam ray-driven (Joseph) projector: geometry and traversal shared by the CPU and CUDA twins.
//
// Shapes and conventions
//   volume      (N, D, H, W)  contiguous, N = B*C; voxel (k, j, i) = (z, y, x) has its centre at
//               world x = ox + (i - (W-1)/2) sx, y = oy + (j - (H-1)/2) sy, z = oz + (k - (D-1)/2) sz
//   sinogram    (N, V, R, U)  V views, R detector rows, U detector columns
//   views       (V, 12) float64, ASTRA cone_vec rows (src_xyz, det_centre_xyz, u_xyz, v_xyz):
//               pixel (r, c) sits at det + (c - (U-1)/2) u + (r - (R-1)/2) v
//   vol_geom    9 doubles: (D, H, W) are passed separately; here (sz, sy, sx, oz, oy, ox) in mm
//
// The forward projector integrates along the line from the source to each pixel centre with
// Joseph's method: step plane by plane along the axis in which the ray moves fastest (in voxel
// units), interpolate bilinearly in the other two axes (zero outside the volume), weight each
// plane by the world length of the ray between two planes. The backprojector visits exactly the
// same (voxel, weight) pairs and scatters instead of gathers, so it is the exact transpose.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define U3D_HD __host__ __device__ __forceinline__
#else
#define U3D_HD inline
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

// A ray in index space: start point (the source) and direction (to the pixel centre), plus the
// world length of the direction vector, so that world length = |t2 - t1| * world_norm.
template <typename T>
struct IndexRay {
  T s[3];
  T d[3];
  T world_norm;
};

template <typename T>
U3D_HD IndexRay<T> make_ray(const double* view, int64_t r, int64_t c, int64_t rows, int64_t cols,
                            const VolumeIndexSpace<T>& vs) {
  const double cu = static_cast<double>(c) - 0.5 * static_cast<double>(cols - 1);
  const double cv = static_cast<double>(r) - 0.5 * static_cast<double>(rows - 1);
  IndexRay<T> ray;
  double norm2 = 0.0;
  for (int a = 0; a < 3; ++a) {
    const double src = view[a];
    const double pix = view[3 + a] + cu * view[6 + a] + cv * view[9 + a];
    const double dw = pix - src;
    norm2 += dw * dw;
    ray.s[a] = static_cast<T>(src) * vs.inv_voxel[a] + vs.origin_idx[a];
    ray.d[a] = static_cast<T>(dw) * vs.inv_voxel[a];
  }
  ray.world_norm = static_cast<T>(sqrt(norm2));
  return ray;
}

// Visit every (linear voxel index, weight) pair of the Joseph discretisation of `ray`.
// visit(int64_t index, T weight) is called at most 4 times per crossed plane.
template <typename T, typename Visit>
U3D_HD void joseph_traverse(const IndexRay<T>& ray, const VolumeIndexSpace<T>& vs, Visit&& visit) {
  // Driving axis: the one along which the ray advances fastest in index units.
  const T ax = fabs(ray.d[0]), ay = fabs(ray.d[1]), az = fabs(ray.d[2]);
  int a = 0;
  if (ay > ax && ay >= az) a = 1;
  else if (az > ax && az > ay) a = 2;
  const int b = (a + 1) % 3, c = (a + 2) % 3;
  const T da = ray.d[a];
  if (da == T(0)) return;  // degenerate ray (source on the pixel)
  const T inv = T(1) / da;
  // Position on the other axes as a function of the plane index k: q = q0 + k * dq
  const T db = ray.d[b] * inv, dc = ray.d[c] * inv;
  const T qb0 = ray.s[b] - ray.s[a] * db, qc0 = ray.s[c] - ray.s[a] * dc;
  const T w = ray.world_norm * fabs(inv);  // world length between consecutive planes

  // Planes whose bilinear footprint can touch the volume: -1 < q < n on both other axes.
  T kmin = T(0), kmax = static_cast<T>(vs.n[a] - 1);
  const T qs0[2] = {qb0, qc0};
  const T dqs[2] = {db, dc};
  const int64_t ns[2] = {vs.n[b], vs.n[c]};
  for (int o = 0; o < 2; ++o) {
    const T lo = T(-1), hi = static_cast<T>(ns[o]);
    if (dqs[o] == T(0)) {
      if (!(qs0[o] > lo && qs0[o] < hi)) return;
    } else {
      T k1 = (lo - qs0[o]) / dqs[o], k2 = (hi - qs0[o]) / dqs[o];
      if (k1 > k2) { const T t = k1; k1 = k2; k2 = t; }
      if (k1 > kmin) kmin = k1;
      if (k2 < kmax) kmax = k2;
    }
  }
  if (kmin > kmax) return;
  const int64_t k_first = static_cast<int64_t>(ceil(kmin));
  const int64_t k_last = static_cast<int64_t>(floor(kmax));
  const int64_t nb = vs.n[b], nc = vs.n[c];
  const int64_t sa = vs.stride[a], sb = vs.stride[b], sc = vs.stride[c];

  // Planes where all four neighbours are inside (0 <= q < n - 1 on both axes) need no bounds
  // checks. The range is estimated in floating point, then its ends are verified exactly (q is
  // monotone in k, so valid ends mean every plane between is valid).
  auto interior = [&](int64_t k) {
    const T qb = qb0 + static_cast<T>(k) * db, qc = qc0 + static_cast<T>(k) * dc;
    return qb >= T(0) && qb < static_cast<T>(nb - 1) && qc >= T(0) && qc < static_cast<T>(nc - 1);
  };
  int64_t i_first = k_last + 1, i_last = k_last;  // empty unless found below
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
      int64_t f = static_cast<int64_t>(ceil(lo)), l = static_cast<int64_t>(floor(hi));
      while (f <= l && !interior(f)) ++f;  // at most a step or two: rounding at the ends
      while (l >= f && !interior(l)) --l;
      if (f <= l) { i_first = f; i_last = l; }
    }
  }

  auto plane_checked = [&](int64_t k) {
    const T qb = qb0 + static_cast<T>(k) * db;
    const T qc = qc0 + static_cast<T>(k) * dc;
    // q > -1 on these planes, so truncation of q + 1 is floor(q) + 1 (no libm floor call).
    const int64_t ib = static_cast<int64_t>(qb + T(1)) - 1, ic = static_cast<int64_t>(qc + T(1)) - 1;
    const T fb = qb - static_cast<T>(ib), fc = qc - static_cast<T>(ic);
    const int64_t base = k * sa;
    const bool b0 = ib >= 0 && ib < nb, b1 = ib + 1 >= 0 && ib + 1 < nb;
    const bool c0 = ic >= 0 && ic < nc, c1 = ic + 1 >= 0 && ic + 1 < nc;
    if (b0 && c0) visit(base + ib * sb + ic * sc, w * (T(1) - fb) * (T(1) - fc));
    if (b1 && c0) visit(base + (ib + 1) * sb + ic * sc, w * fb * (T(1) - fc));
    if (b0 && c1) visit(base + ib * sb + (ic + 1) * sc, w * (T(1) - fb) * fc);
    if (b1 && c1) visit(base + (ib + 1) * sb + (ic + 1) * sc, w * fb * fc);
  };
  const int64_t pre_end = i_first <= i_last ? i_first - 1 : k_last;
  for (int64_t k = k_first; k <= pre_end; ++k) plane_checked(k);
  for (int64_t k = i_first; k <= i_last; ++k) {
    const T qb = qb0 + static_cast<T>(k) * db;
    const T qc = qc0 + static_cast<T>(k) * dc;
    const int64_t ib = static_cast<int64_t>(qb), ic = static_cast<int64_t>(qc);  // q >= 0: truncation = floor
    const T fb = qb - static_cast<T>(ib), fc = qc - static_cast<T>(ic);
    const int64_t i00 = k * sa + ib * sb + ic * sc;
    visit(i00, w * (T(1) - fb) * (T(1) - fc));
    visit(i00 + sb, w * fb * (T(1) - fc));
    visit(i00 + sc, w * (T(1) - fb) * fc);
    visit(i00 + sb + sc, w * fb * fc);
  }
  if (i_first <= i_last)
    for (int64_t k = i_last + 1; k <= k_last; ++k) plane_checked(k);
}

}  // namespace unrolled3d

// Entry points (defined in cone_beam.cpp / cone_beam_cuda.cu).
//   volume (B, C, D, H, W) -> cone_project -> sinogram (B, C, V, rows, cols), and its transpose.
//   views (V, 12) float64 on the data's device; vol_geom = (sz, sy, sx, oz, oy, ox) in mm.
// Inputs are validated in Python (unrolled3d/ops/projector.py); the C++ side re-checks cheaply.
#include <torch/types.h>
namespace unrolled3d {
at::Tensor cone_project_cpu(const at::Tensor& volume, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                            int64_t rows, int64_t cols);
at::Tensor cone_backproject_cpu(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                int64_t depth, int64_t height, int64_t width);
#ifdef WITH_CUDA
at::Tensor cone_project_cuda(const at::Tensor& volume, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                             int64_t rows, int64_t cols);
at::Tensor cone_backproject_cuda(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                 int64_t depth, int64_t height, int64_t width);
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
