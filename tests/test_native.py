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
    """The tiny model's smallest bucket exported to ONNX and compiled for this CPU, with the
    manifest.json the exporter writes beside a set's libraries (the runner checks it)."""
    from export.onnx_export import export_bucket
    from export.targets import parse
    from export.tvm_build import build_bucket
    from runtime.artifacts import write_manifest
    from runtime.model import load_model

    model = load_model(tiny_model)
    b = min(range(len(model.policy.shapes)), key=lambda i: model.policy.shapes[i][0] * model.policy.shapes[i][1])
    h, w = model.policy.shapes[b]
    out = tmp_path_factory.mktemp("bucket")
    onnx_path = export_bucket(model, b, out / f"bucket{b}_{h}x{w}.onnx")
    target = parse("llvm")
    lib = build_bucket(onnx_path, target, out / f"bucket{b}_{h}x{w}.so")
    write_manifest(out, model, "tvm", target.name, target.resolved(), [Path(lib).name])
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


def _one_error(r, *fragments):
    """``r`` failed with exit 2 and one ``error:`` line holding every fragment."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert str(f) in lines[0], (f, r.stderr)
    return lines[0]


def _copy_set(lib: Path, folder: Path) -> Path:
    """A copy of the fixture's set (the library and its manifest.json) in ``folder``."""
    folder.mkdir(parents=True)
    shutil.copy2(lib, folder / Path(lib).name)
    shutil.copy2(Path(lib).parent / "manifest.json", folder / "manifest.json")
    return folder / Path(lib).name


@pytest.mark.slow
def test_native_runner_checks_the_library_against_its_manifest(runner, llvm_bucket, tmp_path):
    """A library beside a manifest.json must be listed there with its sha256; without one it
    runs after a warning that its integrity cannot be checked."""
    lib, shape, _ = llvm_bucket
    np.save(tmp_path / "ok.npy", np.zeros(shape, np.float32))
    base = ["--input", tmp_path / "ok.npy", "--repeat", 0]

    r = _run(runner, "--lib", lib, *base)  # the exported set: checked, nothing to say
    assert r.returncode == 0 and r.stderr == "", r.stderr
    link = tmp_path / "elsewhere" / "b.so"  # no manifest beside the link: checked against its target's
    link.parent.mkdir()
    link.symlink_to(lib)
    r = _run(runner, "--lib", link, *base)
    assert r.returncode == 0 and r.stderr == "", r.stderr

    # bytes appended: a library that still loads and runs, so only the manifest can tell
    tampered = _copy_set(lib, tmp_path / "tampered")
    tampered.write_bytes(tampered.read_bytes() + b"\0" * 64)
    _one_error(_run(runner, "--lib", tampered, *base), tampered, "does not match the manifest",
               "export the set again", "copy the whole set")
    # stale: a library from another export next to this manifest
    stale = _copy_set(lib, tmp_path / "stale")
    m = json.loads((stale.parent / "manifest.json").read_text())
    m["files"][stale.name] = "0" * 64
    (stale.parent / "manifest.json").write_text(json.dumps(m, indent=2))
    _one_error(_run(runner, "--lib", stale, *base), stale, "does not match the manifest")
    # a file the manifest does not list (renamed, or copied into another set's folder)
    renamed = stale.parent / "renamed.so"
    shutil.copy2(lib, renamed)
    _one_error(_run(runner, "--lib", renamed, *base), "renamed.so is not listed in", "manifest.json")
    # a manifest that is not one
    broken = _copy_set(lib, tmp_path / "broken")
    (broken.parent / "manifest.json").write_text('{"files": {')
    _one_error(_run(runner, "--lib", broken, *base), "manifest.json", "not valid JSON", "export the set again")

    # no manifest: runs, with one warning line, and the same features
    alone = tmp_path / "alone" / "b.so"
    alone.parent.mkdir()
    shutil.copy2(tampered, alone)
    r = _run(runner, "--lib", alone, *base)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output_shape"]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: ") and str(alone) in lines[0], r.stderr
    assert "integrity cannot be checked" in lines[0]


