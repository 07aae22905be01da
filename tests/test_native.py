"""The native runner (CMakeLists.txt, native/): built with CMake, run on a TVM-llvm library,
features equal to the Python TVM path's; the aarch64 cross build gives aarch64 ELF files."""
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
EM_AARCH64, EM_X86_64 = 183, 62


def _cxx():
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _build(build_dir: Path, *extra, timeout=900):
    """Configure and build the root CMakeLists.txt into ``build_dir`` (skips without cmake)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed (apt-get install cmake)")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *gen, f"-DTVM_PYTHON={sys.executable}", *extra],
                         capture_output=True, text=True, timeout=timeout)
    assert cfg.returncode == 0, f"cmake configure failed:\n{cfg.stdout[-3000:]}\n{cfg.stderr[-3000:]}"
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    b = subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], capture_output=True, text=True, timeout=timeout)
    assert b.returncode == 0, f"cmake build failed:\n{b.stdout[-4000:]}\n{b.stderr[-3000:]}"
    return build_dir


def _elf_machine(path: Path):
    """(ELF class, e_machine) of ``path``; class 2 is 64-bit."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert head[5] == 1, f"{path} is not little-endian"
    return head[4], struct.unpack("<H", head[18:20])[0]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    if _cxx() is None:
        pytest.skip("no C++ compiler (apt-get install g++)")
    d = _build(tmp_path_factory.mktemp("native") / "build")
    exe = d / "mdtrack_features"
    assert exe.is_file()
    return exe


@pytest.fixture(scope="module")
def llvm_bucket(tiny_model, tmp_path_factory):
    """The tiny model's smallest bucket exported to ONNX and compiled for this CPU."""
    from export.onnx_export import export_bucket
    from export.targets import parse
    from export.tvm_build import build_bucket
    from runtime.model import load_model

    model = load_model(tiny_model)
    b = min(range(len(model.policy.shapes)), key=lambda i: model.policy.shapes[i][0] * model.policy.shapes[i][1])
    h, w = model.policy.shapes[b]
    out = tmp_path_factory.mktemp("bucket")
    onnx_path = export_bucket(model, b, out / f"bucket{b}_{h}x{w}.onnx")
    lib = build_bucket(onnx_path, parse("llvm"), out / f"bucket{b}_{h}x{w}.so")
    return lib, (1, 3, h, w), model.channels


