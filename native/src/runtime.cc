// Loading the TVM runtime and running a Relax VM feature library through the tvm-ffi C++ API.
//
// Only tvm-ffi symbols are linked. libtvm_runtime is dlopen'ed with RTLD_GLOBAL (as the
// `tvm` Python package does) because compiled libraries resolve TVMBackend* from it and the
// Relax VM registers its module loader there; tensors are allocated and copied through the
// runtime's registered global functions, so no libtvm_runtime C++ symbol is needed at link
// time. That is what lets the aarch64 cross build link a complete executable against a
// cross-built libtvm_ffi while the board provides its own libtvm_runtime.
#include <dlfcn.h>
#include <elf.h>
#include <sched.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include "internal.h"
#include "sha256.h"
#include "mdtrack/native.h"
#include "mdtrack/npy.h"

#ifndef MDTRACK_DEFAULT_TVM_RUNTIME
#define MDTRACK_DEFAULT_TVM_RUNTIME ""
#endif

namespace mdtrack {

namespace ffi = tvm::ffi;

// Relax VM allocator types (tvm::runtime::memory::AllocatorType): 1 naive, 2 pooled.
// tvm.relax.VirtualMachine uses the pooled allocator by default; so do we.
constexpr int kPooledAllocator = 2;
// tvm::runtime::DeviceAttrKind
constexpr int kDeviceAttrExist = 0;

namespace {

std::mutex g_mu;
std::string g_runtime_path;
bool g_cuda_loaded = false;
int g_threads = 0;

bool FileExists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string DirName(const std::string& p) {
  size_t s = p.find_last_of('/');
  if (s == std::string::npos) return ".";
  return s == 0 ? "/" : p.substr(0, s);
}

std::string RealPath(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : p;
}

// Folder of libmdtrack_native.so (or of the executable it is linked into).
std::string SelfDir() {
  Dl_info info;
  if (::dladdr(reinterpret_cast<void*>(&SelfDir), &info) && info.dli_fname) {
    return DirName(RealPath(info.dli_fname));
  }
  return ".";
}

// The file a dlopen handle came from (dlopen by soname does not say where it found it).
std::string LoadedFrom(void* handle, const char* symbol, const std::string& fallback) {
  void* sym = ::dlsym(handle, symbol);
  Dl_info info;
  if (sym && ::dladdr(sym, &info) && info.dli_fname) return RealPath(info.dli_fname);
  return fallback;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

int OnlineCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

#if defined(__x86_64__)
constexpr uint16_t kHostMachine = EM_X86_64;
constexpr const char* kHostArch = "x86-64";
#elif defined(__aarch64__)
constexpr uint16_t kHostMachine = EM_AARCH64;
constexpr const char* kHostArch = "aarch64";
#else
constexpr uint16_t kHostMachine = 0;  // not checked
constexpr const char* kHostArch = "this";
#endif

const char* MachineName(uint16_t m) {
  switch (m) {
    case EM_X86_64: return "x86-64";
    case EM_AARCH64: return "aarch64";
    case EM_ARM: return "32-bit Arm";
    case EM_386: return "32-bit x86";
    default: return "another architecture";
  }
}

// What a checked file is, for advice that fits it: a feature library is exported again, the
// TVM runtime comes from the installed TVM (or a runtime build for the board).
struct FileRole {
  const char* rebuild;    // what to do about a damaged or foreign file
  const char* other_cpu;  // what to do about a file built for another architecture
};

const FileRole kFeatureLibrary = {
    "copy the whole set again or export it again (`python -m export`)",
    "use the library exported for this machine's target"};
const FileRole kTvmRuntime = {
    "use the libtvm_runtime.so of the installed TVM (the apache-tvm wheel's tvm/lib, or lib/ of "
    "`cmake --install`), or build it again as native/README.md says",
    "use the libtvm_runtime.so built for this machine (the installed TVM's on x86-64; on aarch64 the "
    "runtime built as native/README.md \"aarch64\" says)"};

// dlopen maps a shared library as its headers say: a truncated file crashes the process
// (SIGBUS) instead of failing, and a library for another CPU fails with a misleading
// "No such file". So the ELF headers are checked against the file first.
void CheckSharedLibrary(const std::string& path, const FileRole& role) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw std::runtime_error(path + ": cannot open");
  const uint64_t size = static_cast<uint64_t>(f.tellg());
  Elf64_Ehdr eh{};
  f.seekg(0);
  if (!f.read(reinterpret_cast<char*>(&eh), sizeof(eh)) || std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) {
    throw std::runtime_error(path + " is not a shared library (no ELF header); " + role.rebuild);
  }
  if (eh.e_ident[EI_CLASS] != ELFCLASS64) {
    throw std::runtime_error(path + " is a 32-bit library; this runner is 64-bit: " + role.other_cpu);
  }
  if (kHostMachine && eh.e_machine != kHostMachine) {
    throw std::runtime_error(path + " is a library for " + MachineName(eh.e_machine) + "; this runner is " + kHostArch +
                             ": " + role.other_cpu);
  }
  const std::string truncated = path + " is truncated (" + std::to_string(size) +
                                " bytes; its headers describe more): " + role.rebuild;
  if (eh.e_phoff + static_cast<uint64_t>(eh.e_phnum) * eh.e_phentsize > size ||
      eh.e_shoff + static_cast<uint64_t>(eh.e_shnum) * eh.e_shentsize > size || eh.e_phentsize != sizeof(Elf64_Phdr)) {
    throw std::runtime_error(truncated);
  }
  for (int i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph{};
    f.seekg(static_cast<std::streamoff>(eh.e_phoff + static_cast<uint64_t>(i) * eh.e_phentsize));
    if (!f.read(reinterpret_cast<char*>(&ph), sizeof(ph))) throw std::runtime_error(truncated);
    if (ph.p_type == PT_LOAD && ph.p_offset + ph.p_filesz > size) throw std::runtime_error(truncated);
  }
}

bool ReadWholeFile(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return !f.bad();
}

// An error about the library itself, raised inside the loading block below and passed on as
// it is (everything else thrown there is TVM failing on the file's contents).
struct LibraryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

DeviceSpec DeviceSpec::Parse(const std::string& text) {
  DeviceSpec d;
  if (text == "cpu") return d;
  if (text == "cuda" || text == "gpu") {
    d.cuda = true;
    return d;
  }
  for (const char* prefix : {"cuda:", "gpu:"}) {
    const size_t n = std::strlen(prefix);
    if (text.compare(0, n, prefix) == 0 && text.size() > n &&
        text.find_first_not_of("0123456789", n) == std::string::npos) {
      if (text.size() - n > 6) break;  // stoi would overflow
      d.cuda = true;
      d.id = std::stoi(text.substr(n));
      return d;
    }
  }
  throw std::invalid_argument("unknown device '" + text + "': use cpu, cuda or cuda:N");
}

std::string DeviceSpec::str() const { return cuda ? "cuda:" + std::to_string(id) : "cpu"; }

int ParseThreadCount(const std::string& text) {
  if (text.empty() || text.size() > 4 || text.find_first_not_of("0123456789") != std::string::npos) return 0;
  const int n = std::stoi(text);
  return n <= kMaxThreads ? n : 0;
}

int ResolveThreads(int requested, std::string* source) {
  auto from = [source](const char* s) {
    if (source) *source = s;
  };
  if (requested > 0) {
    if (requested > kMaxThreads) {
      throw std::invalid_argument("thread count " + std::to_string(requested) + " is over " + std::to_string(kMaxThreads));
    }
    from("requested");
    return requested;
  }
  for (const char* var : {"TVM_NUM_THREADS", "OMP_NUM_THREADS"}) {
    std::string v = Env(var);
    if (v.empty()) continue;  // unset or empty: not a setting
    // OMP_NUM_THREADS may list one count per nesting level ("4,2"); the first is the one
    const std::string first = std::string(var) == "OMP_NUM_THREADS" ? v.substr(0, v.find(',')) : v;
    const int n = ParseThreadCount(first);
    if (n == 0) {
      throw std::invalid_argument(std::string(var) + "='" + v + "' is not a thread count from 1 to " +
                                  std::to_string(kMaxThreads) + "; fix or unset it, or pass --threads N");
    }
    from(var);
    return n;
  }
  from("cpus");
  return OnlineCpus();
}

int TvmThreads() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_threads;
}

std::string LoadTvmRuntime(const RuntimeOptions& options, bool cuda) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_runtime_path.empty()) {
    // TVM sizes its CPU thread pool from TVM_NUM_THREADS (then OMP_NUM_THREADS, then half the
    // hardware threads on x86) when the pool starts, at the first parallel kernel: set it first.
    const int threads = ResolveThreads(options.num_threads);
    if (::setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 1) != 0) {
      throw std::runtime_error("cannot set TVM_NUM_THREADS");
    }
    std::string explicit_path = !options.tvm_runtime.empty() ? options.tvm_runtime : Env("MDTRACK_TVM_RUNTIME");
    std::vector<std::string> candidates;
    if (!explicit_path.empty()) {
      candidates.push_back(explicit_path);
    } else {
      const std::string self = SelfDir();
      candidates = {self + "/libtvm_runtime.so", self + "/../lib/libtvm_runtime.so"};
      if (std::strlen(MDTRACK_DEFAULT_TVM_RUNTIME)) candidates.push_back(MDTRACK_DEFAULT_TVM_RUNTIME);
      candidates.push_back("libtvm_runtime.so");  // LD_LIBRARY_PATH, ld.so.cache
    }
    std::string errors, loaded;
    void* handle = nullptr;
    // what tvm-ffi holds before the load: a rejected library that added nothing can be closed again
    const size_t registered = ffi::Function::ListGlobalNames().size();
    for (std::string c : candidates) {
      // a path that names a file (an explicit one in the current folder too) is that file,
      // not a name for the loader to search its path with
      const bool is_file = FileExists(c);
      if (c.find('/') != std::string::npos && !is_file) {
        errors += "; " + c + ": not found";
        continue;
      }
      if (is_file) {
        c = RealPath(c);
        CheckSharedLibrary(c, kTvmRuntime);
      }
      void* h = ::dlopen(c.c_str(), RTLD_NOW | RTLD_GLOBAL);
      if (h) {
        loaded = LoadedFrom(h, "TVMBackendAllocWorkspace", c);
        handle = h;
        break;
      }
      errors += "; " + c + ": " + ::dlerror();
    }
    if (loaded.empty()) {
      throw std::runtime_error("cannot load the TVM runtime (libtvm_runtime.so); tried" + errors.substr(1) +
                               "; set --tvm-runtime PATH or MDTRACK_TVM_RUNTIME (see native/README.md)");
    }
    if (!ffi::Function::GetGlobal("vm.builtin.alloc_storage").has_value()) {
      // Not marked as loaded: a later call (with the right runtime) loads again. A library
      // that registered nothing with tvm-ffi is closed, so its symbols leave the global
      // scope. One that did register functions (a TVM runtime without the Relax VM) stays:
      // tvm-ffi's registry holds code of it, which dlclose would unmap under it.
      std::string stays;
      if (ffi::Function::ListGlobalNames().size() == registered) {
        ::dlclose(handle);
      } else {
        stays = " (it registered functions with tvm-ffi, so it stays loaded in this process: load the right "
                "runtime in a new process)";
      }
      throw std::runtime_error(loaded + " does not register the Relax VM (vm.builtin.*); it is not a TVM >= 0.20 "
                               "runtime built with the Relax VM: " + kTvmRuntime.rebuild + stays);
    }
    g_runtime_path = loaded;
    g_threads = threads;
  }
  if (cuda && !g_cuda_loaded) {
    if (!ffi::Function::GetGlobal("device_api.cuda").has_value()) {
      std::string lib = Env("MDTRACK_TVM_RUNTIME_CUDA");
      if (lib.empty()) lib = DirName(g_runtime_path) + "/libtvm_runtime_cuda.so";
      // RTLD_LOCAL like tvm.backend.cuda: it only registers its functions with tvm-ffi.
      if (!FileExists(lib)) {
        throw std::runtime_error("this TVM runtime has no CUDA support: " + lib +
                                 " does not exist (the runtime in use is " + g_runtime_path + ")");
      }
      if (!::dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL)) {
        throw std::runtime_error(std::string("this TVM runtime has no usable CUDA support: ") + ::dlerror() +
                                 " (libtvm_runtime_cuda.so needs the NVIDIA driver's libcuda.so.1 and "
                                 "libcudart.so.13 next to it or on LD_LIBRARY_PATH)");
      }
      if (!ffi::Function::GetGlobal("device_api.cuda").has_value()) {
        throw std::runtime_error(lib + " loaded but registered no CUDA device API");
      }
    }
    RegisterCudaCompileCallback();
    g_cuda_loaded = true;
  }
  return g_runtime_path;
}

