// "tvm_callback_cuda_compile" for processes without Python.
//
// Libraries exported on a machine without a CUDA driver carry their kernels as CUDA C source;
// TVM's CUDA runtime hands that source to this callback when the library is loaded and
// expects PTX (text starting with '/') or a cubin/fatbin back. Lookup order:
//   1. a precompiled kernel <sha256 of the source>.cubin|.fatbin|.ptx in the kernel folders
//      (python -m export writes a CUDA set's cubins with NVRTC into its kernels/ folder, checked
//      against the set's manifest when the library is verified; benchmarks/gpu_pack.py writes
//      fatbins with nvcc ahead of time);
//   2. nvcc ($MDTRACK_NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin, PATH) with the
//      flags of tvm.support.nvcc, for the device's compute capability or $MDTRACK_CUDA_ARCH.
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include "internal.h"
#include "sha256.h"

namespace mdtrack {

namespace ffi = tvm::ffi;

namespace {

constexpr int kDeviceAttrComputeVersion = 4;  // tvm::runtime::kComputeVersion

std::mutex g_mu;
std::vector<std::string> g_dirs;
int g_device_id = 0;

bool IsFile(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsExecutable(const std::string& p) { return IsFile(p) && ::access(p.c_str(), X_OK) == 0; }

std::string ReadFile(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + p);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string FindNvcc() {
  std::vector<std::string> c;
  for (const char* env : {"MDTRACK_NVCC"}) {
    if (const char* v = std::getenv(env)) c.push_back(v);
  }
  for (const char* env : {"CUDA_HOME", "CUDA_PATH"}) {
    if (const char* v = std::getenv(env)) c.push_back(std::string(v) + "/bin/nvcc");
  }
  c.push_back("/usr/local/cuda/bin/nvcc");
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      if (!dir.empty()) c.push_back(dir + "/nvcc");
    }
  }
  for (const std::string& p : c) {
    if (IsExecutable(p)) return p;
  }
  return "";
}

std::string DeviceArch(int device_id) {
  if (const char* v = std::getenv("MDTRACK_CUDA_ARCH")) {
    std::string a = v;
    return a.rfind("sm_", 0) == 0 ? a.substr(3) : a;
  }
  auto attr = ffi::Function::GetGlobalRequired("runtime.GetDeviceAttr");
  std::string version = attr(static_cast<int>(kDLCUDA), device_id, kDeviceAttrComputeVersion).cast<ffi::String>();
  std::string digits;
  for (char ch : version) {
    if (ch != '.') digits += ch;
  }
  return digits;
}

ffi::Bytes Compile(const ffi::String& code) {
  std::vector<std::string> dirs;
  int device_id;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    dirs = g_dirs;
    device_id = g_device_id;
  }
  if (const char* env = std::getenv("MDTRACK_CUDA_KERNELS")) dirs.push_back(env);
  const std::string hash = Sha256Hex(code.data(), code.size());
  for (const std::string& d : dirs) {
    for (const char* ext : {".cubin", ".fatbin", ".ptx"}) {  // runtime.artifacts.KERNEL_EXTS' order
      const std::string p = d + "/" + hash + ext;
      if (IsFile(p)) return ffi::Bytes(ReadFile(p));
    }
  }
  const std::string nvcc = FindNvcc();
  std::string searched;
  for (const std::string& d : dirs) searched += " " + d;
  if (nvcc.empty()) {
    throw std::runtime_error("the library carries CUDA source and no precompiled kernel " + hash +
                             ".cubin|.fatbin|.ptx was found in:" + searched +
                             "; and there is no nvcc to compile it (set MDTRACK_NVCC or CUDA_HOME)");
  }
  const std::string arch = DeviceArch(device_id);
  char tmpl[] = "/tmp/mdtrack_nvcc_XXXXXX";
  if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  const std::string tmp = tmpl;
  const std::string src = tmp + "/kernels.cu", out = tmp + "/kernels.fatbin", log = tmp + "/nvcc.log";
  {
    std::ofstream f(src, std::ios::binary);
    f.write(code.data(), static_cast<std::streamsize>(code.size()));
  }
  std::cerr << "mdtrack: no precompiled CUDA kernel " << hash.substr(0, 16) << "...; compiling with " << nvcc
            << " for sm_" << arch << std::endl;
  const std::string cmd = Quote(nvcc) + " --fatbin -O3 -gencode arch=compute_" + arch + ",code=sm_" + arch +
                          " -U__CUDA_NO_HALF_OPERATORS__ -U__CUDA_NO_HALF_CONVERSIONS__"
                          " -U__CUDA_NO_BFLOAT16_OPERATORS__ -U__CUDA_NO_BFLOAT16_CONVERSIONS__"
                          " -U__CUDA_NO_BFLOAT162_OPERATORS__ -U__CUDA_NO_BFLOAT162_CONVERSIONS__"
                          " --expt-relaxed-constexpr --expt-extended-lambda --use_fast_math -o " +
                          Quote(out) + " " + Quote(src) + " > " + Quote(log) + " 2>&1";
  const int rc = std::system(cmd.c_str());
  std::string result;
  if (rc == 0 && IsFile(out)) result = ReadFile(out);
  std::string log_text = IsFile(log) ? ReadFile(log) : "";
  std::remove(src.c_str());
  std::remove(out.c_str());
  std::remove(log.c_str());
  ::rmdir(tmp.c_str());
  if (result.empty()) {
    if (log_text.size() > 4000) log_text = "..." + log_text.substr(log_text.size() - 4000);
    throw std::runtime_error("nvcc failed (exit " + std::to_string(rc) + "):\n" + log_text);
  }
  return ffi::Bytes(std::move(result));
}

}  // namespace

void SetCudaKernelDirs(const std::vector<std::string>& dirs, int device_id) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_dirs = dirs;
  g_device_id = device_id;
}

void RegisterCudaCompileCallback() {
  if (ffi::Function::GetGlobal("tvm_callback_cuda_compile").has_value()) return;
  // Packed, so that a runtime passing extra arguments (e.g. a target) after the source works too.
  ffi::Function::SetGlobal("tvm_callback_cuda_compile",
                           ffi::Function::FromPacked([](ffi::PackedArgs args, ffi::Any* ret) {
                             if (args.size() < 1) throw std::runtime_error("tvm_callback_cuda_compile: no source");
                             *ret = Compile(args[0].cast<ffi::String>());
                           }),
                           false);
}

}  // namespace mdtrack
