// CPU (OpenMP) twin of the cone-beam Joseph projector pair. See cone_beam.h for conventions.
#include "cone_beam.h"

#include <ATen/Parallel.h>
#include <omp.h>
#include <vector>

namespace unrolled3d {
namespace {

// Geometry is computed in double on the CPU whatever the data type: it costs little here and
// keeps the CPU twin the accurate reference for the float32 CUDA twin.
using geom_t = double;

template <typename scalar_t>
void project_kernel(const scalar_t* vol, scalar_t* sino, const double* views, int64_t N, int64_t V, int64_t R,
                    int64_t U, const VolumeIndexSpace<geom_t>& vs) {
  const int64_t vol_numel = vs.n[0] * vs.n[1] * vs.n[2];
  const int64_t det_numel = V * R * U;
#pragma omp parallel
  {
    std::vector<double> acc(N);
#pragma omp for collapse(2) schedule(dynamic, 4)
    for (int64_t v = 0; v < V; ++v) {
      for (int64_t r = 0; r < R; ++r) {
        for (int64_t c = 0; c < U; ++c) {
          const IndexRay<geom_t> ray = make_ray<geom_t>(views + 12 * v, r, c, R, U, vs);
          const int64_t out = (v * R + r) * U + c;
          if (N == 1) {  // the common case: one accumulator in a register
            double a = 0.0;
            joseph_traverse(ray, vs, [&](int64_t idx, geom_t w) { a += w * static_cast<double>(vol[idx]); });
            sino[out] = static_cast<scalar_t>(a);
            continue;
          }
          for (int64_t n = 0; n < N; ++n) acc[n] = 0.0;
          joseph_traverse(ray, vs, [&](int64_t idx, geom_t w) {
            for (int64_t n = 0; n < N; ++n) acc[n] += w * static_cast<double>(vol[n * vol_numel + idx]);
          });
          for (int64_t n = 0; n < N; ++n) sino[n * det_numel + out] = static_cast<scalar_t>(acc[n]);
        }
      }
    }
  }
}

// The index space of the z-slab [z0, z1) of `vs`: same voxels, same index coordinates shifted by
// an integer, so every ray visits the slab's voxels with the weights it has in the full volume.
inline VolumeIndexSpace<geom_t> z_slab(const VolumeIndexSpace<geom_t>& vs, int64_t z0, int64_t z1) {
  VolumeIndexSpace<geom_t> s = vs;
  s.n[2] = z1 - z0;
  s.origin_idx[2] = vs.origin_idx[2] - static_cast<geom_t>(z0);
  return s;
}

template <typename scalar_t>
void backproject_kernel(const scalar_t* sino, scalar_t* vol, const double* views, int64_t N, int64_t V, int64_t R,
                        int64_t U, const VolumeIndexSpace<geom_t>& vs) {
  const int64_t vol_numel = vs.n[0] * vs.n[1] * vs.n[2];
  const int64_t det_numel = V * R * U;
  const int64_t slab_numel = vs.n[0] * vs.n[1];
  // Each thread owns a z-slab of the volume and scatters every ray's contribution to it: no two
  // threads write the same voxel, so no atomics and a deterministic result. Each ray's traversal
  // is clipped to the slab, so the extra cost is one ray set-up per ray and thread.
#pragma omp parallel
  {
    const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t z0 = vs.n[2] * t / T, z1 = vs.n[2] * (t + 1) / T;
    if (z1 > z0) {
      const VolumeIndexSpace<geom_t> slab = z_slab(vs, z0, z1);
      for (int64_t v = 0; v < V; ++v) {
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t c = 0; c < U; ++c) {
            const IndexRay<geom_t> ray = make_ray<geom_t>(views + 12 * v, r, c, R, U, slab);
            const int64_t in = (v * R + r) * U + c;
            for (int64_t n = 0; n < N; ++n) {
              const geom_t val = static_cast<geom_t>(sino[n * det_numel + in]);
              if (val == geom_t(0)) continue;
              scalar_t* dst = vol + n * vol_numel + z0 * slab_numel;
              joseph_traverse(ray, slab, [&](int64_t idx, geom_t w) { dst[idx] += static_cast<scalar_t>(w * val); });
            }
          }
        }
      }
    }
  }
}

}  // namespace

at::Tensor cone_project_cpu(const at::Tensor& volume, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                            int64_t rows, int64_t cols) {
  check_views(views, volume);
  TORCH_CHECK(volume.device().is_cpu(), "unrolled3d: cone_project_cpu got a non-CPU tensor");
  TORCH_CHECK(rows > 0 && cols > 0, "unrolled3d: detector rows and cols must be positive");
  const VolumeGeom geom = check_vol_geom(vol_geom);
  const at::Tensor vol = volume.contiguous();
  const at::Tensor vw = views.contiguous();
  const int64_t B = vol.size(0), C = vol.size(1), D = vol.size(2), H = vol.size(3), W = vol.size(4);
  const int64_t V = vw.size(0);
  at::Tensor sino = at::empty({B, C, V, rows, cols}, vol.options());
  const auto vs = make_index_space<geom_t>(D, H, W, geom);
  AT_DISPATCH_FLOATING_TYPES(vol.scalar_type(), "cone_project_cpu", [&] {
    project_kernel<scalar_t>(vol.data_ptr<scalar_t>(), sino.data_ptr<scalar_t>(), vw.data_ptr<double>(), B * C, V,
                             rows, cols, vs);
  });
  return sino;
}

at::Tensor cone_backproject_cpu(const at::Tensor& sino, const at::Tensor& views, at::ArrayRef<double> vol_geom,
                                int64_t depth, int64_t height, int64_t width) {
  check_views(views, sino);
  TORCH_CHECK(sino.device().is_cpu(), "unrolled3d: cone_backproject_cpu got a non-CPU tensor");
  TORCH_CHECK(depth > 0 && height > 0 && width > 0, "unrolled3d: volume shape must be positive");
  const VolumeGeom geom = check_vol_geom(vol_geom);
  const at::Tensor s = sino.contiguous();
  const at::Tensor vw = views.contiguous();
  TORCH_CHECK(s.size(2) == vw.size(0), "unrolled3d: sinogram has ", s.size(2), " views, geometry has ",
              vw.size(0));
  const int64_t B = s.size(0), C = s.size(1), V = s.size(2), R = s.size(3), U = s.size(4);
  at::Tensor vol = at::zeros({B, C, depth, height, width}, s.options());
  const auto vs = make_index_space<geom_t>(depth, height, width, geom);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "cone_backproject_cpu", [&] {
    backproject_kernel<scalar_t>(s.data_ptr<scalar_t>(), vol.data_ptr<scalar_t>(), vw.data_ptr<double>(), B * C, V,
                                 R, U, vs);
  });
  return vol;
}

}  // namespace unrolled3d
