"""TVM feature backend: one compiled library per bucket, loaded and warmed at start-up."""
from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import numpy as np

from .. import artifacts
from ..devices import device_index
from ..errors import ArtifactError, TrackerInputError
from ..extras import install_hint
from .base import FeatureBackend


_LOADED: dict = {}  # (path, the file's identity) -> module, for this process
_LOAD_LOCK = threading.Lock()


def _load_once(tvm, path: Path):
    """``tvm.runtime.load_module`` once per library file and process: TVM never frees a
    loaded library, so a tracker made and dropped again and again (one per clip) grew by
    about 4 MB each time. A file that replaced one loaded before under the same name (a set
    rebuilt in place) is loaded through a copy of another name: the dynamic loader hands back
    the library it already holds for a name, which would run the old set's code."""
    import shutil
    import tempfile

    real = str(path.resolve())
    st = os.stat(real)
    key = (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _LOAD_LOCK:
        lib = _LOADED.get(key)
        if lib is not None:
            return lib
        if any(k[0] == real for k in _LOADED):
            with tempfile.TemporaryDirectory(prefix="mdtrack-tvm-") as tmp:
                copy = Path(tmp) / f"{st.st_ino}-{st.st_mtime_ns}-{path.name}"
                shutil.copyfile(real, copy)
                lib = tvm.runtime.load_module(str(copy))  # mapped: the copy may go
        else:
            lib = tvm.runtime.load_module(real)
        _LOADED[key] = lib
        return lib


_KERNEL_DIRS: list = []  # the kernels/ folders of the CUDA sets this process loads


def use_precompiled_kernels(folder) -> None:
    """This TVM wheel stores a CUDA library's kernels as source and compiles them when the
    library loads, through a Python callback (nvcc; its NVRTC mode needs cuda-bindings). The
    callback registered here first takes them from the set's ``kernels/``, compiled by the
    export and checked against the set's manifest (export.cuda_kernels: named by the sha256
    of the source), so a machine without nvcc loads such a set, and no load compiles."""
    import tvm_ffi

    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    import tvm.support.nvcc as nvcc

    with _LOAD_LOCK:
        d = Path(folder) / artifacts.KERNELS
        if d not in _KERNEL_DIRS:
            _KERNEL_DIRS.append(d)
        if getattr(use_precompiled_kernels, "registered", False):
            return
        compile_with_nvcc = nvcc.tvm_callback_cuda_compile

        def compile_cuda(code):
            name = artifacts.kernel_stem(code)
            for k in list(_KERNEL_DIRS):
                for ext in artifacts.KERNEL_EXTS:
                    if (k / (name + ext)).is_file():
                        return (k / (name + ext)).read_bytes()
            return compile_with_nvcc(code)

        tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)
        use_precompiled_kernels.registered = True


def ensure_tvm(model, target_name: str, folder=None) -> Path:
    """A verified TVM set: ``folder`` if given; else the cache, where a missing or stale
    host-CPU (llvm) set is built on first use. Other targets must be built with export."""
    if folder is not None:
        artifacts.verify(folder, model, "tvm", target_name)
        return Path(folder)
    folder = artifacts.default_dir(model, target_name)
    problem = _cache_problem(folder, model, target_name)
    if problem is None:
        return folder
    if target_name != "llvm":
        raise problem
    with artifacts.build_lock(folder):
        problem = _cache_problem(folder, model, target_name)
        if problem is None:  # built by another worker while this one waited
            return folder
        print(f"compiling TVM llvm artifacts for {len(model.policy.shapes)} buckets into {folder} "
              f"({'first use' if not folder.exists() else problem})...", file=sys.stderr, flush=True)
        from export.build import build_tvm
        from export.targets import parse

        from .onnx_backend import ensure_onnx

        log = lambda m: print("  " + m, file=sys.stderr, flush=True)  # noqa: E731
        onnx = ensure_onnx(model)
        try:
            build_tvm(model, parse("llvm"), onnx, folder, log=log)
        except OSError as e:
            raise artifacts.cache_write_error(folder, e) from None
        artifacts.verify(folder, model, "tvm", target_name)
    return folder


def _cache_problem(folder, model, target_name: str) -> ArtifactError | None:
    """What makes the cache's set unusable (missing, stale, another tuning database or CPU),
    or None."""
    try:
        m = artifacts.verify(folder, model, "tvm", target_name)
        from export.targets import parse
        from export.tvm_build import tuning_db

        if m.get("tuning_db_sha256") != tuning_db(target_name)[1]:
            # the committed tuning database changed since this cache was built
            return ArtifactError(f"{folder} was built with another tuning database")
        if target_name == "llvm" and m.get("target_dict") != parse("llvm").resolved():
            return ArtifactError(f"{folder} was built for another CPU ({m.get('target_dict')})")
    except ArtifactError as e:
        return e
    return None


