// CUDA twin of the cone-beam Joseph projector pair. See cone_beam.h for conventions.
// Forward: a block is a 16 x 16 tile of one view's pixels (a compact bundle of rays, whose voxels
// at each plane overlap in L1), one thread per ray, looping over the batch items with the ray set
// up once; indices 32-bit when the volume has fewer than 2^31 voxels.
// Backprojection, three algorithms with the forward's very (voxel, weight) pairs (every kernel
// starts from the same per-view frame, make_view_frame, and the same make_ray / joseph_line
// arithmetic), so each is its transpose up to floating-point summation order:
//   "scatter" one thread per ray scatters its weights with atomicAdd (order-dependent rounding);
//   "gather"  one thread per voxel sums the pixels of its footprint window, view chunk by view
//             chunk: a kernel builds the chunk's per-pixel JosephLine tables (O(chunk * R * U)
//             memory), then each thread reads them for the pixels its window holds and adds its sum
//             to its own voxel. No atomics: deterministic;
//   "column"  column_backproject_cuda.cu: one thread per (x, y) column walking z, the view's lines
//             in shared memory, each voxel written once.
#include "cone_beam.h"
#include "view_consts_cuda.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

namespace unrolled3d {
namespace {

constexpr int kThreads = 256;
constexpr int kRayTX = 16, kRayTY = 16;  // forward: pixels per block

// float32 data use float geometry (fast on every GPU); float64 data use double geometry.
template <typename scalar_t>
struct GeomType { using type = float; };
template <>
struct GeomType<double> { using type = double; };

// grid (ceil(U / 16), ceil(R / 16), min(V, 65535)); views beyond gridDim.z loop. Compiled for at
// least 2 blocks per multiprocessor (at most 128 registers): without it ptxas held the float64
// 32-bit-index kernel to 64 registers and spilled (sm_90, ptxas -v).
template <typename scalar_t, typename geom_t, typename I>
__global__ void __launch_bounds__(kRayTX * kRayTY, 2) project_kernel(
    const scalar_t* __restrict__ vol, scalar_t* __restrict__ sino, const ViewConsts<geom_t>* __restrict__ consts,
    int64_t N, int32_t V, int32_t R, int32_t U, VolumeIndexSpace<geom_t> vs) {
  const int32_t c = blockIdx.x * kRayTX + threadIdx.x, r = blockIdx.y * kRayTY + threadIdx.y;
  if (c >= U || r >= R) return;
  const int64_t det_numel = static_cast<int64_t>(V) * R * U;
  const int64_t vol_numel = vs.n[0] * vs.n[1] * vs.n[2];
  for (int32_t v = blockIdx.z; v < V; v += gridDim.z) {
    const ViewFrame<geom_t> frame = consts[v].frame;  // the same address in every thread: one broadcast load
    const JosephLine<geom_t> L = joseph_line(make_ray(frame, r, c, vs), vs);
    const int64_t out = (static_cast<int64_t>(v) * R + r) * U + c;
    for (int64_t n = 0; n < N; ++n) {
      const scalar_t* vol_n = vol + n * vol_numel;
      geom_t acc = 0;
      joseph_traverse<I>(L, vs, [&](I idx, geom_t w) { acc += w * static_cast<geom_t>(__ldg(vol_n + idx)); });
      sino[n * det_numel + out] = static_cast<scalar_t>(acc);
    }
  }
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

// ----------------------------------------------------------------------------- gather
// Projection coefficients of every view (ViewProjection: den, col, row, 4 each) and a 13th value,
// 1 when the projection exists, computed in double and rounded to geom_t. One thread per view.
template <typename geom_t>
__global__ void view_projection_kernel(const double* __restrict__ views, int64_t V, int64_t R, int64_t U,
                                       VolumeIndexSpace<double> vs, geom_t* __restrict__ out) {
  const int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= V) return;
  ViewProjection<geom_t> P;
  const bool ok = make_view_projection(views + 12 * v, R, U, vs, &P);
  geom_t* o = out + 13 * v;
  for (int i = 0; i < 4; ++i) {
    o[i] = P.den_c[i];
    o[4 + i] = P.col_c[i];
    o[8 + i] = P.row_c[i];
  }
  o[12] = ok ? geom_t(1) : geom_t(0);
}

// The JosephLine of every pixel of views v0 .. v0 + nv - 1 (the forward's joseph_line of the
// forward's make_ray: the same numbers), and per view the driving axes present (bit a of axes[v]).
template <typename geom_t>
__global__ void build_lines_kernel(const double* __restrict__ views, int64_t v0, int64_t nv, int64_t R, int64_t U,
                                   VolumeIndexSpace<geom_t> vs, JosephLine<geom_t>* __restrict__ lines,
                                   int* __restrict__ axes) {
  const int64_t P = R * U;
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= nv * P) return;
  const int64_t v = id / P, p = id % P;
  const JosephLine<geom_t> L = joseph_line(make_ray<geom_t>(views + 12 * (v0 + v), p / U, p % U, R, U, vs), vs);
  lines[id] = L;
  if (L.a >= 0) {
    const int bit = 1 << L.a;
    if ((*(volatile int*)(axes + v) & bit) == 0) atomicOr(axes + v, bit);  // rarely more than 3 atomics per view
  }
}

constexpr int kGatherItems = 4;  // batch items one thread accumulates at once (weights computed once)
constexpr int kMaxChunk = 64;    // views per gather launch (their footprint bounds live in shared memory)

// One thread per voxel (x fastest: coalesced volume access) and per group of kGatherItems batch
// items; blockIdx.z = z + D * group. Each thread sums, over the chunk's views, the pixels of its
// footprint window, and adds the sums to its own voxels: no other thread writes them.
template <typename scalar_t, typename geom_t>
__global__ void gather_kernel(const scalar_t* __restrict__ sino, scalar_t* __restrict__ vol,
                              const JosephLine<geom_t>* __restrict__ lines, const geom_t* __restrict__ proj,
                              const int* __restrict__ axes, int64_t v0, int64_t nv, int64_t N, int64_t V, int64_t R,
                              int64_t U, int64_t D, int64_t H, int64_t W) {
  __shared__ FootprintBound<geom_t> bounds[kMaxChunk];
  const int tid = threadIdx.x + blockDim.x * threadIdx.y;
  for (int64_t i = tid; i < nv; i += blockDim.x * blockDim.y) {
    const geom_t* o = proj + 13 * (v0 + i);
    ViewProjection<geom_t> P;
    for (int j = 0; j < 4; ++j) {
      P.den_c[j] = o[j];
      P.col_c[j] = o[4 + j];
      P.row_c[j] = o[8 + j];
    }
    bounds[i] = make_footprint_bound(P, o[12] != geom_t(0), axes[i]);
  }
  __syncthreads();
  const int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t y = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y;
  const int64_t z = blockIdx.z % D, n0 = (blockIdx.z / D) * kGatherItems;
  if (x >= W || y >= H) return;
  const int items = static_cast<int>(N - n0 < kGatherItems ? N - n0 : kGatherItems);
  const int64_t P = R * U, det_numel = V * P, vol_numel = D * H * W;
  const int32_t xi = static_cast<int32_t>(x), yi = static_cast<int32_t>(y), zi = static_cast<int32_t>(z);
  geom_t acc[kGatherItems];  // fully unrolled loops below keep it in registers
#pragma unroll
  for (int j = 0; j < kGatherItems; ++j) acc[j] = geom_t(0);
  for (int64_t i = 0; i < nv; ++i) {
    int64_t r0, r1, c0, c1;
    footprint_window(bounds[i], static_cast<geom_t>(x), static_cast<geom_t>(y), static_cast<geom_t>(z), R, U, r0, r1,
                     c0, c1);
    const JosephLine<geom_t>* Li = lines + i * P;
    const scalar_t* si = sino + n0 * det_numel + (v0 + i) * P;
    for (int r = static_cast<int>(r0); r <= static_cast<int>(r1); ++r)
      for (int c = static_cast<int>(c0); c <= static_cast<int>(c1); ++c) {
        const int64_t p = static_cast<int64_t>(r) * U + c;
        const geom_t w = joseph_weight(Li[p], xi, yi, zi);
        if (w == geom_t(0)) continue;
#pragma unroll
        for (int j = 0; j < kGatherItems; ++j)
          if (j < items) acc[j] += w * static_cast<geom_t>(__ldg(si + j * det_numel + p));
      }
  }
  const int64_t out = (z * H + y) * W + x;
#pragma unroll
  for (int j = 0; j < kGatherItems; ++j)
    if (j < items) vol[(n0 + j) * vol_numel + out] += static_cast<scalar_t>(acc[j]);
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
  check_extents(D, H, W, rows, cols);
  at::Tensor sino = at::empty({B, C, V, rows, cols}, vol.options());
  if (sino.numel() == 0) return sino;
  TORCH_CHECK(V < (int64_t(1) << 31), "unrolled3d: at most 2^31 - 1 views per CUDA call");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(vol.scalar_type(), "cone_project_cuda", [&] {
    using geom_t = typename GeomType<scalar_t>::type;
    const auto vs = make_index_space<geom_t>(D, H, W, geom);
    const at::Tensor consts = view_consts_cuda<geom_t>(vw, rows, cols, geom, D, H, W, stream);
    const auto* cp = reinterpret_cast<const ViewConsts<geom_t>*>(consts.data_ptr<uint8_t>());
    const dim3 block(kRayTX, kRayTY, 1);
    const dim3 grid(static_cast<unsigned>((cols + kRayTX - 1) / kRayTX), static_cast<unsigned>((rows + kRayTY - 1) / kRayTY),
                    static_cast<unsigned>(std::min<int64_t>(V, 65535)));
    const auto args = [&](auto kernel) {
      kernel<<<grid, block, 0, stream>>>(vol.data_ptr<scalar_t>(), sino.data_ptr<scalar_t>(), cp, B * C,
                                         static_cast<int32_t>(V), static_cast<int32_t>(rows), static_cast<int32_t>(cols), vs);
    };
    // 32-bit voxel indices when the volume allows (its largest index is D*H*W - 1)
    if (D * H * W < (int64_t(1) << 31)) args(project_kernel<scalar_t, geom_t, int32_t>);
    else args(project_kernel<scalar_t, geom_t, int64_t>);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return sino;
}

at::Tensor cone_backproject_algo_cuda(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                      int64_t depth, int64_t height, int64_t width, c10::string_view algorithm) {
  BackprojectAlgorithm algo = parse_backproject_algorithm(algorithm, /*cuda=*/true);
  // The default stays the measured one until the gather kernel is measured faster on a GPU.
  if (algo == BackprojectAlgorithm::kAuto) algo = BackprojectAlgorithm::kScatter;
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
  check_extents(depth, height, width, R, U);
  if (algo == BackprojectAlgorithm::kColumn && s.numel() > 0) {  // writes every voxel once: no zero fill
    at::Tensor vol = at::empty({B, C, depth, height, width}, s.options());
    column_backproject_cuda(s, vol, vw, geom);
    return vol;
  }
  at::Tensor vol = at::zeros({B, C, depth, height, width}, s.options());
  const int64_t det_numel = V * R * U;
  if (s.numel() == 0) return vol;
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (algo == BackprojectAlgorithm::kScatter) {
    AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "cone_backproject_cuda", [&] {
      using geom_t = typename GeomType<scalar_t>::type;
      const auto vs = make_index_space<geom_t>(depth, height, width, geom);
      backproject_kernel<scalar_t, geom_t><<<grid_for(det_numel, B * C), kThreads, 0, stream>>>(
          s.data_ptr<scalar_t>(), vol.data_ptr<scalar_t>(), vw.data_ptr<double>(), V, R, U, vs);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return vol;
  }
  // "gather"
  const int64_t N = B * C, P = R * U;
  const int64_t groups = (N + kGatherItems - 1) / kGatherItems;
  TORCH_CHECK(depth * groups <= 65535, "unrolled3d: gather backprojection handles depth * ceil(B*C / ",
              kGatherItems, ") <= 65535, got depth ", depth, " and B*C ", N);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "cone_backproject_cuda_gather", [&] {
    using geom_t = typename GeomType<scalar_t>::type;
    const auto vs = make_index_space<geom_t>(depth, height, width, geom);
    const auto vs_d = make_index_space<double>(depth, height, width, geom);
    const auto gopt = s.options().dtype(sizeof(geom_t) == 4 ? at::kFloat : at::kDouble);
    at::Tensor proj = at::empty({V, 13}, gopt);
    view_projection_kernel<geom_t><<<static_cast<unsigned>((V + 127) / 128), 128, 0, stream>>>(
        vw.data_ptr<double>(), V, R, U, vs_d, proj.data_ptr<geom_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // Views per chunk: the chunk's tables stay under ~256 MB (O(R * U) memory), at most kMaxChunk.
    const int64_t line_bytes = static_cast<int64_t>(sizeof(JosephLine<geom_t>));
    int64_t chunk = (int64_t(256) << 20) / std::max<int64_t>(1, P * line_bytes);
    chunk = std::max<int64_t>(1, std::min<int64_t>({chunk, static_cast<int64_t>(kMaxChunk), V}));
    at::Tensor lines = at::empty({chunk * P * line_bytes}, s.options().dtype(at::kByte));
    at::Tensor axes = at::empty({chunk}, s.options().dtype(at::kInt));
    auto* L = reinterpret_cast<JosephLine<geom_t>*>(lines.data_ptr<uint8_t>());
    const dim3 block(32, 4, 1);
    const dim3 grid(static_cast<unsigned>((width + 31) / 32), static_cast<unsigned>((height + 3) / 4),
                    static_cast<unsigned>(depth * groups));
    for (int64_t v0 = 0; v0 < V; v0 += chunk) {
      const int64_t nv = std::min(chunk, V - v0);
      axes.zero_();
      build_lines_kernel<geom_t><<<static_cast<unsigned>((nv * P + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          vw.data_ptr<double>(), v0, nv, R, U, vs, L, axes.data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      gather_kernel<scalar_t, geom_t><<<grid, block, 0, stream>>>(s.data_ptr<scalar_t>(), vol.data_ptr<scalar_t>(), L,
                                                                 proj.data_ptr<geom_t>(), axes.data_ptr<int>(), v0, nv,
                                                                 N, V, R, U, depth, height, width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return vol;
}

at::Tensor cone_backproject_cuda(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                 int64_t depth, int64_t height, int64_t width) {
  return cone_backproject_algo_cuda(sino, views, vol_geom, depth, height, width, "auto");
}

}  // namespace unrolled3d
