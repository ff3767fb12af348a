/* libcufft.so.11 for ASTRA's wheel on a machine that has only cuFFT 12.
 *
 * astra-toolbox 2.5.0's libastra.so.0 is linked against CUDA 12's libcufft.so.11 and uses five of
 * its functions, each bound to the symbol version "libcufft.so.11" (objdump -T libastra.so.0). The
 * lent GPU machines have the cuFFT 12 that comes with torch's CUDA 13 (nvidia/cu13/lib), whose
 * functions have the same signatures. This library exports those five names under that version
 * (cufft_forward.map) and forwards each call to libcufft.so.12: the path in U3D_CUFFT_LIBRARY, or
 * "libcufft.so.12" from the loader's search path (already loaded with torch's CUDA libraries).
 * Built by bench/gpu/prepare.sh; bench/gpu/wheels.py checks that it exports what ASTRA needs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int cufftResult; /* cufft.h: an enum, CUFFT_SUCCESS = 0 */
typedef int cufftHandle;
typedef int cufftType;
typedef float cufftReal;
typedef struct {
  float x, y;
} cufftComplex;
typedef struct CUstream_st* cudaStream_t;

#define U3D_CUFFT_INTERNAL_ERROR 5 /* cufft.h: CUFFT_INTERNAL_ERROR */

static void* forward_target(const char* name) {
  static void* lib = NULL;
  if (lib == NULL) {
    const char* path = getenv("U3D_CUFFT_LIBRARY");
    lib = dlopen(path != NULL && *path ? path : "libcufft.so.12", RTLD_NOW | RTLD_GLOBAL);
    if (lib == NULL) {
      fprintf(stderr, "libcufft.so.11 (unrolled3d forwarding shim): %s\n", dlerror());
      return NULL;
    }
  }
  void* fn = dlsym(lib, name);
  if (fn == NULL) fprintf(stderr, "libcufft.so.11 (unrolled3d forwarding shim): %s\n", dlerror());
  return fn;
}

#define U3D_FORWARD(name, params, args)                              \
  cufftResult name params {                                          \
    typedef cufftResult(*fn_t) params;                               \
    static fn_t fn = NULL;                                           \
    if (fn == NULL) fn = (fn_t)forward_target(#name);                \
    return fn != NULL ? fn args : U3D_CUFFT_INTERNAL_ERROR;          \
  }

U3D_FORWARD(cufftPlan1d, (cufftHandle * plan, int nx, cufftType type, int batch), (plan, nx, type, batch))
U3D_FORWARD(cufftExecR2C, (cufftHandle plan, cufftReal * idata, cufftComplex * odata), (plan, idata, odata))
U3D_FORWARD(cufftExecC2R, (cufftHandle plan, cufftComplex * idata, cufftReal * odata), (plan, idata, odata))
U3D_FORWARD(cufftDestroy, (cufftHandle plan), (plan))
U3D_FORWARD(cufftSetStream, (cufftHandle plan, cudaStream_t stream), (plan, stream))