def _python_tvm(lib: Path, x: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _run(exe, *args, timeout=300):
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_native_features_match_python_tvm_and_timing_is_reported(runner, llvm_bucket, tmp_path):
    lib, shape, channels = llvm_bucket
    x = np.random.default_rng(7).uniform(-128, 128, shape).astype(np.float32)
    np.save(tmp_path / "patch.npy", x)
    ref = _python_tvm(lib, x)
    assert ref.shape == (1, channels, shape[2] // 8, shape[3] // 8)

    r = _run(runner, "--lib", lib, "--input", tmp_path / "patch.npy", "--shape", ",".join(map(str, shape)),
             "--output", tmp_path / "feat.npy", "--device", "cpu", "--repeat", 5, "--warmup", 1)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout
    info = json.loads(lines[0])
    feat = np.load(tmp_path / "feat.npy")
    assert feat.shape == ref.shape and feat.dtype == np.float32
    assert np.abs(feat - ref).max() <= 1e-5
    assert info["output_shape"] == list(ref.shape) and info["input_shape"] == list(shape)
    assert info["repeat"] == 5 and info["warmup"] == 1 and info["device"] == "cpu"
    assert 0 < info["min_ms"] <= info["median_ms"] <= info["p95_ms"]
    assert Path(info["tvm_runtime"]).name == "libtvm_runtime.so"

    # raw float32 in and out
    x.tofile(tmp_path / "patch.f32")
    r = _run(runner, "--lib", lib, "--input", tmp_path / "patch.f32", "--shape", ",".join(map(str, shape)),
             "--output", tmp_path / "feat.f32", "--repeat", 0)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["median_ms"] is None
    raw = np.fromfile(tmp_path / "feat.f32", np.float32).reshape(ref.shape)
    assert np.abs(raw - ref).max() <= 1e-5


@pytest.mark.slow
def test_native_runner_reports_bad_input_with_exit_code_2(runner, llvm_bucket, tmp_path):
    lib, shape, _ = llvm_bucket
    x = np.zeros(shape, np.float32)
    x.tofile(tmp_path / "patch.f32")
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3, 8, 8), np.float64))
    cases = [
        (["--lib", lib, "--input", tmp_path / "patch.f32"], "needs --shape"),
        (["--lib", lib, "--input", tmp_path / "patch.f32", "--shape", "1,3,8,8"], "bytes but shape"),
        (["--lib", lib, "--input", tmp_path / "wrong.npy"], "not float32"),
        (["--lib", tmp_path / "missing.so", "--input", tmp_path / "patch.f32", "--shape", ",".join(map(str, shape))],
         "no such file"),
        (["--lib", lib, "--input", tmp_path / "patch.f32", "--shape", ",".join(map(str, shape)),
          "--tvm-runtime", tmp_path / "nope.so"], "cannot load the TVM runtime"),
        (["--lib", lib, "--input", tmp_path / "patch.f32", "--device", "tpu"], "unknown device"),
        (["--frobnicate", "1"], "unknown argument"),
        (["--lib", "--input", tmp_path / "patch.f32"], "--lib needs a value"),
    ]
    # a truncated copy once crashed the process inside dlopen (SIGBUS, nothing on stderr)
    data = Path(lib).read_bytes()
    (tmp_path / "cut.so").write_bytes(data[: len(data) // 2])
    arm = bytearray(data)
    arm[18:20] = struct.pack("<H", 183)  # EM_AARCH64
    (tmp_path / "arm.so").write_bytes(bytes(arm))
    other = np.zeros((1, 3, shape[2] + 8, shape[3]), np.float32)
    np.save(tmp_path / "other.npy", other)
    np.save(tmp_path / "ok.npy", x)
    cases += [
        (["--lib", tmp_path / "cut.so", "--input", tmp_path / "ok.npy"], "truncated"),
        (["--lib", tmp_path / "arm.so", "--input", tmp_path / "ok.npy"], "library for aarch64"),
        (["--lib", lib, "--input", tmp_path / "other.npy"], "another patch size"),
        (["--lib", lib, "--input", tmp_path / "ok.npy", "--output", tmp_path / "no" / "f.npy"], "does not exist"),
    ]
    for args, msg in cases:
        r = _run(runner, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "error:" in r.stderr and msg in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)  # one line, no usage dump


@pytest.mark.slow
def test_native_runner_threads_option_and_default(runner, llvm_bucket, tmp_path):
    """--threads sizes TVM's CPU thread pool; without it TVM_NUM_THREADS, then OMP_NUM_THREADS,
    then all usable CPUs (TVM alone would take half of them on x86). Bad values: one line, exit 2."""
    lib, shape, _ = llvm_bucket
    np.save(tmp_path / "ok.npy", np.zeros(shape, np.float32))
    base = ["--lib", lib, "--input", tmp_path / "ok.npy", "--repeat", 1, "--warmup", 0]
    clean = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}

    def run(*args, **env):
        return subprocess.run([str(runner), *map(str, base), *map(str, args)], capture_output=True, text=True,
                              timeout=300, env=dict(clean, **env))

    for bad in ("0", "abc", "-1", "2x", "1.5", "100000"):
        r = run("--threads", bad)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert r.stderr.startswith("error: --threads needs a whole number"), (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
    r = run(TVM_NUM_THREADS="many")
    assert r.returncode == 2 and "TVM_NUM_THREADS='many'" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    def threads(r):
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["median_ms"] > 0  # the other fields are still there
        return info["threads"], info["threads_from"]

    assert threads(run("--threads", 2)) == (2, "--threads")
    assert threads(run("--threads", 2, TVM_NUM_THREADS="1")) == (2, "--threads")  # the option wins
    assert threads(run(TVM_NUM_THREADS="1", OMP_NUM_THREADS="3")) == (1, "TVM_NUM_THREADS")
    assert threads(run(OMP_NUM_THREADS="1")) == (1, "OMP_NUM_THREADS")
    assert threads(run()) == (len(os.sched_getaffinity(0)), "cpus")


@pytest.mark.slow
def test_native_runner_native_build_is_this_machines_elf(runner):
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("checks the x86-64 build")
    assert _elf_machine(runner) == (2, EM_X86_64)
    assert _elf_machine(runner.parent / "libmdtrack_native.so") == (2, EM_X86_64)


@pytest.mark.slow
def test_aarch64_cross_build_produces_aarch64_elf(tmp_path):
    """The cross build compiles libtvm_ffi from the apache-tvm-ffi wheel's sources, then the
    runner, for aarch64. Built at -O0 here to keep the suite quick (the Release build differs
    only in optimisation)."""
    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ is not installed (apt-get install g++-aarch64-linux-gnu)")
    d = _build(tmp_path / "build-arm", f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'aarch64-linux-gnu.cmake'}",
               "-DCMAKE_BUILD_TYPE=None", "-DCMAKE_CXX_FLAGS=-O0")
    for f in (d / "mdtrack_features", d / "libmdtrack_native.so", d / "lib" / "libtvm_ffi.so"):
        assert f.is_file(), f
        assert _elf_machine(f) == (2, EM_AARCH64), f
    # An executable (ET_EXEC, or ET_DYN for a PIE) with the aarch64 dynamic loader.
    exe = (d / "mdtrack_features").read_bytes()
    assert struct.unpack("<H", exe[16:18])[0] in (2, 3)
    assert b"/lib/ld-linux-aarch64.so.1" in exe


@pytest.mark.slow
def test_gpu_pack_builds_and_its_cpu_part_runs(runner, tmp_path):
    """One-bucket GPU pack (reusing the runner's CMake build): contents, size, and run.sh here,
    where CUDA is normally unusable (exit 3, CPU parity checked) or, on a GPU machine, 0."""
    from benchmarks.gpu_pack import build_pack, find_nvcc

    pack = tmp_path / "pack"
    info = build_pack(ROOT / "models" / "default", pack, buckets=[0], build_dir=runner.parent, max_mb=60)
    assert info["size_mb"] < 60
    name = info["buckets"][0]["name"]
    for f in ("bin/mdtrack_features", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "lib/libmdtrack_native.so",
              f"cuda/{name}.so", f"cpu/{name}.so", f"patches/{name}.npy", f"reference/{name}.npy",
              "weights.npz", "torch_ref.py", "run.sh", "pack.json"):
        assert (pack / f).is_file(), f
    assert os.access(pack / "run.sh", os.X_OK)
    if find_nvcc():
        assert (pack / info["buckets"][0]["kernels"]).is_file()
    env = dict(os.environ, PYTHON=sys.executable, REPEAT="1", WARMUP="0")
    r = subprocess.run(["bash", str(pack / "run.sh"), str(tmp_path / "results")], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode in (0, 3), r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert summary["ok"]
    row = summary["buckets"][0]
    assert row["tvm_cpu_vs_ref"]["max_rel"] <= 1e-4
    if r.returncode == 3:
        assert "CUDA NOT AVAILABLE" in r.stdout
