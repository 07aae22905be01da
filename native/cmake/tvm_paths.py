"""Print where the installed apache-tvm / apache-tvm-ffi wheels keep headers, libraries and
sources, as KEY=VALUE lines for CMake. Does not import tvm itself (that would load the
260 MB compiler library); tvm_ffi's own libinfo helpers answer for tvm-ffi."""
import importlib.metadata
import importlib.util
import os
import sys


def main() -> int:
    try:
        import tvm_ffi.libinfo as ffi_info
    except ImportError as e:
        print(f"cannot import tvm_ffi: {e}", file=sys.stderr)
        return 1
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        print("apache-tvm is not installed for this interpreter", file=sys.stderr)
        return 1
    tvm_dir = list(spec.submodule_search_locations)[0]
    out = {
        "TVM_FFI_INCLUDE_DIR": ffi_info.find_include_path(),
        "TVM_FFI_DLPACK_INCLUDE_DIR": ffi_info.find_dlpack_include_path(),
        "TVM_FFI_LIBRARY": ffi_info.find_libtvm_ffi(),
        "TVM_FFI_SOURCE_DIR": ffi_info.find_source_path(),
        "TVM_INCLUDE_DIR": os.path.join(tvm_dir, "include"),
        "TVM_WHEEL_RUNTIME_LIBRARY": os.path.join(tvm_dir, "lib", "libtvm_runtime.so"),
        "TVM_WHEEL_RUNTIME_CUDA_LIBRARY": os.path.join(tvm_dir, "lib", "libtvm_runtime_cuda.so"),
        "TVM_VERSION": importlib.metadata.version("apache-tvm"),
        "TVM_FFI_VERSION": importlib.metadata.version("apache-tvm-ffi"),
    }
    for k, v in out.items():
        print(f"{k}={os.path.realpath(v) if os.path.isabs(str(v)) else v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