@pytest.mark.slow
def test_native_runner_checks_a_sets_precompiled_kernels(runner, llvm_bucket, tmp_path):
    """The kernels a manifest lists for a library (export.cuda_kernels' cubins) are checked
    before the library loads, as runtime.artifacts.check_files checks them: the set's own file,
    present, with its sha256. The check reads only the manifest, so a CPU library with an
    entry added shows it here; a CUDA library would load the cubin by its name alone."""
    import hashlib

    lib, shape, _ = llvm_bucket
    np.save(tmp_path / "ok.npy", np.zeros(shape, np.float32))
    base = ["--input", tmp_path / "ok.npy", "--repeat", 0]

    def with_kernels(folder, data=b"cubin bytes", file="kernels/" + "a" * 64 + ".cubin", digest=None):
        copy = _copy_set(lib, tmp_path / folder)
        m = json.loads((copy.parent / "manifest.json").read_text())
        m["kernels"] = {copy.name: {"file": file, "sha256": digest or hashlib.sha256(data).hexdigest()}}
        (copy.parent / "manifest.json").write_text(json.dumps(m, indent=2))
        (copy.parent / "kernels").mkdir()
        (copy.parent / "kernels" / ("a" * 64 + ".cubin")).write_bytes(data)
        return copy, copy.parent / "kernels" / ("a" * 64 + ".cubin")

    good, _ = with_kernels("good")
    r = _run(runner, "--lib", good, *base)
    assert r.returncode == 0 and r.stderr == "", r.stderr

    damaged, cubin = with_kernels("damaged")
    cubin.write_bytes(b"cubin bytez")
    _one_error(_run(runner, "--lib", damaged, *base), cubin, "precompiled kernels of", "does not match the manifest",
               "export the set again")
    missing, cubin = with_kernels("missing")
    cubin.unlink()
    _one_error(_run(runner, "--lib", missing, *base), cubin, "is missing", "export the set again")
    outside, _ = with_kernels("outside", file="../" + "a" * 64 + ".cubin")
    _one_error(_run(runner, "--lib", outside, *base), "not a file in the set's kernels/ folder")
    table, _ = with_kernels("table")  # "kernels" that is no table, an entry that is no object
    m = json.loads((table.parent / "manifest.json").read_text())
    (table.parent / "manifest.json").write_text(json.dumps(dict(m, kernels=["x"])))
    _one_error(_run(runner, "--lib", table, *base), "\"kernels\" entry that is not a table")
    (table.parent / "manifest.json").write_text(json.dumps(dict(m, kernels={table.name: "x"})))
    _one_error(_run(runner, "--lib", table, *base), "not a file in the set's kernels/ folder")
    linked, cubin = with_kernels("linked")
    (tmp_path / "elsewhere.cubin").write_bytes(b"cubin bytes")
    cubin.unlink()
    cubin.symlink_to(tmp_path / "elsewhere.cubin")
    _one_error(_run(runner, "--lib", linked, *base), "outside its set's folder", "cp -L")


