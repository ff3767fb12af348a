// CUDA FDK weighted backprojection (fdk_backproject.h): a block is 16 x 16 columns and kFdkZ
// slices of one item; the views' constants go through shared memory kFdkViews at a time, the
// kFdkZ accumulators stay in registers and each voxel is written once.
#include "fdk_backproject.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace unrolled3d {
namespace {

constexpr int kFdkTX = 16, kFdkTY = 16;

template <typename T>
__global__ void __launch_bounds__(kFdkTX * kFdkTY) fdk_kernel(const T* __restrict__ images, const T* __restrict__ table,
                                                              T* __restrict__ out, int32_t V, int32_t rows, int32_t cols,
                                                              int32_t D, int32_t H, int32_t W, int32_t zblocks,
                                                              VolumeGeom g) {
  __shared__ FdkView<T> s_views[kFdkViews];
  const int32_t tid = threadIdx.x + kFdkTX * threadIdx.y;
  const int32_t x = blockIdx.x * kFdkTX + threadIdx.x, y = blockIdx.y * kFdkTY + threadIdx.y;
  const int32_t z0 = static_cast<int32_t>(blockIdx.z % zblocks) * kFdkZ;
  const int64_t n = blockIdx.z / zblocks;
  const int32_t nz = min(kFdkZ, D - z0);
  const bool active = x < W && y < H;
  const T X = voxel_centre<T>(x, W, g.g[2], g.g[5]), Y = voxel_centre<T>(y, H, g.g[1], g.g[4]);
  T Z[kFdkZ], acc[kFdkZ];
#pragma unroll
  for (int j = 0; j < kFdkZ; ++j) {
    Z[j] = voxel_centre<T>(z0 + j, D, g.g[0], g.g[3]);
    acc[j] = T(0);
  }
  const int64_t P = static_cast<int64_t>(rows) * cols;
  for (int32_t v0 = 0; v0 < V; v0 += kFdkViews) {
    const int32_t nv = min(kFdkViews, V - v0);
    __syncthreads();  // the previous chunk's constants are no longer read
    for (int32_t i = tid; i < nv; i += kFdkTX * kFdkTY) s_views[i] = make_fdk_view(table + kFdkColumns * (v0 + i));
    __syncthreads();
    if (!active) continue;
    for (int32_t i = 0; i < nv; ++i) {
      const FdkView<T>& f = s_views[i];
      const T* img = images + (n * V + v0 + i) * P;
      const FdkColumn<T> col = fdk_column(f, X, Y);
      auto pixel = [&](int32_t r, int32_t c) { return __ldg(img + r * cols + c); };
#pragma unroll
      for (int j = 0; j < kFdkZ; ++j)
        if (j < nz) acc[j] += fdk_sample(f, col, Z[j], rows, cols, pixel);
    }
  }
  if (!active) return;
#pragma unroll
  for (int j = 0; j < kFdkZ; ++j)
    if (j < nz) out[((n * D + z0 + j) * H + y) * W + x] = acc[j];
}

}  // namespace

at::Tensor fdk_backproject_cuda(const at::Tensor& images, const at::Tensor& table, at::ArrayRef<double> vol_geom,
                                int64_t depth, int64_t height, int64_t width) {
  check_fdk_inputs(images, table, depth, height, width);
  TORCH_CHECK(images.is_cuda(), "unrolled3d: fdk_backproject_cuda got a non-CUDA tensor");
  const VolumeGeom geom = check_vol_geom(vol_geom);
  const c10::cuda::CUDAGuard guard(images.device());
  const at::Tensor im = images.contiguous(), tb = table.contiguous();
  const int64_t N = im.size(0), V = im.size(1);
  at::Tensor out = at::empty({N, depth, height, width}, im.options());  // every voxel is written
  if (out.numel() == 0) return out;
  if (V == 0) return out.zero_();
  const int64_t zblocks = (depth + kFdkZ - 1) / kFdkZ;
  TORCH_CHECK(zblocks * N <= 65535, "unrolled3d: fdk_backproject handles ceil(depth / ", kFdkZ,
              ") * N <= 65535, got depth ", depth, " and N ", N);
  TORCH_CHECK(V < (int64_t(1) << 31), "unrolled3d: fdk_backproject needs fewer than 2^31 views");
  auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 block(kFdkTX, kFdkTY, 1);
  const dim3 grid(static_cast<unsigned>((width + kFdkTX - 1) / kFdkTX),
                  static_cast<unsigned>((height + kFdkTY - 1) / kFdkTY), static_cast<unsigned>(zblocks * N));
  AT_DISPATCH_FLOATING_TYPES(im.scalar_type(), "fdk_backproject_cuda", [&] {
    fdk_kernel<scalar_t><<<grid, block, 0, stream>>>(
        im.data_ptr<scalar_t>(), tb.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), static_cast<int32_t>(V),
        static_cast<int32_t>(im.size(2)), static_cast<int32_t>(im.size(3)), static_cast<int32_t>(depth),
        static_cast<int32_t>(height), static_cast<int32_t>(width), static_cast<int32_t>(zblocks), geom);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace unrolled3d