namespace {

std::string ManifestIn(const std::string& dir) { return (dir == "/" ? std::string() : dir) + "/manifest.json"; }

std::string BaseName(const std::string& p) {
  const size_t s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

// Whether `dir`/manifest.json exists (false when absent; throws when it cannot be looked at).
bool HasManifest(const std::string& dir) {
  const std::string mpath = ManifestIn(dir);
  struct stat st;
  if (::stat(mpath.c_str(), &st) == 0) return true;
  if (errno == ENOENT || errno == ENOTDIR) return false;
  throw std::runtime_error(mpath + ": cannot read (" + std::strerror(errno) + ")");
}

const char* kManifestFix = "export the set again (`python -m export`), or copy the whole set (the libraries with "
                           "their manifest.json) again";

bool Inside(const std::string& real, const std::string& dir) {
  const std::string prefix = dir == "/" ? dir : dir + "/";
  return real.compare(0, prefix.size(), prefix) == 0;
}

// As runtime.artifacts.check_files: a set runs its own files, not ones a link brings in.
void RequireInside(const std::string& shown, const std::string& real, const std::string& dir) {
  if (!Inside(real, dir)) {
    throw std::runtime_error(shown + " is a link to " + real + ", outside its set's folder " + dir +
                             " (a set's manifest vouches for the set's own files only): copy the file in (cp -L) or " +
                             kManifestFix);
  }
}

// Whether the bytes of `real` have the sha256 `want`; `shown` names the file in the message
// when it cannot be read.
bool HasSha256(const std::string& shown, const std::string& real, const std::string& want) {
  std::string bytes;
  if (!ReadWholeFile(real, &bytes)) throw std::runtime_error(shown + ": cannot read; " + std::string(kManifestFix));
  return Sha256Hex(bytes.data(), bytes.size()) == want;
}

// The precompiled CUDA kernels the manifest lists for the library it knows as `listed`
// ("kernels": {name: {"file": "kernels/<sha256 of the source>.cubin", "sha256": ...}}, written
// by export.cuda_kernels) must be the set's own file with those bytes, as
// runtime.artifacts.check_files requires: the CUDA runtime would otherwise load a damaged cubin
// by its name, which says only what source it was compiled from.
void CheckKernels(const ffi::json::Object& manifest, const std::string& listed, const std::string& dir,
                  const std::string& mpath) {
  auto k = manifest.Get(ffi::String("kernels"));
  if (!k.has_value()) return;  // a set without precompiled kernels
  std::optional<ffi::json::Object> kernels = k->as<ffi::json::Object>();
  if (!kernels.has_value()) {
    throw std::runtime_error(mpath + " has a \"kernels\" entry that is not a table of the libraries' kernels; " +
                             kManifestFix);
  }
  auto e = kernels->Get(ffi::String(listed));
  if (!e.has_value()) return;  // a library whose kernels were not precompiled
  std::optional<ffi::json::Object> entry = e->as<ffi::json::Object>();
  std::optional<ffi::String> file, digest;
  if (!entry.has_value()) {
    throw std::runtime_error(mpath + " lists kernels for " + listed + " that are not a file in the set's kernels/ "
                             "folder with its sha256; " + kManifestFix);
  }
  if (auto f = entry->Get(ffi::String("file"))) file = f->as<ffi::String>();
  if (auto d = entry->Get(ffi::String("sha256"))) digest = d->as<ffi::String>();
  const std::string name = file.has_value() ? std::string(*file) : std::string();
  const std::string prefix = "kernels/", base = name.size() > prefix.size() ? name.substr(prefix.size()) : "";
  if (name.compare(0, prefix.size(), prefix) != 0 || base.empty() || base == "." || base == ".." ||
      base.find('/') != std::string::npos || base.find('\\') != std::string::npos || !digest.has_value()) {
    throw std::runtime_error(mpath + " lists kernels for " + listed + " that are not a file in the set's kernels/ "
                             "folder with its sha256; " + kManifestFix);
  }
  const std::string path = (dir == "/" ? std::string() : dir) + "/" + name;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 && errno != ENOENT && errno != ENOTDIR) {
    throw std::runtime_error(path + " (the precompiled kernels of " + listed + "): cannot read (" +
                             std::strerror(errno) + ")");
  }
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw std::runtime_error(path + " (the precompiled kernels of " + listed + ") is missing; " + kManifestFix);
  }
  const std::string real = RealPath(path);
  RequireInside(path, real, dir);
  if (!HasSha256(path, real, std::string(*digest))) {
    throw std::runtime_error(path + " (the precompiled kernels of " + listed + ") does not match the manifest " +
                             mpath + " (sha256 differs: corrupt or modified); " + kManifestFix);
  }
}

