// mdtrack native runner: runs one TVM-compiled feature library (a Relax VM executable
// exported by `python -m export`) on a patch, without Python.
//
// The TVM runtime (libtvm_runtime.so, plus libtvm_runtime_cuda.so for --device cuda) is
// loaded at run time with dlopen, exactly as the Python package does; this library itself
// only links libtvm_ffi. See native/README.md.
#ifndef MDTRACK_NATIVE_H_
#define MDTRACK_NATIVE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mdtrack {

// "cpu", "cuda" or "cuda:N".
struct DeviceSpec {
  bool cuda = false;
  int id = 0;
  static DeviceSpec Parse(const std::string& text);  // throws std::invalid_argument
  std::string str() const;
};

struct RuntimeOptions {
  // libtvm_runtime.so to load; empty: $MDTRACK_TVM_RUNTIME, then the folder of
  // libmdtrack_native.so (and ../lib), then the wheel folder found at build time, then the
  // dynamic loader's search path.
  std::string tvm_runtime;
  // Folders searched for precompiled CUDA kernels (<sha256 of the CUDA source>.cubin|.fatbin|.ptx)
  // when a library carries CUDA source; $MDTRACK_CUDA_KERNELS is appended. If none matches,
  // nvcc ($CUDA_HOME/bin or PATH) compiles the source at load time.
  std::vector<std::string> cuda_kernel_dirs;
  // Threads of the TVM runtime's CPU thread pool; 0: ResolveThreads(0). Applied once per
  // process, by the LoadTvmRuntime call that loads the runtime (the pool is sized when it
  // starts; later calls do not change it).
  int num_threads = 0;
};

// The thread count the TVM runtime's CPU thread pool is given: `requested` if > 0, else
// $TVM_NUM_THREADS, else $OMP_NUM_THREADS (its first number), else the CPUs this process may
// run on (sched_getaffinity; std::thread::hardware_concurrency() if that fails). Without this
// TVM would take half the hardware threads on x86 (it assumes hyper-threading). `source`, if
// given, is set to "requested", "TVM_NUM_THREADS", "OMP_NUM_THREADS" or "cpus". Throws
// std::invalid_argument when the variable used is not a whole number from 1 to kMaxThreads.
constexpr int kMaxThreads = 1024;
int ResolveThreads(int requested, std::string* source = nullptr);

// `text` as a thread count: a whole number from 1 to kMaxThreads and nothing else (no sign,
// blanks or suffix); 0 when it is not one.
int ParseThreadCount(const std::string& text);

// Loads libtvm_runtime (RTLD_GLOBAL) once per process, and libtvm_runtime_cuda next to it
// when `cuda` is set. Before the first load it sets TVM_NUM_THREADS to
// ResolveThreads(options.num_threads), which TVM reads when its thread pool starts. Returns
// the path of the runtime loaded. Throws std::runtime_error (std::invalid_argument for a bad
// thread count). A file loaded but rejected (no Relax VM) is not remembered; it is closed
// again when it registered nothing with tvm-ffi, else it stays loaded (unloading it would
// leave tvm-ffi's registry pointing into unmapped code) and the error says so.
std::string LoadTvmRuntime(const RuntimeOptions& options, bool cuda);

// The thread count set by the LoadTvmRuntime call that loaded the runtime (0 before).
int TvmThreads();

// Checks `library` against the manifest.json that `python -m export` writes beside the
// libraries of a set ("files": {name: sha256}): the one in the folder of `library` as given,
// which must list the name given (or, for a link to a file of the same folder, that file's
// name) with the sha256 of the bytes the path leads to. A link that leads out of that folder
// is refused (as runtime.artifacts.check_files refuses it). When the given folder has no
// manifest and `library` is a link, the manifest beside the file it leads to checks it, by
// that file's name. Returns the manifest's path, or "" when there is none (nothing to check
// against). Throws std::runtime_error, naming the file and what to do, when the manifest
// cannot be read, does not list the file, lists another sha256 (a corrupt, modified or stale
// library), or the link leaves the set's folder. The precompiled CUDA kernels the manifest
// lists for the library ("kernels") are checked the same way: in the set's kernels/ folder,
// present, with their sha256.
std::string VerifyManifest(const std::string& library);

// True when the loaded TVM runtime has a CUDA device API and sees device `id`.
bool CudaAvailable(int id = 0);

// One compiled bucket: loads `library` (bucket{i}_{H}x{W}.so; any file name, it is loaded as
// a shared library), creates its Relax VM on `device` (pooled allocator, CPU as the host
// device) and runs "main". Before loading, the library's ELF headers are checked and the
// library is verified against the manifest.json beside it (VerifyManifest); the constructor
// throws std::runtime_error when either check fails or the library is corrupt.
class FeatureExtractor {
 public:
  FeatureExtractor(const std::string& library, const DeviceSpec& device,
                   const std::vector<int64_t>& input_shape, const RuntimeOptions& options = {});
  ~FeatureExtractor();
  FeatureExtractor(const FeatureExtractor&) = delete;
  FeatureExtractor& operator=(const FeatureExtractor&) = delete;

  const std::vector<int64_t>& input_shape() const;
  // The manifest.json the library was verified against; "" when its folder has none, so its
  // integrity was not checked (mdtrack_features prints a warning then).
  const std::string& manifest() const;
  // Known after the first Run().
  const std::vector<int64_t>& output_shape() const;

  // Copies `input` (float32, C order, prod(input_shape) values) to the device, runs main and
  // copies the (float32) result back into `output`. Synchronous.
  void Run(const float* input, std::vector<float>* output);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mdtrack

#endif  // MDTRACK_NATIVE_H_
