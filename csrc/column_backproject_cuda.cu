// CUDA "column" backprojector (column_backproject.h has the algorithm; column_backproject.cpp
// runs the same blocks on the host and is what CI tests). One block: 16 x 16 columns (x fastest)
// and kZ slices of one batch item; it walks every view, so each voxel is written once, with its
// per-thread accumulators, the view's constants and the chunk of lines in shared memory:
//   per view: load the view's constants -> sync -> windows -> per chunk: fill lines -> sync ->
//   each thread gathers its column -> sync.
#include "column_backproject.h"
#include "view_consts_cuda.h"

#include <c10/cuda/CUDAGuard.h>

namespace unrolled3d {
namespace {

// float32 data use float arithmetic (as the forward projector), float64 data double.
template <typename scalar_t>
struct ColumnGeom { using type = float; };
template <>
struct ColumnGeom<double> { using type = double; };

template <typename scalar_t, typename T>
__global__ void __launch_bounds__(kColumnThreads, ColumnConfig<scalar_t>::kMinBlocks) column_kernel(
    const scalar_t* __restrict__ sino, scalar_t* __restrict__ vol, const ViewConsts<T>* __restrict__ consts, int32_t V,
    int32_t R, int32_t U, int32_t D, int32_t H, int32_t W, int32_t zblocks, VolumeIndexSpace<T> vs) {
  using Cfg = ColumnConfig<scalar_t>;
  __shared__ ColumnQ<T> s_q[Cfg::kCap];
  __shared__ ColumnW<T> s_w[Cfg::kCap];
  __shared__ T s_acc[Cfg::kZ * kColumnThreads];
  __shared__ ViewConsts<T> s_view;
  const int32_t tx = threadIdx.x, ty = threadIdx.y, tid = tx + kColumnTX * ty;
  const int32_t bx0 = blockIdx.x * kColumnTX, by0 = blockIdx.y * kColumnTY;
  const int32_t z0 = static_cast<int32_t>(blockIdx.z % zblocks) * Cfg::kZ;
  const int64_t n = blockIdx.z / zblocks;
  const int32_t nz = min(Cfg::kZ, D - z0), ntx = min(kColumnTX, W - bx0), nty = min(kColumnTY, H - by0);
  const int32_t x = bx0 + tx, y = by0 + ty;
  const bool active = tx < ntx && ty < nty;
#pragma unroll
  for (int j = 0; j < Cfg::kZ; ++j) s_acc[j * kColumnThreads + tid] = T(0);
  const int64_t P = static_cast<int64_t>(R) * U;
  const scalar_t* sino_n = sino + n * V * P;
  for (int32_t v = 0; v < V; ++v) {
    __syncthreads();  // every thread is done with the previous view's constants and lines
    if (tid == 0) s_view = consts[v];
    __syncthreads();
    const bool ok = s_view.ok != 0;
    const DetWindow bw = column_block_window(s_view.proj, ok, bx0, ntx, by0, nty, z0, nz, R, U);
    if (window_empty(bw)) continue;  // the same for every thread of the block
    const DetWindow tw = active ? column_thread_window(s_view.proj, ok, x, y, z0, nz, R, U) : DetWindow{0, -1, 0, -1};
    const scalar_t* sv = sino_n + v * P;
    const ColumnChunks ch = column_chunks(bw, Cfg::kCap);
    for (int32_t cr = bw.r0; cr <= bw.r1; cr += ch.rows_per) {
      const int32_t nr = min(ch.rows_per, bw.r1 - cr + 1);
      for (int32_t cc = bw.c0; cc <= bw.c1; cc += ch.cols_per) {
        const int32_t ncc = min(ch.cols_per, bw.c1 - cc + 1);
        for (int32_t i = tid; i < nr * ncc; i += kColumnThreads)
          column_fill(s_view.frame, vs, sv, U, cr + i / ncc, cc + i % ncc, s_q + i, s_w + i);
        __syncthreads();
        if (!window_empty(tw))
          column_gather(s_q, s_w, cr, cc, nr, ncc, tw, x, y, z0, nz,
                        [&](int32_t j, T value) { s_acc[j * kColumnThreads + tid] += value; });
        __syncthreads();
      }
    }
  }
  if (!active) return;
  scalar_t* out = vol + n * static_cast<int64_t>(D) * H * W;
  for (int32_t j = 0; j < nz; ++j)
    out[(static_cast<int64_t>(z0 + j) * H + y) * W + x] = static_cast<scalar_t>(s_acc[j * kColumnThreads + tid]);
}

}  // namespace

void column_backproject_cuda(const at::Tensor& sino, at::Tensor& vol, const at::Tensor& views, const VolumeGeom& geom) {
  const c10::cuda::CUDAGuard guard(sino.device());
  const int64_t B = sino.size(0), C = sino.size(1), V = sino.size(2), R = sino.size(3), U = sino.size(4);
  const int64_t D = vol.size(2), H = vol.size(3), W = vol.size(4), N = B * C;
  TORCH_CHECK(R * U < (int64_t(1) << 31), "unrolled3d: the column backprojector needs rows * cols < 2^31");
  TORCH_CHECK(V < (int64_t(1) << 31), "unrolled3d: the column backprojector needs fewer than 2^31 views");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sino.scalar_type(), "column_backproject_cuda", [&] {
    using T = typename ColumnGeom<scalar_t>::type;
    using Cfg = ColumnConfig<scalar_t>;
    const int64_t zblocks = (D + Cfg::kZ - 1) / Cfg::kZ;
    TORCH_CHECK(zblocks * N <= 65535, "unrolled3d: the column backprojector handles ceil(depth / ", Cfg::kZ,
                ") * B * C <= 65535, got depth ", D, " and B*C ", N);
    const at::Tensor consts = view_consts_cuda<T>(views, R, U, geom, D, H, W, stream);
    const dim3 block(kColumnTX, kColumnTY, 1);
    const dim3 grid(static_cast<unsigned>((W + kColumnTX - 1) / kColumnTX),
                    static_cast<unsigned>((H + kColumnTY - 1) / kColumnTY), static_cast<unsigned>(zblocks * N));
    column_kernel<scalar_t, T><<<grid, block, 0, stream>>>(
        sino.data_ptr<scalar_t>(), vol.data_ptr<scalar_t>(),
        reinterpret_cast<const ViewConsts<T>*>(consts.data_ptr<uint8_t>()), static_cast<int32_t>(V),
        static_cast<int32_t>(R), static_cast<int32_t>(U), static_cast<int32_t>(D), static_cast<int32_t>(H),
        static_cast<int32_t>(W), static_cast<int32_t>(zblocks), make_index_space<T>(D, H, W, geom));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace unrolled3d
