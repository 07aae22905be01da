"""CUDA kernels of a TVM-CUDA set compiled ahead of time, with NVRTC from CUDA 12.2.

TVM 0.27, building where there is no CUDA driver, stores a library's kernels as CUDA C source,
and the runtime compiles that source each time a process loads the library: the native
runner with nvcc on the device (seconds per bucket on a Jetson's CPU, and a board without nvcc
cannot run at all), unless ``kernels/<sha256 of the source>.cubin`` lies next to the library.
The export writes those cubins when the ``cuda-kernels`` extra is installed.

CUDA 12.2 is JetPack 6.0's: the oldest CUDA the runner is built for (glibc >= 2.34). A cubin
loads on a driver of its compiler's CUDA or newer, so 12.2's load on every JetPack 6 board and
on desktop drivers of CUDA 12.2 or newer; this machine's nvcc (CUDA 13) compiles cubins that a
JetPack 6 driver is not documented to load. NVRTC 12.2 compiles for sm_50 to sm_90: sets for
newer GPUs keep their kernels as source, compiled on load.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from pathlib import Path

# The CUDA whose NVRTC the extra pins (pyproject's cuda-kernels).
WANT = (12, 2)
EXTRA = "pip install -e '.[cuda-kernels]'"


def cuda_module(mod):
    """The CUDA module among ``mod`` and its imports, or None."""
    if mod.kind == "cuda":
        return mod
    for m in mod.imports:
        found = cuda_module(m)
        if found is not None:
            return found
    return None


def _include_dirs() -> list:
    """The CUDA headers NVRTC needs for TVM's kernels: the runtime's (cuda_runtime.h, cuda_fp16.h)
    and CCCL's (cuda/std, nv/target), from their wheels."""
    dirs = []
    for name in ("nvidia.cuda_runtime", "nvidia.cuda_cccl"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{name} is not installed")
        dirs.append(Path(list(spec.submodule_search_locations)[0]) / "include")
    return dirs


def nvrtc_version():
    """(major, minor) of the NVRTC that ``cuda.bindings`` loads, or a line saying why there is none."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return "cuda-bindings is not installed"
    try:
        _include_dirs()
    except RuntimeError as e:
        return f"the CUDA headers are not installed ({e})"
    try:
        res, major, minor = nvrtc.nvrtcVersion()
    except Exception as e:  # cuda.pathfinder's own error when no libnvrtc is found
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"no NVRTC library was found ({first.split(':')[0]})"
    if res != nvrtc.nvrtcResult.NVRTC_SUCCESS or major != WANT[0]:
        return f"NVRTC {major}.{minor} is installed, and CUDA 12 drivers (JetPack 6) need kernels from NVRTC 12"
    return (int(major), int(minor))


def supports(arch: str) -> bool:
    """Whether the installed NVRTC compiles for ``arch`` ("sm_87"; NVRTC 12.2 stops at sm_90)."""
    from cuda.bindings import nvrtc

    res, archs = nvrtc.nvrtcGetSupportedArchs()
    return res == nvrtc.nvrtcResult.NVRTC_SUCCESS and int(arch.removeprefix("sm_")) in set(archs)


def kernel_compiler(target, log):
    """NVRTC's (major, minor) when the kernels of ``target`` (a CUDA CompileTarget) can be
    precompiled here, else None, logged with the reason and what happens instead."""
    v = nvrtc_version()
    later = "the native runner compiles them with nvcc on the device whenever it loads a library"
    if isinstance(v, str):
        log(f"tvm   {target.name:18s} kernels not precompiled: {v}; {later} ({EXTRA} precompiles them here)")
        return None
    arch = target.target["arch"]
    if not supports(arch):
        log(f"tvm   {target.name:18s} kernels not precompiled: NVRTC {v[0]}.{v[1]} does not compile for {arch}; {later}")
        return None
    if v != WANT:
        log(f"tvm   {target.name:18s} kernels precompiled with NVRTC {v[0]}.{v[1]}, not {WANT[0]}.{WANT[1]}: "
            f"they load on drivers of CUDA {v[0]}.{v[1]} or newer")
    return v


@contextlib.contextmanager
def _cuda_path():
    """A CUDA_PATH for TVM's NVRTC compile: one include folder holding both wheels' headers
    (TVM passes ``$CUDA_PATH/include`` to NVRTC)."""
    with tempfile.TemporaryDirectory() as tmp:
        inc = Path(tmp) / "include"
        inc.mkdir()
        for d in _include_dirs():
            for entry in d.iterdir():
                if not entry.name.startswith("__") and not (inc / entry.name).exists():
                    (inc / entry.name).symlink_to(entry)
        old = os.environ.get("CUDA_PATH")
        os.environ["CUDA_PATH"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("CUDA_PATH", None)
            else:
                os.environ["CUDA_PATH"] = old


@contextlib.contextmanager
def _locale_kept():
    """NVRTC switches the calling thread to the C locale (``uselocale``) and leaves it there:
    Python's default text encoding then turns ASCII for the rest of the process, and writing a
    non-ASCII file fails. Put the thread's locale back."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.uselocale.restype = ctypes.c_void_p
    libc.uselocale.argtypes = [ctypes.c_void_p]
    before = libc.uselocale(None)  # NULL: only asks
    try:
        yield
    finally:
        libc.uselocale(before)


def precompile(executable, library, arch: str, out_dir) -> str | None:
    """Compile the CUDA source that ``library`` (the exported ``executable``) carries into
    ``out_dir/<sha256 of the source>.cubin`` for ``arch`` (e.g. "sm_87"), the name the native
    runner looks up; returns that file's name, or None when the library carries no CUDA
    source (compiled kernels: a build on a machine with a CUDA driver). Raises RuntimeError
    with NVRTC's log when the source does not compile."""
    from tvm.support.nvcc import compile_cuda

    from runtime.artifacts import kernel_stem

    cuda = cuda_module(executable.mod)
    src = cuda.inspect_source("cuda") if cuda is not None else ""
    if not src or src.encode() not in Path(library).read_bytes():
        return None
    name = f"{kernel_stem(src)}.cubin"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _cuda_path(), _locale_kept():
        cubin = compile_cuda(src, target_format="cubin", arch=arch, compiler="nvrtc")
    (out / name).write_bytes(bytes(cubin))
    return name
