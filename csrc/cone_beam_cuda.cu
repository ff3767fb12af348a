// CUDA twin of the cone-beam Joseph projector pair. See cone_beam.h for conventions.
// One thread per ray (view, row, col), one grid row (blockIdx.y) per batch item. The forward
// projector gathers; the backprojector scatters the very same weights with atomicAdd, so it is
// the exact transpose of the forward (up to floating-point summation order).
#include "cone_beam.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace unrolled3d {
namespace {

constexpr int kThreads = 256;

// float32 data use float geometry (fast on every GPU); float64 data use double geometry.
template <typename scalar_t>
struct GeomType { using type = float; };
template <>
struct GeomType<double> { using type = double; };

template <typename scalar_t, typename geom_t>
__global__ void project_kernel(const scalar_t* __restrict__ vol, scalar_t* __restrict__ sino,
                               const double* __restrict__ views, int64_t V, int64_t R, int64_t U,
                               VolumeIndexSpace<geom_t> vs) {
  const int64_t ray_id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t det_numel = V * R * U;
  if (ray_id >= det_numel) return;
  const int64_t n = blockIdx.y;
  const int64_t c = ray_id % U;
  const int64_t r = (ray_id / U) % R;
  const int64_t v = ray_id / (U * R);
  const IndexRay<geom_t> ray = make_ray<geom_t>(views + 12 * v, r, c, R, U, vs);
  const scalar_t* vol_n = vol + n * vs.n[0] * vs.n[1] * vs.n[2];
  geom_t acc = 0;
  joseph_traverse(ray, vs, [&](int64_t idx, geom_t w) { acc += w * static_cast<geom_t>(__ldg(vol_n + idx)); });
  sino[n * det_numel + ray_id] = static_cast<scalar_t>(acc);
}

template <typename scalar_t, typename geom_t>
__global__ void backproject_kernel(const scalar_t* __restrict__ sino, scalar_t* __restrict__ vol,
                                   const double* __restrict__ views, int64_t V, int64_t R, int64_t U,
                                   VolumeIndexSpace<geom_t> vs) {
  const int64_t ray_id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t det_numel = V * R * U;
  if (ray_id >= det_numel) return;
  const int64_t n = blockIdx.y;
  const geom_t val = static_cast<geom_t>(sino[n * det_numel + ray_id]);
  if (val == geom_t(0)) return;  // nothing to scatter (common outside the object's shadow)
  const int64_t c = ray_id % U;
  const int64_t r = (ray_id / U) % R;
  const int64_t v = ray_id / (U * R);
  const IndexRay<geom_t> ray = make_ray<geom_t>(views + 12 * v, r, c, R, U, vs);
  scalar_t* vol_n = vol + n * vs.n[0] * vs.n[1] * vs.n[2];
  joseph_traverse(ray, vs, [&](int64_t idx, geom_t w) { atomicAdd(vol_n + idx, static_cast<scalar_t>(w * val)); });
}

dim3 grid_for(int64_t det_numel, int64_t N) {
  TORCH_CHECK(N <= 65535, "unrolled3d: at most 65535 batch*channel items per CUDA call, got ", N);
  return dim3(static_cast<unsigned>((det_numel + kThreads - 1) / kThreads), static_cast<unsigned>(N));
}

}  // namespace

at::Tensor cone_project_cuda(const at::Tensor& volume, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                             int64_t rows, int64_t cols) {
  check_views(views, volume);
  TORCH_CHECK(volume.is_cuda(), "unrolled3d: cone_project_cuda got a non-CUDA tensor");
  TORCH_CHECK(rows > 0 && cols > 0, "unrolled3d: detector rows and cols must be positive");
  const VolumeGeom geom = check_vol_geom(vol_geom);
  const c10::cuda::CUDAGuard guard(volume.device());
  const at::Tensor vol = volume.contiguous();
  const at::Tensor vw = views.contiguous();
  const int64_t B = vol.size(0), C = vol.size(1), D = vol.size(2), H = vol.size(3), W = vol.size(4);
  const int64_t V = vw.size(0);
  at::Tensor sino = at::empty({B, C, V, rows, cols}, vol.options());
  const int64_t det_numel = V * rows * cols;
  if (sino.numel() == 0) return sino;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(vol.scalar_type(), "cone_project_cuda", [&] {
    using geom_t = typename GeomType<scalar_t>::type;
    const auto vs = make_index_space<geom_t>(D, H, W, geom);
    project_kernel<scalar_t, geom_t><<<grid_for(det_numel, B * C), kThreads, 0, stream>>>(
        vol.data_ptr<scalar_t>(), sino.data_ptr<scalar_t>(), vw.data_ptr<double>(), V, rows, cols, vs);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return sino;
}

at::Tensor cone_backproject_cuda(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                 int64_t depth, int64_t height, int64_t width) {
  check_views(views, sino);
  TORCH_CHECK(sino.is_cuda(), "unrolled3d: cone_backproject_cuda got a non-CUDA tensor");
  TORCH_CHECK(depth > 0 && height > 0 && width > 0, "unrolled3d: volume shape must be positive");
  const VolumeGeom geom = check_vol_geom(vol_geom);
  const c10::cuda::CUDAGuard guard(sino.device());
  const at::Tensor s = sino.contiguous();
  const at::Tensor vw = views.contiguous();
  TORCH_CHECK(s.size(2) == vw.size(0), "unrolled3d: sinogram has ", s.size(2), " views, geometry has ",
              vw.size(0));
  const int64_t B = s.size(0), C = s.size(1), V = s.size(2), R = s.size(3), U = s.size(4);
  at::Tensor vol = at::zeros({B, C, depth, height, width}, s.options());
  const int64_t det_numel = V * R * U;
  if (s.numel() == 0) return vol;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "cone_backproject_cuda", [&] {
    using geom_t = typename GeomType<scalar_t>::type;
    const auto vs = make_index_space<geom_t>(depth, height, width, geom);
    backproject_kernel<scalar_t, geom_t><<<grid_for(det_numel, B * C), kThreads, 0, stream>>>(
        s.data_ptr<scalar_t>(), vol.data_ptr<scalar_t>(), vw.data_ptr<double>(), V, R, U, vs);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return vol;
}

}  // namespace unrolled3d