// Checks the bytes of `real` against the sha256 `dir`/manifest.json lists for the first of
// `names` it lists; `library` is the path as given, for the messages. Returns the manifest.
std::string CheckAgainstManifest(const std::string& library, const std::string& real, const std::string& dir,
                                 const std::vector<std::string>& names) {
  const std::string mpath = ManifestIn(dir);
  const std::string fix = kManifestFix;
  struct stat st;
  std::string text;
  if (::stat(mpath.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || !ReadWholeFile(mpath, &text)) {
    throw std::runtime_error(mpath + " (the manifest beside " + library + ") cannot be read; " + fix);
  }
  ffi::String parse_error;
  ffi::json::Value root;
  try {
    root = ffi::json::Parse(ffi::String(text), &parse_error);
  } catch (const std::exception& e) {  // a parser that throws after all
    parse_error = e.what();
  }
  std::optional<ffi::json::Object> manifest;
  if (parse_error.empty()) manifest = root.as<ffi::json::Object>();
  if (!manifest.has_value()) {
    throw std::runtime_error(mpath + " (the manifest beside " + library + ") is not valid JSON" +
                             (parse_error.empty() ? std::string(" object") : " (" + std::string(parse_error) + ")") +
                             "; " + fix);
  }
  std::optional<ffi::json::Object> files;
  if (auto f = manifest->Get(ffi::String("files"))) files = f->as<ffi::json::Object>();
  if (!files.has_value()) throw std::runtime_error(mpath + " has no \"files\" table (not an export manifest); " + fix);
  std::optional<ffi::String> want;
  std::string listed;  // the name the manifest knows the library by
  for (const std::string& name : names) {
    if (auto d = files->Get(ffi::String(name))) want = d->as<ffi::String>();
    if (want.has_value()) {
      listed = name;
      break;
    }
  }
  if (!want.has_value()) {
    throw std::runtime_error(library + ": " + names.front() + " is not listed in " + mpath +
                             " (renamed, or copied into another set's folder); run the set's own file under its "
                             "own name, or " + fix);
  }
  if (!HasSha256(library, real, std::string(*want))) {
    throw std::runtime_error(library + " does not match the manifest " + mpath +
                             " (sha256 differs: corrupt, modified, or from another export); " + fix);
  }
  CheckKernels(*manifest, listed, dir, mpath);
  return mpath;
}

}  // namespace

