// CPU twin of the CUDA "column" backprojector (column_backproject.h): the same blocks, windows,
// chunks and per-thread gathers, run block by block (one OpenMP thread per block at a time), the
// CUDA block's threads visited in turn. It is what CI checks against the scatter reference; on a
// CPU the "tile" splat remains the fast algorithm.
#include "column_backproject.h"

#include <omp.h>

#include <algorithm>
#include <vector>

namespace unrolled3d {
namespace {

// Geometry in double on the CPU, as every CPU algorithm: the lines are bit-identical to the
// forward projector's (same make_ray / joseph_line_core arithmetic).
using geom_t = double;

template <typename scalar_t>
void column_cpu_kernel(const scalar_t* sino, scalar_t* vol, const double* views, int64_t N, int64_t V, int64_t R,
                       int64_t U, const VolumeIndexSpace<geom_t>& vs) {
  using Cfg = ColumnConfig<scalar_t>;
  const int32_t W = static_cast<int32_t>(vs.n[0]), H = static_cast<int32_t>(vs.n[1]), D = static_cast<int32_t>(vs.n[2]);
  const int32_t rows = static_cast<int32_t>(R), cols = static_cast<int32_t>(U);
  std::vector<ViewFrame<geom_t>> frames(V);
  std::vector<ViewProjection<geom_t>> projs(V);
  std::vector<char> ok(V);
  for (int64_t v = 0; v < V; ++v) {
    frames[v] = make_view_frame<geom_t>(views + 12 * v, R, U, vs);
    ok[v] = make_view_projection(views + 12 * v, R, U, vs, &projs[v]);
  }
  const int64_t nbx = (W + kColumnTX - 1) / kColumnTX, nby = (H + kColumnTY - 1) / kColumnTY;
  const int64_t nbz = (D + Cfg::kZ - 1) / Cfg::kZ;
  const int64_t blocks = N * nbz * nby * nbx;
  const int64_t vol_numel = static_cast<int64_t>(W) * H * D, det_numel = V * R * U;
#pragma omp parallel
  {
    std::vector<ColumnQ<geom_t>> q(Cfg::kCap);
    std::vector<ColumnW<geom_t>> w(Cfg::kCap);
    std::vector<geom_t> acc(static_cast<size_t>(Cfg::kZ) * kColumnThreads);
    std::vector<DetWindow> tw(kColumnThreads);
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks; ++b) {
      // the CUDA grid: x tiles fastest, then y tiles, then (item, slab) as blockIdx.z
      const int32_t bx0 = static_cast<int32_t>(b % nbx) * kColumnTX;
      const int32_t by0 = static_cast<int32_t>((b / nbx) % nby) * kColumnTY;
      const int64_t bz = b / (nbx * nby);
      const int32_t z0 = static_cast<int32_t>(bz % nbz) * Cfg::kZ;
      const int64_t n = bz / nbz;
      const int32_t nz = min_(Cfg::kZ, D - z0), ntx = min_(kColumnTX, W - bx0), nty = min_(kColumnTY, H - by0);
      std::fill(acc.begin(), acc.end(), geom_t(0));
      for (int64_t v = 0; v < V; ++v) {
        const DetWindow bw = column_block_window(projs[v], ok[v] != 0, bx0, ntx, by0, nty, z0, nz, rows, cols);
        if (window_empty(bw)) continue;
        for (int32_t t = 0; t < kColumnThreads; ++t) {
          const int32_t tx = t % kColumnTX, ty = t / kColumnTX;
          tw[t] = tx < ntx && ty < nty
                      ? column_thread_window(projs[v], ok[v] != 0, bx0 + tx, by0 + ty, z0, nz, rows, cols)
                      : DetWindow{0, -1, 0, -1};
        }
        const scalar_t* sv = sino + n * det_numel + v * R * U;
        const ColumnChunks ch = column_chunks(bw, Cfg::kCap);
        for (int32_t cr = bw.r0; cr <= bw.r1; cr += ch.rows_per) {
          const int32_t nr = min_(ch.rows_per, bw.r1 - cr + 1);
          for (int32_t cc = bw.c0; cc <= bw.c1; cc += ch.cols_per) {
            const int32_t ncc = min_(ch.cols_per, bw.c1 - cc + 1);
            for (int32_t i = 0; i < nr * ncc; ++i)
              column_fill(frames[v], vs, sv, cols, cr + i / ncc, cc + i % ncc, &q[i], &w[i]);
            for (int32_t t = 0; t < kColumnThreads; ++t) {
              if (window_empty(tw[t])) continue;
              geom_t* a = acc.data() + t;
              column_gather(q.data(), w.data(), cr, cc, nr, ncc, tw[t], bx0 + t % kColumnTX, by0 + t / kColumnTX, z0, nz,
                            [&](int32_t j, geom_t value) { a[j * kColumnThreads] += value; });
            }
          }
        }
      }
      scalar_t* out = vol + n * vol_numel;
      for (int32_t t = 0; t < kColumnThreads; ++t) {
        const int32_t tx = t % kColumnTX, ty = t / kColumnTX;
        if (tx >= ntx || ty >= nty) continue;
        for (int32_t j = 0; j < nz; ++j)
          out[(static_cast<int64_t>(z0 + j) * H + by0 + ty) * W + bx0 + tx] =
              static_cast<scalar_t>(acc[j * kColumnThreads + t]);
      }
    }
  }
}

}  // namespace

void column_backproject_cpu(const at::Tensor& sino, at::Tensor& vol, const at::Tensor& views,
                            const VolumeIndexSpace<double>& vs) {
  const int64_t B = sino.size(0), C = sino.size(1), V = sino.size(2), R = sino.size(3), U = sino.size(4);
  TORCH_CHECK(R * U < (int64_t(1) << 31), "unrolled3d: the column backprojector needs rows * cols < 2^31");
  AT_DISPATCH_FLOATING_TYPES(sino.scalar_type(), "column_backproject_cpu", [&] {
    column_cpu_kernel<scalar_t>(sino.data_ptr<scalar_t>(), vol.data_ptr<scalar_t>(), views.data_ptr<double>(), B * C,
                                V, R, U, vs);
  });
}

}  // namespace unrolled3d
