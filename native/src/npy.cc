#include "mdtrack/npy.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sys/stat.h>
#include <sstream>
#include <stdexcept>

namespace mdtrack {

static_assert(sizeof(float) == 4, "float must be 32-bit");

namespace {

bool HostIsLittleEndian() {
  const uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

std::runtime_error Bad(const std::string& path, const std::string& why) {
  return std::runtime_error(path + ": " + why);
}

// Inputs must be regular files: a folder opens as a stream on Linux and reports a huge size.
void RequireRegularFile(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) throw Bad(path, "cannot open (" + std::string(std::strerror(errno)) + ")");
  if (!S_ISREG(st.st_mode)) throw Bad(path, "is not a regular file");
}

// Write through a temporary file renamed into place: a failed write leaves no partial result.
template <typename Fn>
void WriteAtomically(const std::string& path, Fn write) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {  // a device or pipe: write to it, never replace it
    std::ofstream f(path, std::ios::binary);
    if (!f) throw Bad(path, "cannot write (" + std::string(std::strerror(errno)) + ")");
    write(f);
    f.flush();
    if (!f) throw Bad(path, "write failed");
    return;
  }
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw Bad(path, "cannot write (" + std::string(std::strerror(errno)) + ")");
    write(f);
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      throw Bad(path, "write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw Bad(path, "cannot write (" + why + ")");
  }
}

// Value of `key` in the header dict, as written by numpy: {'descr': '<f4', ...}.
std::string DictValue(const std::string& header, const std::string& key, const std::string& path) {
  const std::string quoted = "'" + key + "'";
  size_t k = header.find(quoted);
  if (k == std::string::npos) throw Bad(path, "npy header has no " + quoted);
  size_t colon = header.find(':', k + quoted.size());
  if (colon == std::string::npos) throw Bad(path, "malformed npy header");
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (start == std::string::npos) throw Bad(path, "malformed npy header");
  size_t end;
  if (header[start] == '(') {
    end = header.find(')', start);
    if (end == std::string::npos) throw Bad(path, "malformed shape in npy header");
    return header.substr(start, end - start + 1);
  }
  if (header[start] == '\'' || header[start] == '"') {
    end = header.find(header[start], start + 1);
    if (end == std::string::npos) throw Bad(path, "malformed npy header");
    return header.substr(start + 1, end - start - 1);
  }
  end = header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

}  // namespace

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    // the byte count (4 per value) must fit too: an overflow would wrap to a "matching" size
    if (d < 0 || __builtin_mul_overflow(n, d, &n) || n > INT64_MAX / 4) {
      throw std::invalid_argument("shape (" + ShapeString(shape) + ") is too large");
    }
  }
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "," : "") << shape[i];
  return os.str();
}

