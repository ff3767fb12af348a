// FDK's weighted backprojection (the last step of unrolled3d.physics.fdk), shared by the CPU twin
// (fdk_backproject.cpp) and the CUDA kernel (fdk_backproject_cuda.cu).
//
//   images (N, V, rows, cols)  cosine-weighted, ramp-filtered projections, float32 or float64
//   table  (V, 18)             per view, in the images' dtype (unrolled3d/physics/fdk.py builds it):
//                              source (3), detector unit normal n (3), unit u (3), unit v (3),
//                              detector centre to source along u and v (2), du, dv, d_sd, and the
//                              view's weight R * d_sd * d_beta
//   out    (N, D, H, W)        sum over views of weight / U^2 times the bilinear sample (zeros
//                              outside the detector) of the view's image where the ray from the
//                              source through the voxel centre meets it; U = (X - s) . n
//
// Voxel (k, j, i) sits at x = (i - (W-1)/2) sx + ox, y likewise, z likewise (the projector's
// convention). The arithmetic is that of the PyTorch twin (grid_sample with align_corners=True),
// except that it multiplies by 1 / U, 1 / du and 1 / dv where the twin divides: equal to rounding.
// Each thread owns an (x, y) column and a run of kFdkZ slices; along the column only z moves, so
// U and the two numerators are one multiply-add each per voxel (ASTRA's and TIGRE's FDK
// organisation, without the texture unit: its 8-bit interpolation weights would cost accuracy).
#pragma once

#include "cone_beam.h"
#include "column_backproject.h"  // floor_i32

namespace unrolled3d {

constexpr int kFdkColumns = 18;  // table columns
constexpr int kFdkZ = 8;         // slices per thread
constexpr int kFdkViews = 64;    // views per shared-memory chunk (CUDA)

// The part of one view's constants that does not depend on the voxel, with the reciprocals the
// per-voxel arithmetic multiplies by.
template <typename T>
struct FdkView {
  T src[3], n[3], u[3], v[3];
  T rel_u, rel_v, inv_du, inv_dv, d_sd, weight;
};

template <typename T>
U3D_HD FdkView<T> make_fdk_view(const T* t) {
  FdkView<T> f;
  for (int a = 0; a < 3; ++a) {
    f.src[a] = t[a];
    f.n[a] = t[3 + a];
    f.u[a] = t[6 + a];
    f.v[a] = t[9 + a];
  }
  f.rel_u = t[12];
  f.rel_v = t[13];
  f.inv_du = T(1) / t[14];
  f.inv_dv = T(1) / t[15];
  f.d_sd = t[16];
  f.weight = t[17];
  return f;
}

// One column (X, Y) of one view: depth and numerators at z = 0 (world Z = z_src-relative 0), to
// which each slice adds dz times the z components.
template <typename T>
struct FdkColumn {
  T depth, nu, nv;
};

template <typename T>
U3D_HD FdkColumn<T> fdk_column(const FdkView<T>& f, T X, T Y) {
  const T dx = X - f.src[0], dy = Y - f.src[1];
  return FdkColumn<T>{madd(dy, f.n[1], dx * f.n[0]), madd(dy, f.u[1], dx * f.u[0]), madd(dy, f.v[1], dx * f.v[0])};
}

// The view's contribution to the voxel of the column at world height Z; img(r, c) reads a pixel.
template <typename T, typename Img>
U3D_HD T fdk_sample(const FdkView<T>& f, const FdkColumn<T>& col, T Z, int32_t rows, int32_t cols, Img&& img) {
  const T dz = Z - f.src[2];
  const T depth = madd(dz, f.n[2], col.depth);
  const T inv = T(1) / depth;
  const T scale = f.d_sd * inv;
  // detector coordinates of the hit, in pixels from pixel (0, 0)
  const T cu = madd(madd(scale, madd(dz, f.u[2], col.nu), f.rel_u), f.inv_du, T(0.5) * static_cast<T>(cols - 1));
  const T cv = madd(madd(scale, madd(dz, f.v[2], col.nv), f.rel_v), f.inv_dv, T(0.5) * static_cast<T>(rows - 1));
  const int32_t c0 = floor_i32(cu), r0 = floor_i32(cv);
  if (c0 < -1 || c0 >= cols || r0 < -1 || r0 >= rows) return T(0);  // no neighbour on the detector
  const T ac = cu - static_cast<T>(c0), ar = cv - static_cast<T>(r0);
  const bool cin0 = c0 >= 0, cin1 = c0 + 1 < cols, rin0 = r0 >= 0, rin1 = r0 + 1 < rows;
  const T top = (rin0 ? (cin0 ? (T(1) - ac) * img(r0, c0) : T(0)) + (cin1 ? ac * img(r0, c0 + 1) : T(0)) : T(0));
  const T bottom =
      (rin1 ? (cin0 ? (T(1) - ac) * img(r0 + 1, c0) : T(0)) + (cin1 ? ac * img(r0 + 1, c0 + 1) : T(0)) : T(0));
  const T sample = madd(ar, bottom - top, top);
  return sample * (f.weight * inv * inv);
}

// World coordinate of index i on an axis of n voxels of size s, centred at o (the twin's formula).
template <typename T>
U3D_HD T voxel_centre(int32_t i, int32_t n, double s, double o) {
  return madd(static_cast<T>(i) - T(0.5) * static_cast<T>(n - 1), static_cast<T>(s), static_cast<T>(o));
}

}  // namespace unrolled3d

#include <torch/types.h>
namespace unrolled3d {
// images (N, V, rows, cols), table (V, 18) same dtype and device, vol_geom (sz, sy, sx, oz, oy, ox)
// -> (N, depth, height, width). Inputs are validated in Python (unrolled3d/ops/fdk_backproject.py).
at::Tensor fdk_backproject_cpu(const at::Tensor& images, const at::Tensor& table, at::ArrayRef<double> vol_geom,
                               int64_t depth, int64_t height, int64_t width);
#ifdef WITH_CUDA
at::Tensor fdk_backproject_cuda(const at::Tensor& images, const at::Tensor& table, at::ArrayRef<double> vol_geom,
                                int64_t depth, int64_t height, int64_t width);
#endif
// The checks both twins share.
inline void check_fdk_inputs(const at::Tensor& images, const at::Tensor& table, int64_t depth, int64_t height,
                             int64_t width) {
  TORCH_CHECK(images.dim() == 4, "unrolled3d: fdk_backproject images must be 4-D (N, V, rows, cols), got ",
              images.dim(), "-D");
  TORCH_CHECK(images.scalar_type() == at::kFloat || images.scalar_type() == at::kDouble,
              "unrolled3d: fdk_backproject images must be float32 or float64, got ", images.scalar_type());
  TORCH_CHECK(table.dim() == 2 && table.size(0) == images.size(1) && table.size(1) == kFdkColumns,
              "unrolled3d: fdk_backproject table must have shape (V, 18) with V = ", images.size(1), ", got ",
              table.sizes());
  TORCH_CHECK(table.scalar_type() == images.scalar_type() && table.device() == images.device(),
              "unrolled3d: fdk_backproject table must have the images' dtype and device");
  TORCH_CHECK(depth > 0 && height > 0 && width > 0, "unrolled3d: volume shape must be positive");
  check_extents(depth, height, width, images.size(2), images.size(3));
  TORCH_CHECK(images.size(2) * images.size(3) < (int64_t(1) << 31), "unrolled3d: fdk_backproject needs rows * cols < 2^31");
}
}  // namespace unrolled3d
