// The one registration file: the op schemas (written in schemas.h, which Python reads too), CPU and
// CUDA kernels, and a tiny Python module that reports how the extension was built. Autograd and
// shape-only ("fake") kernels are registered in Python (unrolled3d/ops/projector.py,
// unrolled3d/ops/fdk_backproject.py), which lets torch.compile trace through the ops.
#include <Python.h>
#include <torch/library.h>

#include "cone_beam.h"
#include "fdk_backproject.h"
#include "schemas.h"

// Why the CUDA twin was (not) built: 0 built, 1 NO_CUDA=1, 2 CPU-only torch, 3 no nvcc/CUDA_HOME.
#ifndef U3D_CUDA_REASON
#define U3D_CUDA_REASON -1
#endif

namespace unrolled3d {

#ifndef WITH_CUDA
// pytorch3d-style: a CUDA tensor reaching a CPU-only build gets a clear, actionable error.
[[noreturn]] void no_cuda() {
  TORCH_CHECK(false, "unrolled3d was not compiled with GPU support (see unrolled3d.backends()). "
              "Rebuild with a CUDA torch and nvcc: FORCE_CUDA=1 pip install --no-build-isolation -e .");
}
at::Tensor cone_project_no_cuda(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, int64_t, int64_t) {
  no_cuda();
}
at::Tensor cone_backproject_no_cuda(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, int64_t, int64_t,
                                    int64_t) {
  no_cuda();
}
at::Tensor cone_backproject_algo_no_cuda(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, int64_t,
                                         int64_t, int64_t, c10::string_view) {
  no_cuda();
}
at::Tensor fdk_backproject_no_cuda(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>, int64_t, int64_t,
                                   int64_t) {
  no_cuda();
}
#endif

// The schemas of schemas.h (the one place they are written).
TORCH_LIBRARY(unrolled3d, m) {
#define U3D_DEFINE(name, schema) m.def(#name schema);
  U3D_SCHEMAS(U3D_DEFINE)
#undef U3D_DEFINE
}

TORCH_LIBRARY_IMPL(unrolled3d, CPU, m) {
  m.impl("cone_project", &cone_project_cpu);
  m.impl("cone_backproject", &cone_backproject_cpu);
  m.impl("cone_backproject_algo", &cone_backproject_algo_cpu);
  m.impl("fdk_backproject", &fdk_backproject_cpu);
}

TORCH_LIBRARY_IMPL(unrolled3d, CUDA, m) {
#ifdef WITH_CUDA
  m.impl("cone_project", &cone_project_cuda);
  m.impl("cone_backproject", &cone_backproject_cuda);
  m.impl("cone_backproject_algo", &cone_backproject_algo_cuda);
  m.impl("fdk_backproject", &fdk_backproject_cuda);
#else
  m.impl("cone_project", &cone_project_no_cuda);
  m.impl("cone_backproject", &cone_backproject_no_cuda);
  m.impl("cone_backproject_algo", &cone_backproject_algo_no_cuda);
  m.impl("fdk_backproject", &fdk_backproject_no_cuda);
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
