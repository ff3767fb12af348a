// Per-view constants of the CUDA kernels, built once per call on the device: the frame every
// kernel's make_ray starts from (so the forward projector and its transposes share its numbers to
// the bit) and the central projection the windows are taken from. Included by the .cu files only.
#pragma once

#include "cone_beam.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

namespace unrolled3d {

template <typename T>
struct ViewConsts {
  ViewFrame<T> frame;
  ViewProjection<T> proj;  // in double, rounded to T (make_view_projection)
  int32_t ok;              // 1 when the projection exists
};

template <typename T>
__global__ void view_consts_kernel(const double* __restrict__ views, int64_t V, int64_t R, int64_t U,
                                   VolumeIndexSpace<T> vs, VolumeIndexSpace<double> vs_d, ViewConsts<T>* __restrict__ out) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= V) return;
  ViewConsts<T> c;
  c.frame = make_view_frame<T>(views + 12 * v, R, U, vs);
  c.ok = make_view_projection(views + 12 * v, R, U, vs_d, &c.proj) ? 1 : 0;
  out[v] = c;
}

// The constants of every view of `views` (V, 12) float64 on the current CUDA device, in a byte
// tensor that holds V ViewConsts<T> (kept alive by the caller while kernels read it).
template <typename T>
at::Tensor view_consts_cuda(const at::Tensor& views, int64_t R, int64_t U, const VolumeGeom& geom, int64_t D, int64_t H,
                            int64_t W, cudaStream_t stream) {
  const int64_t V = views.size(0);
  at::Tensor buf = at::empty({std::max<int64_t>(V, 1) * static_cast<int64_t>(sizeof(ViewConsts<T>))},
                             views.options().dtype(at::kByte));
  if (V == 0) return buf;
  view_consts_kernel<T><<<static_cast<unsigned>((V + 127) / 128), 128, 0, stream>>>(
      views.data_ptr<double>(), V, R, U, make_index_space<T>(D, H, W, geom), make_index_space<double>(D, H, W, geom),
      reinterpret_cast<ViewConsts<T>*>(buf.data_ptr<uint8_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return buf;
}

}  // namespace unrolled3d