namespace {

// One dimension: digits only (no sign or blanks inside), below 10^18; -1 when it is not one.
int64_t ParseDim(const std::string& item) {
  if (item.empty() || item.size() > 18 || item.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(item);
}

std::string Trim(const std::string& s) {
  const size_t a = s.find_first_not_of(' '), b = s.find_last_not_of(' ');
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

// Comma-separated items of `text` (blanks around each dropped when `trim`), empty ones kept.
std::vector<std::string> SplitItems(const std::string& text, bool trim) {
  std::vector<std::string> items;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    items.push_back(trim ? Trim(item) : item);
    if (comma == std::string::npos) return items;
    start = comma + 1;
  }
}

// The 'shape' of an .npy header as numpy writes it: a Python tuple, "(1, 3, 192, 192)", "(3,)"
// (the one trailing comma a tuple may have) or "()" (a 0-d array). Dimensions may be 0.
std::vector<int64_t> ParseNpyShape(const std::string& text) {
  const std::string bad = "bad shape " + text + " in the npy header";
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') throw std::invalid_argument(bad);
  const std::string inner = Trim(text.substr(1, text.size() - 2));
  std::vector<int64_t> shape;
  if (inner.empty()) return shape;
  std::vector<std::string> items = SplitItems(inner, true);
  if (items.size() > 1 && items.back().empty()) items.pop_back();  // "(3,)", "(1, 3,)"
  for (const std::string& item : items) {
    const int64_t v = ParseDim(item);
    if (v < 0) throw std::invalid_argument(bad);
    shape.push_back(v);
  }
  return shape;
}

}  // namespace

std::vector<int64_t> ParseShape(const std::string& text) {
  const std::string bad = "bad shape '" + text + "': use whole numbers > 0 separated by commas, e.g. 1,3,192,192";
  if (text.empty()) throw std::invalid_argument("empty shape: use e.g. 1,3,192,192");
  std::vector<int64_t> shape;
  // digits and commas only: an empty item ("1,,3", "1,3,"), a blank or a sign is an error
  for (const std::string& item : SplitItems(text, false)) {
    const int64_t v = ParseDim(item);
    if (v <= 0) throw std::invalid_argument(bad);
    shape.push_back(v);
  }
  return shape;
}

FloatArray ReadNpy(const std::string& path) {
  RequireRegularFile(path);
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw Bad(path, "cannot open");
  const int64_t file_size = static_cast<int64_t>(f.tellg());
  f.seekg(0);
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw Bad(path, "not an .npy file");
  const int major = static_cast<unsigned char>(magic[6]);
  uint32_t hlen = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!f.read(reinterpret_cast<char*>(b), 2)) throw Bad(path, "truncated npy header");
    hlen = b[0] | (b[1] << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!f.read(reinterpret_cast<char*>(b), 4)) throw Bad(path, "truncated npy header");
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  } else {
    throw Bad(path, "unsupported npy version " + std::to_string(major));
  }
  std::string header(hlen, '\0');
  if (!f.read(&header[0], hlen)) throw Bad(path, "truncated npy header");

  const std::string descr = DictValue(header, "descr", path);
  if (!(descr == "<f4" || (descr == "=f4" && HostIsLittleEndian()) || (descr == "|f4"))) {
    throw Bad(path, "dtype " + descr + " is not float32 little-endian ('<f4'); save with x.astype(np.float32)");
  }
  if (DictValue(header, "fortran_order", path) != "False") {
    throw Bad(path, "Fortran-ordered arrays are not supported; save np.ascontiguousarray(x)");
  }
  FloatArray out;
  const std::string shape = DictValue(header, "shape", path);
  try {
    out.shape = ParseNpyShape(shape);
  } catch (const std::invalid_argument& e) {
    throw Bad(path, e.what());
  }
  int64_t n = 0;
  try {
    n = NumElements(out.shape);
  } catch (const std::invalid_argument& e) {
    throw Bad(path, e.what());
  }
  // checked against the file before allocating: a corrupt header must not ask for terabytes
  if (n * 4 > file_size - static_cast<int64_t>(f.tellg())) {
    throw Bad(path, "holds fewer than the " + std::to_string(n) + " values of shape (" + ShapeString(out.shape) + ")");
  }
  out.data.resize(static_cast<size_t>(n));
  if (!f.read(reinterpret_cast<char*>(out.data.data()), n * 4)) {
    throw Bad(path, "holds fewer than the " + std::to_string(n) + " values of shape (" + ShapeString(out.shape) + ")");
  }
  if (!HostIsLittleEndian()) {
    for (float& v : out.data) {
      unsigned char* p = reinterpret_cast<unsigned char*>(&v);
      std::swap(p[0], p[3]);
      std::swap(p[1], p[2]);
    }
  }
  return out;
}

void WriteNpy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<float>& data) {
  if (NumElements(shape) != static_cast<int64_t>(data.size())) throw Bad(path, "shape does not match the data");
  if (!HostIsLittleEndian()) throw Bad(path, "writing .npy on a big-endian host is not supported");
  std::string dims;
  for (size_t i = 0; i < shape.size(); ++i) dims += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                 static_cast<unsigned char>(header.size() & 0xff),
                                 static_cast<unsigned char>(header.size() >> 8)};
  WriteAtomically(path, [&](std::ofstream& f) {
    f.write(reinterpret_cast<const char*>(pre), 10);
    f.write(header.data(), header.size());
    f.write(reinterpret_cast<const char*>(data.data()), data.size() * 4);
  });
}

FloatArray ReadRawF32(const std::string& path, const std::vector<int64_t>& shape) {
  RequireRegularFile(path);
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw Bad(path, "cannot open");
  const int64_t size = static_cast<int64_t>(f.tellg());
  const int64_t n = NumElements(shape);
  if (size != n * 4) {
    throw Bad(path, "has " + std::to_string(size) + " bytes but shape (" + ShapeString(shape) + ") needs " +
                        std::to_string(n * 4) + " (raw little-endian float32)");
  }
  f.seekg(0);
  FloatArray out{shape, std::vector<float>(static_cast<size_t>(n))};
  f.read(reinterpret_cast<char*>(out.data.data()), size);
  if (!f) throw Bad(path, "read failed");
  return out;
}

void WriteRawF32(const std::string& path, const std::vector<float>& data) {
  WriteAtomically(path, [&](std::ofstream& f) { f.write(reinterpret_cast<const char*>(data.data()), data.size() * 4); });
}

}  // namespace mdtrack
