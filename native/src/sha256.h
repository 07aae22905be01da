// SHA-256 (FIPS 180-4) of a byte string, as lowercase hex. Used to key precompiled CUDA
// kernels by the CUDA source a library carries.
#ifndef MDTRACK_SHA256_H_
#define MDTRACK_SHA256_H_

#include <cstddef>
#include <string>

namespace mdtrack {

std::string Sha256Hex(const void* data, size_t size);

}  // namespace mdtrack

#endif  // MDTRACK_SHA256_H_
