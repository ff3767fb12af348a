// The schemas of the extension's ops, written once. bindings.cpp defines them (TORCH_LIBRARY);
// unrolled3d/ops/_schemas.py reads this file to define the same ops, with the PyTorch twins as
// kernels, when no compiled extension can be had. One U3D_OP(name, "schema") per line, the schema
// a single string literal.
//   cone_project            volume (B, C, D, H, W) -> sinogram (B, C, V, rows, cols)   (cone_beam.h)
//   cone_backproject        its exact transpose, the device's default algorithm
//   cone_backproject_algo   the same transpose with a named algorithm
//   fdk_backproject         FDK's weighted backprojection, images (N, V, R, U) -> (N, D, H, W)
//                           (fdk_backproject.h)
#define U3D_SCHEMAS(U3D_OP) \
  U3D_OP(cone_project, "(Tensor volume, Tensor views, float[] vol_geom, int rows, int cols) -> Tensor") \
  U3D_OP(cone_backproject, "(Tensor sino, Tensor views, float[] vol_geom, int depth, int height, int width) -> Tensor") \
  U3D_OP(cone_backproject_algo, "(Tensor sino, Tensor views, float[] vol_geom, int depth, int height, int width, str algorithm) -> Tensor") \
  U3D_OP(fdk_backproject, "(Tensor images, Tensor table, float[] vol_geom, int depth, int height, int width) -> Tensor")
