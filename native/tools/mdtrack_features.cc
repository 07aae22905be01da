// mdtrack_features: run one compiled feature library on a patch, write the features and time it.
//
//   mdtrack_features --lib bucket0_192x192.so --input patch.npy [--shape 1,3,192,192]
//                    [--output feat.npy] [--device cpu|cuda[:N]] [--repeat N] [--warmup K]
//                    [--tvm-runtime libtvm_runtime.so] [--kernels DIR] [--threads N]
//
// Prints one JSON line: shapes, load time, and median / p95 / min / mean ms of one run
// (copy the patch in, run main, copy the features out), and the CPU thread count used.
// Exit code 2 on errors.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include "mdtrack/native.h"
#include "mdtrack/npy.h"

namespace {

const char* kUsage =
    "usage: mdtrack_features --lib LIB.so --input PATCH.npy|PATCH.f32 [--shape 1,3,H,W]\n"
    "                        [--output FEAT.npy|FEAT.f32] [--device cpu|cuda[:N]]\n"
    "                        [--repeat N] [--warmup K] [--tvm-runtime PATH] [--kernels DIR]\n"
    "                        [--threads N]\n"
    "Runs a TVM-compiled feature library (python -m export) on a float32 (1,3,H,W) patch.\n"
    "--shape is required for raw .f32 input; --output must end in .npy or .f32 and must not be\n"
    "--lib or --input; --repeat 0 skips timing (default 20, warmup 3).\n"
    "The library is checked against the manifest.json beside it (written by python -m export):\n"
    "a sha256 mismatch is an error; without a manifest a warning says it cannot be checked.\n"
    "--threads: TVM's CPU thread pool size (default $TVM_NUM_THREADS, else $OMP_NUM_THREADS,\n"
    "else all CPUs this process may use).\n";

// Case-insensitive: FEAT.NPY is an .npy file too.
bool EndsWith(const std::string& s, const std::string& suffix) {
  if (s.size() < suffix.size()) return false;
  for (size_t i = 0; i < suffix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[s.size() - suffix.size() + i])) !=
        std::tolower(static_cast<unsigned char>(suffix[i]))) {
      return false;
    }
  }
  return true;
}

// True when `a` and `b` name the same existing file (links and hard links included).
bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return !a.empty() && !b.empty() && ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 &&
         sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string JsonShape(const std::vector<int64_t>& shape) { return "[" + mdtrack::ShapeString(shape) + "]"; }

std::string JsonNumber(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4f", v);
  return buf;
}

// A whole number >= 0 written as digits only: no sign, blanks, or suffix (std::stoi would
// skip leading blanks and take "+5").
int ParseCount(const std::string& flag, const std::string& v) {
  if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos) {
    throw std::invalid_argument(flag + " needs a whole number >= 0 (digits only, below 10^9), got '" + v + "'");
  }
  return std::stoi(v);
}