@pytest.mark.slow
def test_native_runner_checks_a_link_beside_its_given_name(runner, llvm_bucket, tmp_path):
    """A library is checked against the manifest.json beside the path given, by the name
    given: `set/bucket.so -> cache/x.so` was checked against cache/manifest.json (absent: a
    false "no manifest.json" warning though set/ lists it). A link that leads out of its
    set's folder is refused, as the Python runtime (runtime.artifacts.check_files) refuses it;
    a link inside the set is checked; a link from a folder without a manifest is checked
    against the set it leads into."""
    lib, shape, _ = llvm_bucket
    np.save(tmp_path / "ok.npy", np.zeros(shape, np.float32))
    base = ["--input", tmp_path / "ok.npy", "--repeat", 0]
    name = Path(lib).name

    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(lib, cache / "x.so")  # the same bytes, in a folder with no manifest
    outside = tmp_path / "set" / name
    outside.parent.mkdir()
    shutil.copy2(Path(lib).parent / "manifest.json", outside.parent / "manifest.json")
    outside.symlink_to(cache / "x.so")
    line = _one_error(_run(runner, "--lib", outside, *base), outside, "is a link to", "outside its set's folder",
                      "cp -L")
    assert "warning" not in line

    inside = _copy_set(lib, tmp_path / "inside")  # a link to a file of the set, under another name
    (inside.parent / "current.so").symlink_to(name)
    r = _run(runner, "--lib", inside.parent / "current.so", *base)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    inside.write_bytes(inside.read_bytes() + b"\0" * 64)  # what it leads to is what is checked
    _one_error(_run(runner, "--lib", inside.parent / "current.so", *base), "does not match the manifest")

    into = tmp_path / "loose" / "b.so"  # no manifest beside the link: the set it leads into checks it
    into.parent.mkdir()
    into.symlink_to(inside)
    _one_error(_run(runner, "--lib", into, *base), into, "does not match the manifest",
               os.path.realpath(inside.parent / "manifest.json"))


def _dynamic_symbol_offset(path: Path, name: str) -> int:
    """File offset of the dynamic symbol ``name`` (nm for its address, the ELF program headers
    for the segment that maps it)."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run([nm, "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True).stdout
    addr = next(int(line.split()[0], 16) for line in out.splitlines() if line.split()[-1] == name)
    data = path.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and p_vaddr <= addr < p_vaddr + p_filesz:  # PT_LOAD
            return addr - p_vaddr + p_offset
    raise AssertionError(f"{name} is in no loaded segment of {path}")


@pytest.mark.slow
def test_native_runner_names_a_corrupt_library(runner, llvm_bucket, tmp_path):
    """A damaged module table (its count read as 2^64-1) made TVM's loader throw a bare C++
    error ("vector::_M_default_append"): the runner names the library and what to do."""
    lib, shape, _ = llvm_bucket
    np.save(tmp_path / "ok.npy", np.zeros(shape, np.float32))
    data = bytearray(Path(lib).read_bytes())
    blob = _dynamic_symbol_offset(Path(lib), "__tvm_ffi__library_bin")  # u64 size, u64 module count, ...
    data[blob + 8:blob + 16] = b"\xff" * 8
    bad = tmp_path / "bad.so"
    bad.write_bytes(bytes(data))
    line = _one_error(_run(runner, "--lib", bad, "--input", tmp_path / "ok.npy", "--repeat", 0),
                      "corrupt library", bad, "export it again")
    assert "_M_default_append" not in line.split("(")[0]  # TVM's text is context, not the message


@pytest.mark.slow
def test_native_runner_loads_a_library_whatever_its_name(runner, llvm_bucket, tmp_path):
    """ffi::Module::LoadFromFile picks a loader by the name's extension ("Failed to get file
    format" without one): the runner loads the file as a shared library under any name."""
    lib, shape, _ = llvm_bucket
    x = np.random.default_rng(3).uniform(-128, 128, shape).astype(np.float32)
    np.save(tmp_path / "patch.npy", x)
    r = _run(runner, "--lib", lib, "--input", tmp_path / "patch.npy", "--output", tmp_path / "ref.npy", "--repeat", 0)
    assert r.returncode == 0, r.stderr
    ref = np.load(tmp_path / "ref.npy")
    for name in ("b0", "b0.so.1", "b0.bin"):
        (tmp_path / "named").mkdir(exist_ok=True)
        f = tmp_path / "named" / name
        shutil.copy2(lib, f)
        out = tmp_path / f"feat_{name.replace('.', '_')}.npy"
        r = _run(runner, "--lib", f, "--input", tmp_path / "patch.npy", "--output", out, "--repeat", 0)
        assert r.returncode == 0, (name, r.stderr)
        assert "file format" not in r.stderr
        assert np.array_equal(np.load(out), ref), name