std::string VerifyManifest(const std::string& library) {
  // The set is the folder of the path as given: `set/bucket0.so` is checked against
  // set/manifest.json by the name bucket0.so, whatever it is a link to.
  const std::string dir = RealPath(DirName(library));  // the given folder (its own links resolved)
  const std::string name = BaseName(library);
  const std::string real = RealPath(library);          // the file the bytes come from
  const std::string real_dir = DirName(real);
  if (HasManifest(dir)) {
    RequireInside(library, real, dir);
    std::vector<std::string> names = {name};
    if (real_dir == dir && BaseName(real) != name) names.push_back(BaseName(real));  // a link to a file of the set
    return CheckAgainstManifest(library, real, dir, names);
  }
  // No set here: a link from outside every set (e.g. `current.so -> set/bucket0.so`) is
  // checked against the manifest of the set it leads into, by the name it has there.
  if (real_dir != dir && HasManifest(real_dir)) {
    return CheckAgainstManifest(library, real, real_dir, {BaseName(real)});
  }
  return "";
}

bool CudaAvailable(int id) {
  auto api = ffi::Function::GetGlobal("device_api.cuda");
  if (!api.has_value()) return false;
  auto attr = ffi::Function::GetGlobalRequired("runtime.GetDeviceAttr");
  try {
    return attr(static_cast<int>(kDLCUDA), id, kDeviceAttrExist).cast<int64_t>() != 0;
  } catch (const std::exception&) {
    return false;
  }
}

