// The one registration file: op schemas, CPU and CUDA kernels, and a tiny Python module that
// reports how the extension was built. Autograd and shape-only ("fake") kernels are registered
// in Python (unrolled3d/ops/projector.py), which lets torch.compile trace through the ops.
#include <Python.h>
#include <torch/library.h>

#include "cone_beam.h"

// Why the CUDA twin was (not) built: 0 built, 1 NO_CUDA=1, 2 CPU-only torch, 3 no nvcc/CUDA_HOME.
#ifndef U3D_CUDA_REASON
#define U3D_CUDA_REASON -1
#endif

namespace unrolled3d {

#ifndef WITH_CUDA
// pytorch3d-style: a CUDA tensor reaching a CPU-only build gets a clear, actionable error.
at::Tensor cone_project_no_cuda(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, int64_t, int64_t) {
  TORCH_CHECK(false, "unrolled3d was not compiled with GPU support (see unrolled3d.backends()). "
              "Rebuild with a CUDA torch and nvcc: FORCE_CUDA=1 pip install --no-build-isolation -e .");
}
at::Tensor cone_backproject_no_cuda(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, int64_t, int64_t,
                                    int64_t) {
  TORCH_CHECK(false, "unrolled3d was not compiled with GPU support (see unrolled3d.backends()). "
              "Rebuild with a CUDA torch and nvcc: FORCE_CUDA=1 pip install --no-build-isolation -e .");
}
at::Tensor cone_backproject_algo_no_cuda(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, int64_t,
                                         int64_t, int64_t, c10::string_view) {
  TORCH_CHECK(false, "unrolled3d was not compiled with GPU support (see unrolled3d.backends()). "
              "Rebuild with a CUDA torch and nvcc: FORCE_CUDA=1 pip install --no-build-isolation -e .");
}
#endif

TORCH_LIBRARY(unrolled3d, m) {
  m.def("cone_project(Tensor volume, Tensor views, float[] vol_geom, int rows, int cols) -> Tensor");
  m.def("cone_backproject(Tensor sino, Tensor views, float[] vol_geom, int depth, int height, int width) -> Tensor");
  // The same transpose with an explicit algorithm ("auto", "scatter", "tile" (CPU), "gather"); see cone_beam.h.
  m.def("cone_backproject_algo(Tensor sino, Tensor views, float[] vol_geom, int depth, int height, int width, "
        "str algorithm) -> Tensor");
}

TORCH_LIBRARY_IMPL(unrolled3d, CPU, m) {
  m.impl("cone_project", &cone_project_cpu);
  m.impl("cone_backproject", &cone_backproject_cpu);
  m.impl("cone_backproject_algo", &cone_backproject_algo_cpu);
}

TORCH_LIBRARY_IMPL(unrolled3d, CUDA, m) {
#ifdef WITH_CUDA
  m.impl("cone_project", &cone_project_cuda);
  m.impl("cone_backproject", &cone_backproject_cuda);
  m.impl("cone_backproject_algo", &cone_backproject_algo_cuda);
#else
  m.impl("cone_project", &cone_project_no_cuda);
  m.impl("cone_backproject", &cone_backproject_no_cuda);
  m.impl("cone_backproject_algo", &cone_backproject_algo_no_cuda);
#endif
}

}  // namespace unrolled3d

// A minimal Python module: `import unrolled3d._C` loads the library (registering the ops above)
// and exposes how it was built.
static PyObject* build_info(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  PyObject* cuda = Py_True;
#else
  PyObject* cuda = Py_False;
#endif
#ifdef _OPENMP
  PyObject* omp = Py_True;
#else
  PyObject* omp = Py_False;
#endif
  return Py_BuildValue("{s:O,s:i,s:O}", "cuda", cuda, "cuda_reason", U3D_CUDA_REASON, "openmp", omp);
}

static PyMethodDef methods[] = {{"build_info", build_info, METH_NOARGS, "How the extension was built."},
                                {nullptr, nullptr, 0, nullptr}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