@pytest.mark.slow
def test_native_runner_output_is_npy_or_f32_and_never_an_input(runner, llvm_bucket, tmp_path):
    lib, shape, _ = llvm_bucket
    np.save(tmp_path / "patch.npy", np.ones(shape, np.float32))
    patch_bytes = (tmp_path / "patch.npy").read_bytes()
    # a library whose name ends in .npy, so that only the same-file check stands in the way
    libcopy = _copy_set(lib, tmp_path / "set")
    as_npy = libcopy.parent / "lib.npy"
    shutil.copy2(lib, as_npy)
    lib_bytes = as_npy.read_bytes()
    run = lambda *a: _run(runner, "--repeat", 0, *a)  # noqa: E731
    _one_error(run("--lib", libcopy, "--input", tmp_path / "patch.npy", "--output", tmp_path / "patch.npy"),
               "is the --input file", "would destroy it")
    (tmp_path / "sub").mkdir()
    _one_error(run("--lib", libcopy, "--input", tmp_path / "patch.npy",
                   "--output", tmp_path / "sub" / ".." / "patch.npy"), "is the --input file")
    _one_error(run("--lib", as_npy, "--input", tmp_path / "patch.npy", "--output", as_npy), "is the --lib file")
    (tmp_path / "link.npy").symlink_to(as_npy)
    _one_error(run("--lib", as_npy, "--input", tmp_path / "patch.npy", "--output", tmp_path / "link.npy"),
               "is the --lib file")
    assert as_npy.read_bytes() == lib_bytes and (tmp_path / "patch.npy").read_bytes() == patch_bytes
    # the temporary file the output is written through must not be an input either
    (tmp_path / "feat.npy.tmp").symlink_to(tmp_path / "patch.npy")
    _one_error(run("--lib", libcopy, "--input", tmp_path / "patch.npy", "--output", tmp_path / "feat.npy"),
               "feat.npy.tmp", "is the --input file")
    assert (tmp_path / "patch.npy").read_bytes() == patch_bytes

    for name in ("feat.txt", "feat", "feat.npy.bak", "feat.float32"):
        _one_error(run("--lib", libcopy, "--input", tmp_path / "patch.npy", "--output", tmp_path / name),
                   f"--output {tmp_path / name}", ".npy", ".f32")
        assert not (tmp_path / name).exists()
    # the extension in either case
    r = run("--lib", libcopy, "--input", tmp_path / "patch.npy", "--output", tmp_path / "FEAT.NPY")
    assert r.returncode == 0, r.stderr
    ref = np.load(tmp_path / "FEAT.NPY")
    r = run("--lib", libcopy, "--input", tmp_path / "patch.npy", "--output", tmp_path / "FEAT.F32")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.fromfile(tmp_path / "FEAT.F32", np.float32).reshape(ref.shape), ref)


