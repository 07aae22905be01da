# Cross-compile for 64-bit Arm Linux boards with Debian's cross toolchain
# (apt-get install g++-aarch64-linux-gnu):
#   cmake -S . -B build-arm -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake && cmake --build build-arm
# MDTRACK_CROSS_PREFIX picks another triple prefix (e.g. a vendor SDK's).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

if(NOT MDTRACK_CROSS_PREFIX)
  set(MDTRACK_CROSS_PREFIX aarch64-linux-gnu-)
endif()
set(CMAKE_C_COMPILER ${MDTRACK_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${MDTRACK_CROSS_PREFIX}g++)
# Let try_compile runs (and sub-builds) see the same setting.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES MDTRACK_CROSS_PREFIX)

# Target libraries and headers come from the cross sysroot; programs (python3 that locates
# the TVM wheels) from the build machine.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