def _check_host(folder, target: str) -> None:
    """Refuse a set cross-compiled for another CPU architecture, or an ``llvm`` set (the CPU
    of the machine that built it) compiled for another CPU than this one, before loading its
    code: instructions this CPU lacks would kill the process (SIGILL) at the first frame."""
    m = artifacts.peek_manifest(folder) or {}
    cross = m.get("cross")
    if not artifacts.runs_here(m):
        raise ArtifactError(f"{folder} was cross-compiled for {cross} ({target}) and cannot run on this "
                            f"{artifacts.host_arch()} machine; copy it to the {cross} board, or build for this CPU "
                            f"with: python -m export --targets llvm")
    built = m["target_dict"].get("mcpu") if isinstance(m.get("target_dict"), dict) else None
    if not (built and target.startswith("llvm")):
        return
    from tvm.target import codegen

    here = codegen.llvm_get_system_cpu()
    if built == here:
        return
    if target == "llvm":
        raise ArtifactError(f"{folder} was compiled for the CPU {built} (target llvm: the CPU of the machine that "
                            f"built it), this CPU is {here}; code for another CPU can crash on instructions this "
                            f"one lacks: build for this CPU here with: python -m export --targets llvm, or on the "
                            f"machine that built it with --targets llvm:{here}")
    # llvm:MCPU, built for a named CPU on purpose: it runs where this CPU has its instruction sets
    missing = sorted(_vector_isa(built) - _vector_isa(here))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ArtifactError(f"{folder} was compiled for the CPU {built} ({target}), whose instructions {shown} this "
                            f"CPU ({here}) lacks: it would crash at the first frame; build for this CPU with: "
                            f"python -m export --targets llvm (or llvm:{here})")


# The instruction-set extensions TVM's vectorised code uses: a set compiled with one this CPU
# lacks dies of SIGILL. (LLVM's CPU features also hold tuning hints, which do not matter.)
_VECTOR_ISA = re.compile(r"(avx|amx|sse|ssse|fma|f16c|bmi|evex512|vpclmul|vaes|gfni|xop|neon|sve|sme|dotprod|i8mm|"
                         r"bf16|fullfp16|fp16)")


def _vector_isa(cpu: str) -> set:
    import tvm
    from tvm.target import codegen

    try:
        features = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))
    except Exception:  # a CPU name this LLVM does not know: nothing to compare
        return set()
    return {f for f in features if _VECTOR_ISA.match(f)}


def _manifest_target(folder):
    # only a TVM set names a TVM target; verify() reports a missing, broken or other manifest
    # (a target that is not a string, from a damaged manifest, too: read_manifest names it)
    m = artifacts.peek_manifest(folder) or {}
    target = m.get("target") if m.get("kind") == "tvm" else None
    return target if isinstance(target, str) else None


def _device_mismatch(folder, target: str, device: str):
    """The error for a set built for the other kind of device than ``device``, or None."""
    built_for = "cuda" if target.startswith("cuda") else "cpu"
    if ("cpu" if device == "cpu" else "cuda") == built_for:
        return None
    return ArtifactError(f"{folder} holds {built_for} artifacts ({target}) but --device is {device}; "
                         + ("run it with --device cuda, or pass a CPU set (python -m export --targets llvm)"
                            if built_for == "cuda" else
                            "pass a set built for the GPU (python -m export --targets cuda:sm_XX)"))


def _load_cuda_runtime(tvm) -> None:
    """A TVM that loaded its runtime alone (TVM_USE_RUNTIME_LIB=1, or installed without its
    compiler library) or without its backends (TVM_DEVICE_BACKEND_AUTOLOAD=0) has not loaded
    the CUDA runtime library that a full ``import tvm`` loads (tvm.backend.cuda); load it the
    same way, so that a CUDA set runs with the runtime alone."""
    loaded = getattr(tvm.base, "_LOADED_LIBS", None)
    if loaded is None or "tvm_runtime_cuda" in loaded or "tvm_runtime" not in loaded:
        return
    from tvm_ffi.libinfo import load_lib_ctypes

    try:
        loaded["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda", mode="RTLD_LOCAL",
            extra_lib_paths=[Path(loaded["tvm_runtime"]._name).resolve().parent])
    except (OSError, RuntimeError):  # no driver or libcudart: the device check below says so
        pass


