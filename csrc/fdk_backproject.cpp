// CPU twin of FDK's weighted backprojection (fdk_backproject.h): each (item, slice block, y)
// row of columns is one OpenMP task, each column walks its slices, the views summed in order.
#include "fdk_backproject.h"

#include <omp.h>

#include <vector>

namespace unrolled3d {
namespace {

template <typename T>
void fdk_cpu_kernel(const T* images, const T* table, T* out, int64_t N, int64_t V, int32_t rows, int32_t cols,
                    int32_t D, int32_t H, int32_t W, const VolumeGeom& g) {
  std::vector<FdkView<T>> views(V);
  for (int64_t v = 0; v < V; ++v) views[v] = make_fdk_view(table + kFdkColumns * v);
  const int64_t P = static_cast<int64_t>(rows) * cols;
  const int32_t nzb = (D + kFdkZ - 1) / kFdkZ;
  const int64_t tasks = N * nzb * H;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < tasks; ++task) {
    const int32_t y = static_cast<int32_t>(task % H);
    const int32_t z0 = static_cast<int32_t>((task / H) % nzb) * kFdkZ;
    const int64_t n = task / (static_cast<int64_t>(H) * nzb);
    const int32_t nz = min_(kFdkZ, D - z0);
    const T Y = voxel_centre<T>(y, H, g.g[1], g.g[4]);
    T Z[kFdkZ];
    for (int32_t j = 0; j < nz; ++j) Z[j] = voxel_centre<T>(z0 + j, D, g.g[0], g.g[3]);
    for (int32_t x = 0; x < W; ++x) {
      const T X = voxel_centre<T>(x, W, g.g[2], g.g[5]);
      T acc[kFdkZ] = {};
      for (int64_t v = 0; v < V; ++v) {
        const T* img = images + (n * V + v) * P;
        const FdkColumn<T> col = fdk_column(views[v], X, Y);
        auto pixel = [&](int32_t r, int32_t c) { return img[r * cols + c]; };
        for (int32_t j = 0; j < nz; ++j) acc[j] += fdk_sample(views[v], col, Z[j], rows, cols, pixel);
      }
      for (int32_t j = 0; j < nz; ++j) out[((n * D + z0 + j) * H + y) * W + x] = acc[j];
    }
  }
}

}  // namespace

at::Tensor fdk_backproject_cpu(const at::Tensor& images, const at::Tensor& table, at::ArrayRef<double> vol_geom,
                               int64_t depth, int64_t height, int64_t width) {
  check_fdk_inputs(images, table, depth, height, width);
  TORCH_CHECK(images.device().is_cpu(), "unrolled3d: fdk_backproject_cpu got a non-CPU tensor");
  const VolumeGeom geom = check_vol_geom(vol_geom);
  const at::Tensor im = images.contiguous(), tb = table.contiguous();
  const int64_t N = im.size(0), V = im.size(1);
  at::Tensor out = at::empty({N, depth, height, width}, im.options());  // every voxel is written
  if (out.numel() == 0) return out;
  if (V == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(im.scalar_type(), "fdk_backproject_cpu", [&] {
    fdk_cpu_kernel<scalar_t>(im.data_ptr<scalar_t>(), tb.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, V,
                             static_cast<int32_t>(im.size(2)), static_cast<int32_t>(im.size(3)),
                             static_cast<int32_t>(depth), static_cast<int32_t>(height), static_cast<int32_t>(width),
                             geom);
  });
  return out;
}

}  // namespace unrolled3d
