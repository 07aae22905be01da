// Minimal .npy (float32, little-endian, C order) and raw float32 file I/O.
#ifndef MDTRACK_NPY_H_
#define MDTRACK_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace mdtrack {

struct FloatArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

int64_t NumElements(const std::vector<int64_t>& shape);
std::string ShapeString(const std::vector<int64_t>& shape);  // "1,3,192,192"
// "1,3,192,192": whole numbers > 0 separated by commas, nothing else; an empty item ("1,,3",
// "1,3,"), a blank, a sign or parentheses throw std::invalid_argument.
std::vector<int64_t> ParseShape(const std::string& text);

// Reads an .npy file with dtype '<f4' and fortran_order False (versions 1.0 to 3.0).
FloatArray ReadNpy(const std::string& path);
// Writes a version 1.0 .npy file ('<f4', C order).
void WriteNpy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<float>& data);
// Raw little-endian float32 values; the file size must match `shape`.
FloatArray ReadRawF32(const std::string& path, const std::vector<int64_t>& shape);
void WriteRawF32(const std::string& path, const std::vector<float>& data);

}  // namespace mdtrack

#endif  // MDTRACK_NPY_H_