class TVMBackend(FeatureBackend):
    name = "tvm"

    def __init__(self, model, device: str = "cpu", artifacts=None, target: str | None = None):
        super().__init__(model, device)
        try:
            import tvm
            from tvm.runtime.vm import VirtualMachine  # relax's, without TVM's compiler
        except ImportError:
            raise TrackerInputError(f"the tvm backend needs apache-tvm: {install_hint('export')}") from None
        if target is None and artifacts is not None:
            target = _manifest_target(artifacts)
            if target is None:  # no TVM set there: say what is there instead
                from ..artifacts import missing_set, read_manifest, rebuild_command  # "artifacts" is shadowed

                wanted = "llvm" if device == "cpu" else "cuda-sm_XX"  # the set this device would load
                if not Path(artifacts).exists():
                    raise missing_set(Path(artifacts), model, wanted)
                read_manifest(artifacts, "tvm", "build one with: "
                              + rebuild_command(model, wanted, Path("NEW_FOLDER") / wanted)
                              + f", then pass --artifacts NEW_FOLDER/{wanted}")
        if target is None:
            if device != "cpu":
                raise TrackerInputError("--device cuda with tvm needs --artifacts DIR built by "
                                        "`python -m export --targets cuda:sm_XX`")
            target = "llvm"
        if not target.startswith("cuda") and getattr(tvm.base, "_RUNTIME_ONLY", False):
            # a CUDA set needs only the runtime; a CPU set's CPU check (and the cache's build) needs LLVM
            mismatch = _device_mismatch(artifacts, target, device)
            if mismatch is not None:
                raise mismatch
            by_env = os.environ.get("TVM_USE_RUNTIME_LIB") == "1"
            how, fix = (("TVM_USE_RUNTIME_LIB=1 loaded TVM's runtime alone", "unset TVM_USE_RUNTIME_LIB") if by_env else
                        ("this TVM has no usable compiler library (libtvm_compiler.so)", "install apache-tvm in full"))
            raise TrackerInputError(f"{how}, and a CPU set needs TVM's compiler (to check the CPU it was built for, "
                                    f"or to build it): {fix}, or use --backend onnxruntime")
        self.folder = ensure_tvm(model, target, artifacts)
        self.target = target
        _check_host(self.folder, target)
        if device != "cpu":
            _load_cuda_runtime(tvm)
        self.dev = tvm.cpu() if device == "cpu" else tvm.cuda(device_index(device))
        mismatch = _device_mismatch(self.folder, target, device)
        if mismatch is not None:
            raise mismatch
        if device != "cpu" and not self.dev.exist:
            # else loading the first library fails with "a loader of that name is not
            # registered", and the advice would be a rebuild that cannot help
            raise TrackerInputError(f"--device {device}: TVM sees no CUDA device {device_index(device)} (no NVIDIA "
                                    f"driver, TVM's libtvm_runtime_cuda.so cannot load, or CUDA_VISIBLE_DEVICES hides "
                                    f"it); use --device cpu with a CPU set (python -m export --targets llvm)")
        if device != "cpu":
            use_precompiled_kernels(self.folder)

        from ..artifacts import bucket_file, check_feature_shape, check_shared_library, rebuild_command

        self._tvm = tvm
        self.vms = []
        fix = f"rebuild with: {rebuild_command(model, target, self.folder)}"
        for b, shape in enumerate(self.policy.shapes):
            path = self.folder / bucket_file(b, shape, "so")
            # before the loader maps it: a truncated library would kill the process (SIGBUS)
            check_shared_library(path, fix, "build for this CPU with: python -m export --targets llvm")
            try:
                lib = _load_once(tvm, path)
            except Exception as e:  # the loader's reason, on one line
                lines = str(e).strip().splitlines()
                raise ArtifactError(f"cannot load {path} ({lines[-1] if lines else type(e).__name__}); {fix}") from None
            x = tvm.runtime.tensor(np.zeros((1, 3) + tuple(shape), np.float32), self.dev)
            vm = VirtualMachine(lib, self.dev)
            try:  # warm-up, and the check that the library computes this bucket's features
                out = vm["main"](x).numpy()
            except Exception as e:
                # another bucket's library under this name fails TVM's input shape check; any
                # other failure (out of device memory, a driver problem) is not the file's
                if "match_cast" not in str(e) and "shape" not in str(e).lower():
                    raise
                lines = str(e).strip().splitlines()
                raise ArtifactError(f"{path} does not run on a {tuple(shape)} patch "
                                    f"({lines[-1] if lines else type(e).__name__}); {fix}") from None
            check_feature_shape(path, out, model, b, fix)
            self.vms.append((vm["main"], x))

    def extract(self, bucket: int, patch: np.ndarray) -> np.ndarray:
        self._check(bucket, patch)
        fn, x = self.vms[bucket]
        x.copyfrom(patch)
        return fn(x).numpy()