struct FeatureExtractor::Impl {
  std::string library;
  std::string manifest;
  DLDevice dev;
  std::vector<int64_t> in_shape, out_shape;
  ffi::Module lib{ffi::UnsafeInit()};
  ffi::Module vm{ffi::UnsafeInit()};
  ffi::Function main, copy_from, copy_to;
  ffi::Tensor input;
};

FeatureExtractor::FeatureExtractor(const std::string& library, const DeviceSpec& device,
                                   const std::vector<int64_t>& input_shape, const RuntimeOptions& options)
    : impl_(new Impl) {
  struct stat st;
  if (::stat(library.c_str(), &st) != 0) throw std::runtime_error(library + ": no such file");
  if (!S_ISREG(st.st_mode)) throw std::runtime_error(library + " is not a file");
  CheckSharedLibrary(library, kFeatureLibrary);
  impl_->manifest = VerifyManifest(library);
  impl_->library = library;
  LoadTvmRuntime(options, device.cuda);
  impl_->dev = DLDevice{device.cuda ? kDLCUDA : kDLCPU, device.id};
  impl_->in_shape = input_shape;
  if (device.cuda) {
    if (!CudaAvailable(device.id)) {
      throw std::runtime_error("the TVM runtime sees no CUDA device " + std::to_string(device.id) +
                               " (driver missing, or CUDA_VISIBLE_DEVICES hides it)");
    }
    std::vector<std::string> dirs = options.cuda_kernel_dirs;
    const std::string libdir = DirName(RealPath(library));
    dirs.push_back(libdir + "/kernels");
    dirs.push_back(libdir);
    SetCudaKernelDirs(dirs, device.id);
  }
  bool loading = true;  // reading the file (a TVM error then means a damaged file), not setting up the VM
  try {
    // An absolute path: dlopen would search the library path for a bare file name. Loaded as
    // a shared library whatever its name says (ffi::Module::LoadFromFile picks the loader by
    // the file name's extension and fails on a name without one).
    const ffi::Function load_so = ffi::Function::GetGlobalRequired("ffi.Module.load_from_file.so");
    impl_->lib = load_so(ffi::String(RealPath(library)), ffi::String("so")).cast<ffi::Module>();
    auto load = impl_->lib->GetFunction("vm_load_executable", true);
    if (!load.has_value()) {
      throw LibraryError(library + " is not a Relax VM library (no vm_load_executable); "
                         "build it with `python -m export`");
    }
    impl_->vm = (*load)().cast<ffi::Module>();
    loading = false;
    auto init = impl_->vm->GetFunction("vm_initialization", false);
    if (!init.has_value()) throw LibraryError(library + ": the VM has no vm_initialization");
    if (device.cuda) {
      // The CPU is added as the host device, as tvm.relax.VirtualMachine does.
      (*init)(static_cast<int>(kDLCUDA), device.id, kPooledAllocator, static_cast<int>(kDLCPU), 0, kPooledAllocator);
    } else {
      (*init)(static_cast<int>(kDLCPU), device.id, kPooledAllocator);
    }
    auto main = impl_->vm->GetFunction("main", false);
    if (!main.has_value()) throw LibraryError(library + ": the VM has no function 'main'");
    impl_->main = *main;
    impl_->copy_from = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyFromBytes");
    impl_->copy_to = ffi::Function::GetGlobalRequired("runtime.TVMTensorCopyToBytes");
    auto alloc = ffi::Function::GetGlobalRequired("runtime.TVMTensorAllocWithScope");
    impl_->input = alloc(ffi::Shape(input_shape), DLDataType{kDLFloat, 32, 1}, impl_->dev,
                         ffi::Optional<ffi::String>())
                       .cast<ffi::Tensor>();
  } catch (const ffi::Error& e) {
    std::string msg = library + ": " + e.what();
    if (!device.cuda && msg.find("load_from_bytes.cuda") != std::string::npos) {
      msg += " (this library holds CUDA kernels: run it with --device cuda)";
    } else if (loading && !device.cuda) {  // (CUDA libraries compile kernels while loading)
      msg += " (loading it failed: the file is damaged or from another TVM version; " +
             std::string(kFeatureLibrary.rebuild) + ")";
    }
    throw std::runtime_error(msg);
  } catch (const LibraryError&) {
    throw;
  } catch (const std::exception& e) {
    // TVM's loader reading a damaged file: a C++ error (e.g. vector::_M_default_append from a
    // length field out of range) that says nothing about the file
    if (!loading) throw std::runtime_error(library + ": " + e.what());
    throw std::runtime_error("corrupt library " + library + " (loading it failed: " + e.what() + "); " +
                             kFeatureLibrary.rebuild);
  }
}

