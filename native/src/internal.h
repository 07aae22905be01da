// Internal pieces shared by runtime.cc and cuda_compile.cc.
#ifndef MDTRACK_NATIVE_INTERNAL_H_
#define MDTRACK_NATIVE_INTERNAL_H_

#include <string>
#include <vector>

namespace mdtrack {

// Registers "tvm_callback_cuda_compile" with tvm-ffi unless something (e.g. the tvm Python
// package in the same process) already did. TVM 0.27 stores CUDA kernels of libraries built
// on a machine without a CUDA driver as CUDA source (module format "cuda"); the CUDA runtime
// compiles that source through this callback when the library is loaded.
void RegisterCudaCompileCallback();

// Folders searched for <sha256(source)>.{cubin,fatbin,ptx}, and the device whose compute
// capability nvcc targets when no precompiled kernel matches.
void SetCudaKernelDirs(const std::vector<std::string>& dirs, int device_id);

}  // namespace mdtrack

#endif  // MDTRACK_NATIVE_INTERNAL_H_