int ParseThreads(const std::string& v) {
  const int n = mdtrack::ParseThreadCount(v);
  if (n == 0) {
    throw std::invalid_argument("--threads needs a whole number from 1 to " + std::to_string(mdtrack::kMaxThreads) +
                                ", got '" + v + "'");
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  std::string lib, input, output, shape_text, device_text = "cpu";
  int repeat = 20, warmup = 3, threads = 0;
  std::string threads_from = "--threads";
  mdtrack::RuntimeOptions options;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "-h" || a == "--help") {
        std::cout << kUsage;
        return 0;
      }
      static const char* kFlags[] = {"--lib",    "--input",  "--output",      "--shape", "--device",
                                     "--repeat", "--warmup", "--tvm-runtime", "--kernels", "--threads"};
      if (std::find(std::begin(kFlags), std::end(kFlags), a) == std::end(kFlags)) {
        throw std::invalid_argument("unknown argument " + a);
      }
      // an option right after an option is a missing value, not the value
      if (i + 1 >= argc || std::string(argv[i + 1]).rfind("--", 0) == 0) throw std::invalid_argument(a + " needs a value");
      const std::string v = argv[++i];
      if (v.empty()) throw std::invalid_argument(a + " needs a non-empty value");
      if (a == "--lib") lib = v;
      else if (a == "--input") input = v;
      else if (a == "--output") output = v;
      else if (a == "--shape") shape_text = v;
      else if (a == "--device") device_text = v;
      else if (a == "--repeat") repeat = ParseCount(a, v);
      else if (a == "--warmup") warmup = ParseCount(a, v);
      else if (a == "--threads") threads = ParseThreads(v);
      else if (a == "--tvm-runtime") options.tvm_runtime = v;
      else options.cuda_kernel_dirs.push_back(v);  // --kernels
    }
    if (lib.empty() || input.empty()) throw std::invalid_argument("--lib and --input are required");
    // --threads, else $TVM_NUM_THREADS, else $OMP_NUM_THREADS, else all usable CPUs; set
    // before the TVM runtime loads (its thread pool reads TVM_NUM_THREADS when it starts)
    if (threads == 0) threads = mdtrack::ResolveThreads(0, &threads_from);
    options.num_threads = threads;
    if (!output.empty()) {  // before minutes of loading: the folder must exist and take files
      if (!EndsWith(output, ".npy") && !EndsWith(output, ".f32")) {
        throw std::invalid_argument("--output " + output + ": name a .npy file (numpy) or a .f32 file (raw float32)");
      }
      // the output is written through OUTPUT.tmp, renamed onto OUTPUT: either may be an input
      for (const std::string& o : {output, output + ".tmp"}) {
        for (const auto& in : {std::make_pair("--lib", lib), std::make_pair("--input", input),
                               std::make_pair("--tvm-runtime", options.tvm_runtime)}) {
          if (SameFile(o, in.second)) {
            throw std::invalid_argument("--output " + output + (o == output ? "" : " (written through " + o + ")") +
                                        " is the " + in.first + " file " + in.second +
                                        ": writing the features would destroy it; give another --output path");
          }
        }
      }
      const size_t slash = output.find_last_of('/');
      const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : output.substr(0, slash));
      struct stat st;
      if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        throw std::invalid_argument("--output " + output + ": folder " + dir + " does not exist");
      }
      if (access(dir.c_str(), W_OK) != 0) throw std::invalid_argument("--output " + output + ": folder " + dir + " is not writable");
      if (stat(output.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        throw std::invalid_argument("--output " + output + " is a folder; give a file path");
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << " (see --help)\n";  // one line: the usage is on --help
    return 2;
  }

  try {
    const mdtrack::DeviceSpec device = mdtrack::DeviceSpec::Parse(device_text);
    std::vector<int64_t> shape;
    if (!shape_text.empty()) shape = mdtrack::ParseShape(shape_text);
    mdtrack::FloatArray patch;
    if (EndsWith(input, ".npy")) {
      patch = mdtrack::ReadNpy(input);
      if (!shape.empty() && shape != patch.shape) {
        throw std::runtime_error(input + " has shape (" + mdtrack::ShapeString(patch.shape) + "), --shape says (" +
                                 shape_text + ")");
      }
    } else {
      if (shape.empty()) throw std::invalid_argument("raw input " + input + " needs --shape, e.g. 1,3,192,192");
      patch = mdtrack::ReadRawF32(input, shape);
    }
    if (patch.shape.size() != 4 || patch.shape[0] != 1 || patch.shape[1] != 3) {
      throw std::runtime_error(input + " has shape (" + mdtrack::ShapeString(patch.shape) +
                               "); the extractor takes one (1,3,H,W) patch");
    }

    using Clock = std::chrono::steady_clock;
    auto ms = [](Clock::time_point a, Clock::time_point b) {
      return std::chrono::duration<double, std::milli>(b - a).count();
    };
    const auto t0 = Clock::now();
    const std::string runtime = mdtrack::LoadTvmRuntime(options, device.cuda);
    mdtrack::FeatureExtractor fx(lib, device, patch.shape, options);
    if (fx.manifest().empty()) {
      std::cerr << "warning: no manifest.json beside " << lib
                << ": its integrity cannot be checked (a set from `python -m export` has one; copy it with the "
                   "libraries)"
                << std::endl;
    }
    std::vector<float> feat;
    fx.Run(patch.data.data(), &feat);  // the first run allocates the VM's memory pools
    const double load_ms = ms(t0, Clock::now());
    if (!output.empty()) {
      if (EndsWith(output, ".npy")) mdtrack::WriteNpy(output, fx.output_shape(), feat);
      else mdtrack::WriteRawF32(output, feat);
    }
    std::vector<float> scratch;
    if (repeat == 0) warmup = 0;  // nothing to time
    for (int i = 0; i < warmup; ++i) fx.Run(patch.data.data(), &scratch);
    std::vector<double> times;
    for (int i = 0; i < repeat; ++i) {
      const auto a = Clock::now();
      fx.Run(patch.data.data(), &scratch);
      times.push_back(ms(a, Clock::now()));
    }
    double median = NAN, p95 = NAN, mn = NAN, mean = NAN;
    if (!times.empty()) {
      std::vector<double> s = times;
      std::sort(s.begin(), s.end());
      const size_t n = s.size();
      median = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
      p95 = s[static_cast<size_t>(std::ceil(0.95 * n)) - 1];  // nearest rank
      mn = s.front();
      double sum = 0;
      for (double t : s) sum += t;
      mean = sum / n;
    }
    std::ostringstream js;
    js << "{\"lib\": " << JsonString(lib) << ", \"device\": " << JsonString(device.str())
       << ", \"input_shape\": " << JsonShape(patch.shape) << ", \"output_shape\": " << JsonShape(fx.output_shape())
       << ", \"load_ms\": " << JsonNumber(load_ms) << ", \"warmup\": " << warmup << ", \"repeat\": " << repeat
       << ", \"median_ms\": " << JsonNumber(median) << ", \"p95_ms\": " << JsonNumber(p95)
       << ", \"min_ms\": " << JsonNumber(mn) << ", \"mean_ms\": " << JsonNumber(mean)
       << ", \"output\": " << (output.empty() ? std::string("null") : JsonString(output))
       << ", \"tvm_runtime\": " << JsonString(runtime) << ", \"threads\": " << mdtrack::TvmThreads()
       << ", \"threads_from\": " << JsonString(threads_from) << "}";
    std::cout << js.str() << std::endl;
  } catch (const std::exception& e) {
    std::string msg = e.what();  // one line: TVM's errors carry line breaks and context
    for (char& c : msg) {
      if (c == '\n') c = ' ';
    }
    std::cerr << "error: " << msg << std::endl;
    return 2;
  }
  return 0;
}