FeatureExtractor::~FeatureExtractor() = default;

const std::string& FeatureExtractor::manifest() const { return impl_->manifest; }

const std::vector<int64_t>& FeatureExtractor::input_shape() const { return impl_->in_shape; }
const std::vector<int64_t>& FeatureExtractor::output_shape() const { return impl_->out_shape; }

void FeatureExtractor::Run(const float* input, std::vector<float>* output) {
  Impl& m = *impl_;
  const size_t in_bytes = static_cast<size_t>(m.input.numel()) * sizeof(float);
  try {
    m.copy_from(m.input, const_cast<void*>(static_cast<const void*>(input)), in_bytes);
    ffi::Any ret = m.main(m.input);
    ffi::Tensor out;
    if (auto t = ret.as<ffi::Tensor>()) {
      out = *t;
    } else if (auto arr = ret.as<ffi::Array<ffi::Any>>()) {
      if (arr->empty()) throw std::runtime_error("main returned an empty tuple");
      out = (*arr)[0].cast<ffi::Tensor>();
    } else {
      throw std::runtime_error("main returned " + ret.GetTypeKey() + ", not a tensor");
    }
    const DLDataType dt = out.dtype();
    if (dt.code != kDLFloat || dt.bits != 32 || dt.lanes != 1) throw std::runtime_error("main's output is not float32");
    if (!out.IsContiguous()) throw std::runtime_error("main's output is not contiguous");
    ffi::ShapeView shape = out.shape();
    m.out_shape.assign(shape.begin(), shape.end());
    output->resize(static_cast<size_t>(out.numel()));
    m.copy_to(out, static_cast<void*>(output->data()), output->size() * sizeof(float));
  } catch (const ffi::Error& e) {
    const std::string what = e.what();
    if (what.find("match_cast") != std::string::npos || what.find("input_shape") != std::string::npos) {
      throw std::runtime_error(m.library + " was compiled for another patch size than the input (" +
                               ShapeString(m.in_shape) + "): use the bucket library whose HxW matches the patch");
    }
    throw std::runtime_error(what);
  }
}

}  // namespace mdtrack