@pytest.mark.slow
def test_native_runner_shape_and_counts_are_strict(runner, llvm_bucket, tmp_path):
    lib, shape, _ = llvm_bucket
    x = np.zeros(shape, np.float32)
    x.tofile(tmp_path / "patch.f32")
    good = ",".join(map(str, shape))
    raw = ["--lib", lib, "--input", tmp_path / "patch.f32"]
    for bad in ("1,,3,%d,%d" % shape[2:], good + ",", "," + good, " " + good, good.replace(",", ", "),
                "(" + good + ")", "1,3,+%d,%d" % shape[2:], "1,3,-%d,%d" % shape[2:], "1,3,0,%d" % shape[3]):
        _one_error(_run(runner, *raw, "--shape", bad), "bad shape")
    for flag in ("--repeat", "--warmup"):
        for bad in (" 5", "5 ", "+5", "-1", "0x5", "5.0", "1e3", "99999999999"):
            _one_error(_run(runner, *raw, "--shape", good, flag, bad), f"{flag} needs a whole number")
    r = _run(runner, *raw, "--shape", good, "--repeat", "007", "--warmup", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["repeat"] == 7

    # .npy headers keep numpy's tuple forms: "(3,)" is a 1-d shape, not a bad one
    np.save(tmp_path / "one_d.npy", np.zeros(3, np.float32))
    _one_error(_run(runner, "--lib", lib, "--input", tmp_path / "one_d.npy"), "has shape (3)",
               "one (1,3,H,W) patch")
    np.save(tmp_path / "scalar.npy", np.float32(1))
    _one_error(_run(runner, "--lib", lib, "--input", tmp_path / "scalar.npy"), "has shape ()")


@pytest.mark.slow
def test_native_tvm_runtime_errors_give_runtime_advice(runner, llvm_bucket, tmp_path):
    """A bad --tvm-runtime file is named as what it is, with the TVM runtime's fix, not the
    feature library's ("export it again")."""
    lib, shape, _ = llvm_bucket
    np.save(tmp_path / "ok.npy", np.zeros(shape, np.float32))
    info = json.loads(_run(runner, "--lib", lib, "--input", tmp_path / "ok.npy", "--repeat", 0).stdout)
    real = Path(info["tvm_runtime"]).read_bytes()
    (tmp_path / "rt_cut.so").write_bytes(real[: len(real) // 2])
    arm = bytearray(real)
    arm[18:20] = struct.pack("<H", EM_AARCH64)
    (tmp_path / "rt_arm.so").write_bytes(bytes(arm))
    (tmp_path / "rt_text.so").write_text("not a library\n")
    for name, what in (("rt_cut.so", "truncated"), ("rt_arm.so", "library for aarch64"),
                       ("rt_text.so", "not a shared library")):
        line = _one_error(_run(runner, "--lib", lib, "--input", tmp_path / "ok.npy", "--tvm-runtime", tmp_path / name),
                          tmp_path / name, what, "libtvm_runtime.so")
        assert "export" not in line.replace(str(tmp_path), ""), line  # the feature library's advice


@pytest.mark.slow
def test_native_library_api_failed_runtime_load_is_not_remembered(runner, llvm_bucket, tmp_path):
    """LoadTvmRuntime with a file that is not a TVM runtime fails each time, leaves nothing
    marked as loaded, closes that file again (it registered nothing: its symbols once stayed
    in the global scope), and a later call with the right runtime works (library API, C++)."""
    lib, shape, _ = llvm_bucket
    cxx = _cxx()
    from tvm_ffi import libinfo

    (tmp_path / "notvm.cc").write_text('extern "C" int not_tvm() { return 1; }\n')
    subprocess.run([cxx, "-shared", "-fPIC", "-o", str(tmp_path / "notvm.so"), str(tmp_path / "notvm.cc")],
                   check=True, capture_output=True, timeout=120)
    (tmp_path / "t.cc").write_text(r"""
#include <dlfcn.h>
#include <iostream>
#include <vector>
#include "mdtrack/native.h"
int main(int argc, char** argv) {
  mdtrack::RuntimeOptions bad;
  bad.tvm_runtime = argv[1];
  for (int i = 0; i < 2; ++i) {
    try {
      mdtrack::LoadTvmRuntime(bad, false);
      std::cout << "loaded\n";
    } catch (const std::exception& e) {
      std::cout << "error " << mdtrack::TvmThreads() << ": " << e.what() << "\n";
    }
  }
  std::cout << "still loaded " << (dlopen(argv[1], RTLD_NOW | RTLD_NOLOAD) != nullptr) << " symbol "
            << (dlsym(RTLD_DEFAULT, "not_tvm") != nullptr) << "\n";
  mdtrack::FeatureExtractor fx(argv[2], mdtrack::DeviceSpec::Parse("cpu"), {1, 3, std::stoi(argv[3]), std::stoi(argv[4])});
  std::vector<float> in(3 * std::stoi(argv[3]) * std::stoi(argv[4]), 0.f), out;
  fx.Run(in.data(), &out);
  std::cout << "ran " << out.size() << " manifest " << fx.manifest() << " threads " << mdtrack::TvmThreads() << "\n";
  std::cout << "verify " << mdtrack::VerifyManifest(argv[2]) << "\n";
}
""")
    build = runner.parent
    ffi_dir = Path(libinfo.find_libtvm_ffi()).parent
    exe = tmp_path / "t"
    c = subprocess.run([cxx, "-std=c++17", "-O1", f"-I{ROOT / 'native' / 'include'}", str(tmp_path / "t.cc"), "-o", str(exe),
                        f"-L{build}", "-lmdtrack_native", f"-Wl,-rpath,{build}", f"-Wl,-rpath-link,{ffi_dir}"],
                       capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr[-3000:]
    r = subprocess.run([str(exe), os.path.realpath(tmp_path / "notvm.so"), str(lib), str(shape[2]), str(shape[3])],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5, r.stdout
    for line in lines[:2]:  # both calls fail; the thread count stays unset
        assert line.startswith("error 0: ") and "does not register the Relax VM" in line, r.stdout
        assert "stays loaded" not in line, r.stdout
    assert lines[2] == "still loaded 0 symbol 0", r.stdout
    manifest = os.path.realpath(Path(lib).parent / "manifest.json")
    assert lines[3].startswith("ran ") and f" manifest {manifest} " in lines[3], r.stdout
    assert int(lines[3].split()[-1]) > 0
    assert lines[4] == f"verify {manifest}"


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


def test_cross_build_refuses_a_runtime_for_another_machine(tmp_path):
    """The wheel's x86-64 libtvm_runtime given to an aarch64 build stops the configure step,
    naming both machines (it was installed beside the runner and refused only on the board)."""
    if shutil.which("cmake") is None or shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("needs cmake and aarch64-linux-gnu-g++")
    tvm = pytest.importorskip("tvm")

    wheel_runtime = Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so"
    assert _elf_machine(wheel_runtime) == (2, EM_X86_64)
    cfg = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), f"-DTVM_PYTHON={sys.executable}",
                          f"-DCMAKE_TOOLCHAIN_FILE={ROOT / 'cmake' / 'aarch64-linux-gnu.cmake'}",
                          f"-DTVM_RUNTIME_LIBRARY={wheel_runtime}"], capture_output=True, text=True, timeout=300)
    assert cfg.returncode != 0
    err = " ".join(cfg.stderr.split())
    assert "is a library for x86_64, and this build is for aarch64" in err, cfg.stderr[-2000:]


@pytest.mark.slow
def test_gpu_pack_builds_and_its_cpu_part_runs(runner, tmp_path):
    """One-bucket GPU pack (reusing the runner's CMake build): contents, size, and run.sh here,
    where CUDA is normally unusable (exit 3, CPU parity checked) or, on a GPU machine, 0."""
    from benchmarks.gpu_pack import build_pack

    pack = tmp_path / "pack"
    info = build_pack(ROOT / "models" / "default", pack, buckets=[0], build_dir=runner.parent, max_mb=60)
    assert info["size_mb"] < 60
    name = info["buckets"][0]["name"]
    for f in ("bin/mdtrack_features", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so", "lib/libmdtrack_native.so",
              f"cuda/{name}.so", f"cpu/{name}.so", f"patches/{name}.npy", f"reference/{name}.npy",
              "weights.npz", "torch_ref.py", "run.sh", "pack.json"):
        assert (pack / f).is_file(), f
    assert os.access(pack / "run.sh", os.X_OK)
    from export.cuda_kernels import nvrtc_version

    import tvm

    kernels = info["buckets"][0]["kernels"]
    if not tvm.cuda(0).exist:  # built without a driver, the library carries its kernels as source
        assert kernels is not None and (pack / kernels).is_file()
        if isinstance(nvrtc_version(), tuple):  # the export's own cubin, not a second compile with nvcc
            assert kernels.startswith("cuda/kernels/") and kernels.endswith(".cubin"), kernels
            assert not any((pack / "kernels").iterdir())
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
