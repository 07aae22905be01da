"""The compiled fast path: ONNX per bucket, TVM per target, manifests, backend parity."""
import collections
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tvm")

from runtime import artifacts  # noqa: E402
from runtime.errors import ArtifactError  # noqa: E402
from runtime.model import DEFAULT_MODEL, load_model, save_model  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """ONNX and TVM-llvm sets for the shipped model (all 8 buckets), built once."""
    from export.build import build

    model = load_model(DEFAULT_MODEL)
    out = tmp_path_factory.mktemp("artifacts")
    done = build(model, ["llvm"], out, log=lambda m: None)
    return model, done


@pytest.fixture(scope="module")
def one_bucket_model(tmp_path_factory):
    """The shipped weights with a single bucket: cheap to compile for several targets."""
    m = load_model(DEFAULT_MODEL)
    config = json.loads(json.dumps(m.config))
    config["buckets"]["shapes"] = [[192, 192]]
    return load_model(save_model(tmp_path_factory.mktemp("one") / "model", config, m.params))


def _patch(shape, seed):
    return np.random.default_rng(seed).uniform(-128, 128, (1, 3) + tuple(shape)).astype(np.float32)


def _real_patch(model, bucket):
    """A mean-subtracted crop of a synthetic frame through the runtime's own crop."""
    from runtime.buckets import crop_patch
    from runtime.synthetic import make_sequence

    seq = make_sequence(n_frames=1, size=(320, 240), seed=3)
    frame = next(iter(seq))
    geom = model.policy.for_shape(frame.gt, bucket)
    p = crop_patch(frame.image, geom, fill=model.mean).astype(np.float32) - model.mean
    return np.ascontiguousarray(p.transpose(2, 0, 1)[None])


def test_every_bucket_exported_checked_and_in_manifest(built):
    model, done = built
    m = artifacts.verify(done["onnx"], model, "onnx", "onnx")
    assert len(m["files"]) == len(model.policy.shapes) == 8
    assert max(m["parity_vs_mxnet"].values()) <= 1e-4
    # declared at the versions older runtimes read (onnx 1.23 stamps IR 14 / opset 28, which
    # ONNX Runtime 1.23 and earlier refuse)
    import onnx

    for name in m["files"]:
        o = onnx.load(str(Path(done["onnx"]) / name))
        assert (o.ir_version, [(i.domain, i.version) for i in o.opset_import]) == (7, [("", 13)]), name
    t = artifacts.verify(done["llvm"], model, "tvm", "llvm")
    assert t["versions"]["tvm"] and t["versions"]["onnx"]
    assert t["model_hash"] == model.model_hash and t["buckets"] == [list(s) for s in model.policy.shapes]


@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_features_match_mxnet_on_random_and_real_patches(built, backend):
    from runtime.backends import make_backend

    model, done = built
    ref = make_backend("mxnet", model)
    other = make_backend(backend, model, artifacts=done["onnx" if backend == "onnxruntime" else "llvm"])
    for b, shape in enumerate(model.policy.shapes):
        for x in (_patch(shape, b), _real_patch(model, b)):
            a, o = ref.extract(b, x), other.extract(b, x)
            assert o.shape == a.shape == (1, model.channels, shape[0] // 8, shape[1] // 8)
            assert np.abs(o - a).max() <= 1e-4 * np.abs(a).max()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_whole_sequence_boxes_match_mxnet(built, backend):
    from runtime.geometry import iou
    from runtime.synthetic import make_sequence
    from runtime.tracker import Tracker

    model, done = built
    seq = make_sequence(n_frames=100, size=(320, 240), seed=4, distractors=0)
    frames = list(seq)

    def run(name, arts=None):
        t = Tracker(model, backend=name, seed=0, artifacts=arts)
        return np.array([(t.init(f.image, f.gt) if f.index == 0 else t.update(f.image)).box for f in frames])

    ref = run("mxnet")
    got = run(backend, done["onnx" if backend == "onnxruntime" else "llvm"])
    ious = iou(ref, got)
    assert ious.min() >= 0.98, f"worst frame IoU {ious.min():.3f} at {int(ious.argmin())}"


def test_stale_or_foreign_manifest_is_refused_with_rebuild_command(built, tmp_path):
    model, done = built
    cases = {}
    for name, edit in {
        "model": lambda m: m.update(model_hash="0" * 64),
        "buckets": lambda m: m.update(buckets=[[64, 64]]),
        "target": lambda m: m.update(target="cuda-sm_87"),
        "tvm": lambda m: m["versions"].update(tvm="0.1.0"),
    }.items():
        d = tmp_path / name
        shutil.copytree(done["llvm"], d)
        m = json.loads((d / "manifest.json").read_text())
        edit(m)
        (d / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ArtifactError) as e:
            artifacts.verify(d, model, "tvm", "llvm")
        cases[name] = str(e.value)
    assert "another model" in cases["model"]
    # the other model's folder is not offered for this model's rebuild (it would replace that set)
    assert f"--out {tmp_path}" not in cases["model"] and "--out " + str(artifacts.cache_root()) in cases["model"]
    assert "bucket set" in cases["buckets"]
    assert "cuda-sm_87" in cases["target"]
    assert "TVM 0.1.0" in cases["tvm"]
    for msg in cases.values():
        assert "python -m export --model" in msg and "--targets llvm" in msg
    # a modified library is refused before it is loaded
    d = tmp_path / "modified"
    shutil.copytree(done["llvm"], d)
    lib = sorted(d.glob("*.so"))[0]
    lib.write_bytes(lib.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        artifacts.verify(d, model, "tvm", "llvm")
    # and through the backend, as a user would meet it
    from runtime.backends import make_backend

    with pytest.raises(ArtifactError, match="rebuild with"):
        make_backend("tvm", model, artifacts=d)


def test_output_folder_hint_names_the_sets_that_run_here(tmp_path, monkeypatch):
    """Export's --out given to --artifacts: the sets cross-compiled for a board are not offered
    (they cannot run here), unless the folder holds nothing else."""
    monkeypatch.setattr(artifacts.platform, "machine", lambda: "x86_64")
    for name, cross in (("llvm", None), ("aarch64", "aarch64"), ("cuda-sm_87-aarch64", "aarch64")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"kind": "tvm", "cross": cross}))
    with pytest.raises(ArtifactError) as e:
        artifacts.read_manifest(tmp_path, "tvm", "FIX")
    assert str(e.value).endswith(f"pass --artifacts {tmp_path / 'llvm'}"), str(e.value)
    shutil.rmtree(tmp_path / "llvm")
    with pytest.raises(ArtifactError) as e:
        artifacts.read_manifest(tmp_path, "tvm", "FIX")
    assert f"{tmp_path / 'aarch64'} or {tmp_path / 'cuda-sm_87-aarch64'}" in str(e.value)
    monkeypatch.setattr(artifacts.platform, "machine", lambda: "aarch64")  # on the board they are the ones
    assert artifacts.runs_here({"cross": "aarch64"}) and not artifacts.runs_here({"cross": "riscv64"})


def test_set_of_the_other_kind_or_no_manifest_object_refused(built, tmp_path):
    from runtime.backends import make_backend

    model, done = built
    # an ONNX set given to the TVM backend (and the reverse): name the backend that loads it,
    # and never advise rebuilding over it
    for backend, folder, other in (("tvm", done["onnx"], "onnxruntime"), ("onnxruntime", done["llvm"], "tvm")):
        with pytest.raises(ArtifactError) as e:
            make_backend(backend, model, artifacts=folder)
        msg = str(e.value)
        assert f"--backend {other}" in msg and f"--out {folder}" not in msg, msg
    # export's --out itself (one set per target below it): name the set to pass
    parent = done["onnx"].parent
    for backend, kind in (("tvm", "llvm"), ("onnxruntime", "onnx")):
        with pytest.raises(ArtifactError) as e:
            make_backend(backend, model, artifacts=parent)
        assert f"pass --artifacts {parent / kind}" in str(e.value) and "NEW_FOLDER" not in str(e.value), str(e.value)
    d = tmp_path / "list"
    d.mkdir()
    (d / "manifest.json").write_text("[1, 2]")
    for backend in ("tvm", "onnxruntime"):
        with pytest.raises(ArtifactError, match="not an artifact manifest"):
            make_backend(backend, model, artifacts=d)
    # a mistyped --artifacts: said so, with no rebuild guessed into its parent (once "--out /")
    for backend in ("tvm", "onnxruntime"):
        with pytest.raises(ArtifactError) as e:
            make_backend(backend, model, artifacts=tmp_path / "typo")
        msg = str(e.value)
        assert msg.startswith(f"artifact folder {tmp_path / 'typo'} does not exist") and "leave --artifacts out" in msg
        assert f"--out {tmp_path}" not in msg, msg


@pytest.fixture(scope="module")
def one_bucket_llvm(one_bucket_model, tmp_path_factory):
    """A TVM-llvm set of the one-bucket model (one library: quick to build)."""
    from export.build import build

    return build(one_bucket_model, ["llvm"], tmp_path_factory.mktemp("one_llvm"), log=lambda m: None)["llvm"]


def test_tvm_trackers_share_a_library_loaded_once(one_bucket_model, one_bucket_llvm, tmp_path):
    """TVM never frees a loaded library: each tracker loading its own grew the process by
    about 4 MB (8 buckets), without bound for an application that makes one tracker per clip.
    A second backend on the same set reuses the first one's libraries and computes the same
    features; a rebuilt set (new files) is loaded afresh."""
    import shutil

    from runtime.backends import tvm_backend
    from runtime.backends.tvm_backend import TVMBackend

    a = TVMBackend(one_bucket_model, artifacts=one_bucket_llvm)
    loaded = len(tvm_backend._LOADED)
    b = TVMBackend(one_bucket_model, artifacts=one_bucket_llvm)
    assert len(tvm_backend._LOADED) == loaded
    patch = _patch((192, 192), 3)
    np.testing.assert_array_equal(a.extract(0, patch), b.extract(0, patch))
    copy = tmp_path / "llvm"
    shutil.copytree(one_bucket_llvm, copy)
    TVMBackend(one_bucket_model, artifacts=copy)
    assert len(tvm_backend._LOADED) == loaded + 1


def test_tvm_backend_with_the_tvm_runtime_alone(one_bucket_model, one_bucket_llvm, tmp_path):
    """TVM_USE_RUNTIME_LIB=1 (or a TVM installed without its compiler library, as a board
    might have) loads TVM's runtime alone: 0.5 s and 110 MB less than the compiler here. The
    backend's VM is the runtime's own (no relax import), so a CUDA set needs nothing more (run
    on an H200, benchmarks/README.md); a CPU set's check of the CPU it was built for needs LLVM,
    so it is refused in one line that says how to get it."""
    import subprocess
    import sys

    import cv2

    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i:04d}.png"), np.full((120, 160, 3), 60 * i, np.uint8))
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")

    def track(*more):
        r = subprocess.run([sys.executable, "-m", "runtime.track", "--images", str(tmp_path / "*.png"), "--init",
                            "40,30,40,40", "--model", str(one_bucket_model.path), "--backend", "tvm",
                            "--artifacts", str(one_bucket_llvm), "--quiet", *more],
                           capture_output=True, text=True, env=env, timeout=120)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        return lines[0]

    line = track()
    assert line.startswith("error: TVM_USE_RUNTIME_LIB=1 loaded TVM's runtime alone, and a CPU set needs TVM's "
                           "compiler"), line
    assert "unset TVM_USE_RUNTIME_LIB, or use --backend onnxruntime" in line
    # the set for the other device is named as such, as with the whole of TVM
    assert "holds cpu artifacts (llvm) but --device is cuda" in track("--device", "cuda")


def _tiny_library(path, constant):
    """A TVM library computing x + constant on 4 floats, through the export path."""
    import onnx
    from onnx import TensorProto, helper

    from export.targets import parse
    from export.tvm_build import build_bucket

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [helper.make_tensor("c", TensorProto.FLOAT, [4], [constant] * 4)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path.with_suffix(".onnx")))
    return build_bucket(path.with_suffix(".onnx"), parse("llvm"), path)


def test_a_library_rebuilt_in_place_runs_its_new_code(tmp_path):
    """The dynamic loader hands back the library it holds for a file name: a set rebuilt in
    place (export swaps a new folder in under the same name) ran the old set's code in a
    process that had loaded it. The new file is loaded, and computes its own result."""
    import shutil

    import tvm
    from tvm import relax

    from runtime.backends.tvm_backend import _load_once

    one, two = _tiny_library(tmp_path / "one.so", 1.0), _tiny_library(tmp_path / "two.so", 2.0)
    live = tmp_path / "set"
    live.mkdir()
    shutil.copy(one, live / "lib.so")

    def run(lib):
        x = tvm.runtime.tensor(np.zeros(4, np.float32), tvm.cpu())
        return relax.VirtualMachine(lib, tvm.cpu())["main"](x).numpy()

    assert run(_load_once(tvm, live / "lib.so")).tolist() == [1.0] * 4
    assert _load_once(tvm, live / "lib.so") is _load_once(tvm, live / "lib.so")
    new = tmp_path / "set.new"
    new.mkdir()
    shutil.copy(two, new / "lib.so")
    shutil.rmtree(live)
    new.rename(live)  # as export swaps a set in
    assert run(_load_once(tvm, live / "lib.so")).tolist() == [2.0] * 4


def test_tvm_library_of_another_bucket_with_rewritten_hashes_is_refused(one_bucket_model, one_bucket_llvm, tmp_path):
    """A 192x192 library passed off, manifest and hashes rewritten, as a 224x224 model's: one
    line from the warm-up (it was TVM's match_cast RuntimeError)."""
    from runtime.backends.tvm_backend import TVMBackend

    config = json.loads(json.dumps(one_bucket_model.config))
    config["buckets"]["shapes"] = [[224, 224]]
    other = load_model(save_model(tmp_path / "model224", config, one_bucket_model.params))
    d = tmp_path / "llvm"
    shutil.copytree(one_bucket_llvm, d)
    m = json.loads((d / "manifest.json").read_text())
    old, new = artifacts.bucket_file(0, (192, 192), "so"), artifacts.bucket_file(0, (224, 224), "so")
    (d / old).rename(d / new)
    m["files"] = {new: m["files"].pop(old), **m["files"]}
    m.update(model_hash=other.model_hash, buckets=[[224, 224]])
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError) as e:
        TVMBackend(other, artifacts=d)
    assert f"{new} does not run on a (224, 224) patch" in str(e.value) and "\n" not in str(e.value)


def _edited_copy(src, dst, edit_manifest=None, edit_lib=None):
    """A copy of a set whose manifest (and library, re-hashed) were edited by hand."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    if edit_lib is not None:
        lib = dst / sorted(m["files"])[0]
        lib.write_bytes(edit_lib(lib.read_bytes()))
        m["files"][lib.name] = hashlib.sha256(lib.read_bytes()).hexdigest()
    if edit_manifest is not None:
        edit_manifest(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_library_headers_are_checked_before_the_loader_maps_it(one_bucket_model, one_bucket_llvm, tmp_path):
    """A truncated library whose manifest vouches for it killed the process inside the loader
    (SIGBUS, no message); one for another architecture was reported as "No such file"."""
    import struct

    from runtime.backends import make_backend

    good = sorted(one_bucket_llvm.glob("*.so"))[0]
    artifacts.check_shared_library(good, "FIX")
    half = tmp_path / "half.so"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="truncated.*FIX"):
        artifacts.check_shared_library(half, "FIX")
    onnx = next((one_bucket_llvm.parent / "onnx").glob("*.onnx"))
    with pytest.raises(ArtifactError, match="no ELF header"):
        artifacts.check_shared_library(onnx, "FIX")

    cut = _edited_copy(one_bucket_llvm, tmp_path / "cut", edit_lib=lambda b: b[: len(b) // 2])
    with pytest.raises(ArtifactError, match="truncated") as e:
        make_backend("tvm", one_bucket_model, artifacts=cut)
    assert "rebuild with: python -m export" in str(e.value)
    # an aarch64 library whose manifest no longer says "cross": named as such, not "No such file"
    arm = _edited_copy(one_bucket_llvm, tmp_path / "arm",
                       edit_lib=lambda b: b[:18] + struct.pack("<H", 183) + b[20:])
    with pytest.raises(ArtifactError, match="library for aarch64 and cannot run on this") as e:
        make_backend("tvm", one_bucket_model, artifacts=arm)
    assert "--targets llvm" in str(e.value) and "No such file" not in str(e.value)


def test_llvm_set_compiled_for_another_cpu_is_refused(one_bucket_model, one_bucket_llvm, tmp_path):
    """"llvm" is the CPU of the machine that built the set: on another CPU its code can die on
    an instruction this one lacks (SIGILL). The cache rebuilds such a set; --artifacts refuses it."""
    from tvm.target import codegen

    from runtime.backends import make_backend

    here = codegen.llvm_get_system_cpu()
    other = "skylake" if here != "skylake" else "znver4"
    d = _edited_copy(one_bucket_llvm, tmp_path / "other_cpu", lambda m: m["target_dict"].update(mcpu=other))
    with pytest.raises(ArtifactError) as e:
        make_backend("tvm", one_bucket_model, artifacts=d)
    msg = str(e.value)
    assert f"compiled for the CPU {other}" in msg and f"this CPU is {here}" in msg and "--targets llvm" in msg, msg
    make_backend("tvm", one_bucket_model, artifacts=one_bucket_llvm)  # this CPU's set loads


def test_llvm_mcpu_set_is_checked_against_this_cpus_instruction_sets(tmp_path):
    """A set built with --targets llvm:MCPU for a named CPU was never checked: one for a CPU
    with instructions this one lacks (AMX) died of SIGILL at the first frame, no error line.
    It is refused naming them; one for an older CPU this one covers still loads."""
    import json

    from tvm.target import codegen

    from runtime.backends.tvm_backend import _check_host, _vector_isa

    here = codegen.llvm_get_system_cpu()
    if not _vector_isa(here) or "amx-int8" in _vector_isa(here):
        pytest.skip(f"needs an x86 CPU without AMX (this one: {here})")

    def set_for(cpu):
        d = tmp_path / cpu
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({"kind": "tvm", "target": f"llvm-{cpu}",
                                                     "target_dict": {"kind": "llvm", "mcpu": cpu}}))
        return d

    with pytest.raises(ArtifactError, match=r"compiled for the CPU sapphirerapids .*amx-bf16.*lacks") as e:
        _check_host(set_for("sapphirerapids"), "llvm-sapphirerapids")
    assert "--targets llvm" in str(e.value)
    _check_host(set_for("x86-64"), "llvm-x86-64")  # baseline x86-64: every x86-64 CPU runs it


def test_export_keeps_user_files_under_a_broad_or_empty_cache_root(tmp_path, monkeypatch):
    """Only the cache's own sets (<cache>/artifacts/<model>/<target>) may be rebuilt over
    without a look: with MDTRACK_CACHE empty (the working folder) or set to a data volume,
    export deleted a user's files in any --out below it."""
    from export.build import check_replaceable
    from runtime import artifacts

    user = tmp_path / "exports" / "onnx"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("important")
    for cache in ("", str(tmp_path)):
        monkeypatch.setenv("MDTRACK_CACHE", cache)
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ArtifactError, match="holds files but no artifact set"):
            check_replaceable(user)
    assert (user / "notes.txt").read_text() == "important"
    monkeypatch.setenv("MDTRACK_CACHE", "")
    assert artifacts.cache_root() == Path.home() / ".cache" / "mdtrack"
    monkeypatch.setenv("MDTRACK_CACHE", str(tmp_path))
    cached = tmp_path / "artifacts" / "0123456789abcdef" / "onnx"
    cached.mkdir(parents=True)
    (cached / "half_written.onnx").write_bytes(b"x")
    check_replaceable(cached)  # the cache's own set: a broken one is rebuilt


def test_an_unwritable_cache_and_a_set_without_manifest_say_what_to_do(one_bucket_model, tmp_path, monkeypatch):
    """A first-use build into a cache it cannot write (read-only, no home) ended in an
    OSError traceback; a folder of files without a manifest advised a rebuild that export
    then refused."""
    import export.build

    from runtime.backends import make_backend

    monkeypatch.setenv("MDTRACK_CACHE", str(tmp_path / "cache"))

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(export.build, "build_onnx", read_only)
    with pytest.raises(ArtifactError, match="cannot build the artifact set in the runtime's cache .*from "
                                            "MDTRACK_CACHE=.*Read-only file system.*point MDTRACK_CACHE at a "
                                            "writable folder.*--artifacts"):
        make_backend("onnxruntime", one_bucket_model)
    monkeypatch.delenv("MDTRACK_CACHE")  # the default cache: the message says how to move it
    monkeypatch.setattr(Path, "home", staticmethod(lambda: tmp_path / "home"))
    with pytest.raises(ArtifactError, match=r"runtime's cache \S+ \(Read-only file system\); set MDTRACK_CACHE to "
                                            "a writable folder"):
        make_backend("onnxruntime", one_bucket_model)
    monkeypatch.undo()
    monkeypatch.setenv("MDTRACK_CACHE", str(tmp_path / "cache"))
    junk = tmp_path / "mine" / "onnx"
    junk.mkdir(parents=True)
    (junk / "notes.txt").write_text("x")
    with pytest.raises(ArtifactError, match=r"no manifest.json in .*build a set with: .*--out NEW_FOLDER, then pass "
                                            r"--artifacts NEW_FOLDER/onnx"):
        make_backend("onnxruntime", one_bucket_model, artifacts=junk)

    # no HOME and no passwd entry (env -i under an arbitrary container uid): Path.home() raised
    # a RuntimeError traceback, for a set given with --artifacts too
    def homeless():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setenv("MDTRACK_CACHE", "")
    monkeypatch.setattr(Path, "home", staticmethod(homeless))
    with pytest.raises(ArtifactError, match="no home folder.*set MDTRACK_CACHE to a writable folder.*--artifacts"):
        make_backend("onnxruntime", one_bucket_model)
    monkeypatch.setenv("MDTRACK_CACHE", "~/cache")  # a systemd Environment= line: no shell to expand it
    monkeypatch.setattr(Path, "expanduser", lambda self: homeless())
    with pytest.raises(ArtifactError, match="MDTRACK_CACHE=~/cache starts with ~.*absolute path"):
        make_backend("onnxruntime", one_bucket_model)
    monkeypatch.setenv("MDTRACK_CACHE", "")
    with pytest.raises(ArtifactError, match="no manifest.json in"):
        make_backend("onnxruntime", one_bucket_model, artifacts=junk)


def test_workers_starting_together_build_the_cache_once(one_bucket_model, tmp_path, monkeypatch, capsys):
    """A first use waits for another process's build of the same set, then uses it: workers
    started together each compiled their own copy (N times the CPU; 5 min instead of 3.6 for
    two TVM builds here)."""
    import threading

    import export.build
    from runtime import artifacts
    from runtime.backends.onnx_backend import ensure_onnx

    monkeypatch.setenv("MDTRACK_CACHE", str(tmp_path / "cache"))
    folder = artifacts.default_dir(one_bucket_model, "onnx")
    real, builds = export.build.build_onnx, []
    monkeypatch.setattr(export.build, "build_onnx", lambda *a, **k: builds.append(1) or real(*a, **k))
    got, err = [], ""
    with artifacts.build_lock(folder):  # "another worker" holds the lock while it builds
        waiter = threading.Thread(target=lambda: got.append(ensure_onnx(one_bucket_model)))
        waiter.start()
        for _ in range(600):  # until the second worker says it waits (at most 60 s)
            err += capsys.readouterr().err
            if "waiting for another process's build" in err:
                break
            time.sleep(0.1)
        assert f"waiting for another process's build of {folder}" in err, err
        real(one_bucket_model, folder, log=lambda m: None)
    waiter.join(timeout=60)
    assert got == [folder] and builds == [], "the waiting worker built the set again"
    artifacts.verify(folder, one_bucket_model, "onnx", "onnx")


def test_build_lock_of_another_users_cache_still_locks(tmp_path, monkeypatch):
    """A shared cache whose lock file another user made (0644 under umask 022): opening it for
    writing is refused, and the build refused with it (it had not been before the lock)."""
    import fcntl

    from runtime import artifacts

    real_open = os.open

    def not_ours(path, flags, *a):
        if str(path).endswith(".lock") and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a)

    folder = tmp_path / "cache" / "onnx"
    folder.parent.mkdir()
    (folder.parent / ".onnx.lock").touch()  # made by the other user's first build
    monkeypatch.setattr(os, "open", not_ours)
    with artifacts.build_lock(folder):
        fd = real_open(folder.parent / ".onnx.lock", os.O_RDONLY)
        try:  # held: another descriptor cannot take it
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_tvm_device_mismatch_and_missing_gpu_say_what_to_do(one_bucket_model, one_bucket_llvm, tmp_path):
    import tvm

    from runtime.backends import make_backend
    from runtime.errors import TrackerInputError

    cuda = _edited_copy(one_bucket_llvm, tmp_path / "cuda",
                        lambda m: m.update(target="cuda-sm_87", device="cuda", target_dict={"kind": "cuda"}))
    with pytest.raises(ArtifactError) as e:
        make_backend("tvm", one_bucket_model, artifacts=cuda)  # --device cpu
    assert "but --device is cpu; run it with --device cuda" in str(e.value)
    with pytest.raises(ArtifactError) as e:
        make_backend("tvm", one_bucket_model, device="cuda", artifacts=one_bucket_llvm)
    assert "--device is cuda:0; pass a set built for the GPU" in str(e.value)
    if tvm.cuda(0).exist:
        return
    # no GPU: say so, instead of "a loader of that name is not registered ... rebuild with"
    with pytest.raises(TrackerInputError) as e:
        make_backend("tvm", one_bucket_model, device="cuda", artifacts=cuda)
    assert "TVM sees no CUDA device 0" in str(e.value) and "rebuild" not in str(e.value)


# the simulated provider list makes ONNX Runtime warn that CUDA is not among its real ones
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_onnx_set_that_does_not_load_or_a_cuda_provider_that_does_not_start(one_bucket_model, one_bucket_llvm,
                                                                             tmp_path, monkeypatch):
    import onnxruntime as ort

    from runtime.backends import make_backend
    from runtime.errors import TrackerInputError

    onnx = one_bucket_llvm.parent / "onnx"
    cut = _edited_copy(onnx, tmp_path / "cut", edit_lib=lambda b: b[: len(b) // 2])
    with pytest.raises(ArtifactError, match="cannot load .*rebuild with: python -m export"):  # not a traceback
        make_backend("onnxruntime", one_bucket_model, artifacts=cut)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return
    # onnxruntime-gpu whose CUDA provider cannot start (no driver, no cuDNN) runs on the CPU,
    # saying so in a log line only: --device cuda must not quietly become the CPU
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(TrackerInputError, match="could not start its CUDA provider"):
        make_backend("onnxruntime", one_bucket_model, device="cuda", artifacts=onnx)


def test_export_cli_names_a_missing_cross_compiler_before_any_work(one_bucket_model, tmp_path, monkeypatch, capsys):
    from export import targets
    from export.__main__ import main

    monkeypatch.setitem(targets.CROSS_CC, "aarch64", "aarch64-linux-gnu-g++-not-installed")
    for t in ("aarch64", "llvm,cuda:sm_87@aarch64"):
        assert main(["--model", str(one_bucket_model.path), "--targets", t, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "apt-get install g++-aarch64-linux-gnu" in err, err
        assert "aarch64-linux-gnu-g++-not-installed" in err and "Traceback" not in err
        assert not (tmp_path / "out").exists()  # nothing built before the refusal


def test_failed_export_leaves_the_previous_set(one_bucket_model, tmp_path, monkeypatch):
    from export import build as B

    quiet = dict(log=lambda m: None)
    out = tmp_path / "onnx"
    B.build_onnx(one_bucket_model, out, **quiet)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(B, "export_bucket", interrupted)
    with pytest.raises(KeyboardInterrupt):
        B.build_onnx(one_bucket_model, out, **quiet)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # no partial or old folder, no lock file left behind
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


def test_a_build_killed_outright_leaves_nothing_for_long(one_bucket_model, tmp_path):
    """SIGKILL (the OOM killer, docker stop's timeout) runs no clean-up: the staging folders of
    such builds stayed in a shared cache for good (5.6 MB per killed TVM build). The next build
    of the set removes the folders no running build holds (its flock dies with its process, in
    any container), keeps a running build's, and puts back a previous set a kill caught
    between the two renames of the swap."""
    from export import build as B

    out = tmp_path / "onnx"
    B.build_onnx(one_bucket_model, out, log=lambda m: None)
    previous = {p.name: p.read_bytes() for p in out.iterdir()}
    mid_swap = tmp_path / ".onnx.abc123.old"
    mid_swap.mkdir()
    out.rename(mid_swap / "onnx")  # killed after moving the old set aside, before the new one went in
    (tmp_path / ".onnx.def456.partial" / "sub").mkdir(parents=True)  # killed mid-build
    running = tmp_path / ".onnx.ghi789.partial"
    running.mkdir()
    other = tmp_path / ".onnx-gpu.jkl012.partial"  # another set's
    other.mkdir()
    held = B._try_hold(running)  # a build still going on (another process, as far as flock goes)
    assert held is not None
    try:
        with B._folder_lock(tmp_path):
            B.remove_abandoned(out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == previous
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["onnx", running.name, other.name])
        B.build_onnx(one_bucket_model, out, log=lambda m: None)  # a build cleans up before it starts
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["onnx", running.name, other.name])
    finally:
        os.close(held)
    B.build_onnx(one_bucket_model, out, log=lambda m: None)  # once its build is gone, so is its folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["onnx", other.name])


def test_a_set_staged_inside_another_ones_staging_folder_does_not_wait_for_itself(tmp_path):
    """The GPU pack builds its cuda/ and cpu/ sets inside its own staging folder, whose flock
    the pack holds: the inner build's lock on its parent waited for this very process."""
    import threading

    from export import build as B

    def nested():
        with B.staged(tmp_path / "pack", check=None) as outer:
            with B.staged(outer / "cuda", check=None) as inner:
                (inner / "lib.so").write_bytes(b"x")

    t = threading.Thread(target=nested, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "the nested build waited on its own lock"
    assert (tmp_path / "pack" / "cuda" / "lib.so").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack"] and not B._HELD


def test_export_refuses_to_build_over_other_files(one_bucket_model, tmp_path, capsys):
    from export.__main__ import main

    mine = tmp_path / "out" / "llvm"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    assert main(["--model", str(one_bucket_model.path), "--targets", "llvm", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "new or empty folder" in err and "Traceback" not in err
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "out" / "onnx").exists()

    # a file beside an existing set would go with the old set: refused too, the set kept;
    # the set alone is rebuilt as before
    out = tmp_path / "again"
    assert main(["--model", str(one_bucket_model.path), "--targets", "onnx", "--out", str(out)]) == 0
    (out / "onnx" / "notes.txt").write_text("keep me")
    assert main(["--model", str(one_bucket_model.path), "--targets", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and "beside its artifact set" in err and "Traceback" not in err
    assert (out / "onnx" / "notes.txt").read_text() == "keep me"
    artifacts.verify(out / "onnx", one_bucket_model, "onnx", "onnx")
    (out / "onnx" / "notes.txt").unlink()
    assert main(["--model", str(one_bucket_model.path), "--targets", "onnx", "--out", str(out)]) == 0


def test_export_out_at_one_set_and_a_signal_are_one_line_each(one_bucket_model, tmp_path, capsys, monkeypatch):
    """--out naming one artifact set is refused (the new sets were nested inside it); a signal
    mid-export is one line and 128 + its number, the previous set kept (a KeyboardInterrupt
    traceback)."""
    import os
    import signal

    from export import build as B
    from export.__main__ import main

    base = ["--model", str(one_bucket_model.path), "--targets", "onnx"]
    assert main([*base, "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    one_set = tmp_path / "out" / "onnx"
    before = sorted(p.name for p in one_set.iterdir())
    assert main([*base, "--out", str(one_set)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "is one artifact set (onnx)" in err and str(tmp_path / "out") in err
    assert sorted(p.name for p in one_set.iterdir()) == before

    def signalled(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the export")

    monkeypatch.setattr(B, "export_bucket", signalled)
    handler = signal.getsignal(signal.SIGTERM)
    assert main([*base, "--out", str(tmp_path / "out")]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.strip() == "interrupted (SIGTERM); the previous artifact set, if any, is unchanged", err
    assert signal.getsignal(signal.SIGTERM) is handler  # the handler is restored
    artifacts.verify(one_set, one_bucket_model, "onnx", "onnx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["onnx"]
    # stopped in the TVM stage: the ONNX set is new by then, and the line says so
    monkeypatch.undo()
    monkeypatch.setattr(B, "build_tvm", signalled)
    assert main([*base[:-1], "llvm", "--out", str(tmp_path / "out")]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"interrupted (SIGTERM); onnx was rebuilt ({one_set}); the other sets, if any, are as they "
                   "were"), err
    # the signal handled while TVM's compiler runs a Python callback: TVM's FFI hands the
    # Interrupted back as a RuntimeError('SIGTERM'), which ended in a traceback and exit 1
    import tvm_ffi

    monkeypatch.setattr(B, "build_tvm", lambda *a, **k: tvm_ffi.convert(signalled)())
    assert main([*base[:-1], "llvm", "--out", str(tmp_path / "out")]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("interrupted (SIGTERM); onnx was rebuilt"), err


def test_export_onnx_alone_and_rebuild_commands_that_work(one_bucket_model, tmp_path):
    from export.__main__ import main
    from export.targets import parse

    assert main(["--model", str(one_bucket_model.path), "--targets", "onnx", "--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")) == ["onnx"]
    artifacts.verify(tmp_path / "a" / "onnx", one_bucket_model, "onnx", "onnx")
    # the advice names the parent (export writes OUT/onnx, OUT/<target>) and a target export parses
    cmd = artifacts.rebuild_command(one_bucket_model, "cuda-sm_87-aarch64", tmp_path / "a" / "cuda-sm_87-aarch64")
    assert f"--out {tmp_path / 'a'}" in cmd and "then pass" not in cmd
    assert parse(cmd.split("--targets ")[1].split()[0]).name == "cuda-sm_87-aarch64"
    cmd = artifacts.rebuild_command(one_bucket_model, "onnx", tmp_path / "mine")
    assert "--targets onnx" in cmd and f"then pass --artifacts {tmp_path / 'onnx'}" in cmd


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert head[16] == 3, f"{path} is not a shared object (e_type {head[16]})"  # ET_DYN
    return int.from_bytes(head[18:20], "little")


@pytest.mark.slow
def test_cuda_and_aarch64_artifacts_are_shared_objects_for_their_architecture(one_bucket_model, tmp_path):
    from export.build import build

    targets = ["cuda:sm_87"]
    if shutil.which("aarch64-linux-gnu-g++"):
        targets += ["aarch64", "cuda:sm_87@aarch64"]
    done = build(one_bucket_model, targets, tmp_path, log=lambda m: None)
    so = lambda name: next(Path(done[name]).glob("*.so"))  # noqa: E731
    assert _elf_machine(so("cuda-sm_87")) == 62  # x86-64 host code
    m = json.loads((Path(done["cuda-sm_87"]) / "manifest.json").read_text())
    assert m["target_dict"]["arch"] == "sm_87" and m["device"] == "cuda"
    assert b"__global__" in so("cuda-sm_87").read_bytes() or b"fatbin" in so("cuda-sm_87").read_bytes().lower()
    if "aarch64" in done:
        assert _elf_machine(so("aarch64")) == 183  # EM_AARCH64
        assert _elf_machine(so("cuda-sm_87-aarch64")) == 183


@pytest.mark.slow
def test_cuda_sets_carry_their_kernels_precompiled_for_the_runner(one_bucket_model, tmp_path, monkeypatch):
    """A CUDA library keeps its kernels as CUDA source (no driver here); the export compiles
    them with NVRTC 12.2 into kernels/<sha256 of that source>.cubin, the name the native runner
    looks up next to the library, so a Jetson needs no nvcc and no first-load compile."""
    import hashlib
    import locale

    from benchmarks.gpu_pack import cuda_source
    from export import build as build_mod
    from export.targets import parse

    logged = []
    encoding = locale.getencoding()
    folder = Path(build_mod.build(one_bucket_model, ["cuda:sm_87"], tmp_path / "a", log=logged.append)["cuda-sm_87"])
    # NVRTC leaves its thread in the C locale: the process's text encoding must not turn ASCII
    assert locale.getencoding() == encoding
    (tmp_path / "text.txt").write_text("\ufeff1,2,3,4\n")
    m = json.loads((folder / "manifest.json").read_text())
    assert m["kernels_compiler"] == "NVRTC 12.2"
    entry = m["kernels"]["bucket0_192x192.so"]
    cubin = folder / entry["file"]
    assert entry["sha256"] == hashlib.sha256(cubin.read_bytes()).hexdigest()
    head = cubin.read_bytes()[:0x34]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 190  # EM_CUDA
    assert head[0x30] == 87  # the SM version in e_flags
    src = cuda_source(tmp_path / "a" / "onnx" / "bucket0_192x192.onnx", parse("cuda:sm_87"), folder / "bucket0_192x192.so")
    assert cubin.name == hashlib.sha256(src.encode()).hexdigest() + ".cubin"  # src: the bytes inside the library
    assert any("kernels precompiled" in line for line in logged)
    # the Python TVM backend takes them too, by the same name, instead of compiling with nvcc on load
    import tvm_ffi

    from runtime.artifacts import verify
    from runtime.backends.tvm_backend import use_precompiled_kernels

    use_precompiled_kernels(folder)
    assert bytes(tvm_ffi.get_global_func("tvm_callback_cuda_compile")(src)) == cubin.read_bytes()
    # ... once the set is verified: a damaged, missing or misplaced cubin is named, with the rebuild
    verify(folder, one_bucket_model, "tvm", "cuda-sm_87")
    good = cubin.read_bytes()
    cubin.write_bytes(good[:-1])
    with pytest.raises(ArtifactError, match=f"{cubin.name} does not match its sha256.*rebuild with: python -m export"):
        verify(folder, one_bucket_model, "tvm", "cuda-sm_87")
    cubin.unlink()
    with pytest.raises(ArtifactError, match=f"{cubin.name} is missing"):
        verify(folder, one_bucket_model, "tvm", "cuda-sm_87")
    cubin.write_bytes(good)
    bad = json.loads((folder / "manifest.json").read_text())
    bad["kernels"]["bucket0_192x192.so"]["file"] = "../x.cubin"
    (folder / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match="not a file in the set's kernels/ folder"):
        verify(folder, one_bucket_model, "tvm", "cuda-sm_87")
    (folder / "manifest.json").write_text(json.dumps(m))
    # ... and with TVM's runtime alone the backend verifies and opens the set up to the device
    # itself (none here), loading no compiler code on the way
    import subprocess
    import sys

    code = ("import sys, tvm\nfrom runtime.model import load_model\nfrom runtime.backends.tvm_backend import TVMBackend\n"
            f"try:\n    TVMBackend(load_model({str(one_bucket_model.path)!r}), 'cuda', artifacts={str(folder)!r})\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n"
            "print('runtime alone:', tvm.base._RUNTIME_ONLY, 'relax:', 'tvm.relax' in sys.modules)")
    import tvm

    if not tvm.cuda(0).exist:  # on a GPU machine the sm_87 set would go on to load
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, TVM_USE_RUNTIME_LIB="1"))
        assert "TrackerInputError --device cuda: TVM sees no CUDA device 0" in r.stdout, r.stdout + r.stderr[-2000:]
        assert "runtime alone: True relax: False" in r.stdout
    # a rebuild over the set keeps working: its kernels/ folder is its own
    build_mod.build(one_bucket_model, ["cuda:sm_87"], tmp_path / "a", log=lambda line: None)
    assert sorted(p.name for p in (folder / "kernels").iterdir()) == [cubin.name]
    # ... but not a file of someone else's in it
    (folder / "kernels" / "mine.fatbin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="kernels/mine.fatbin beside its artifact set"):
        build_mod.check_replaceable(folder)
    (folder / "kernels" / "mine.fatbin").unlink()

    # a GPU newer than NVRTC 12.2 knows (sm_90 is its newest): the set keeps its kernels as source
    logged.clear()
    newer = Path(build_mod.build(one_bucket_model, ["cuda:sm_120"], tmp_path / "c", log=logged.append)["cuda-sm_120"])
    assert "kernels" not in json.loads((newer / "manifest.json").read_text())
    assert any("NVRTC 12.2 does not compile for sm_120" in line for line in logged), logged

    # without NVRTC 12 the set is built all the same, and the log says what the runner will do
    logged.clear()
    monkeypatch.setattr("export.cuda_kernels.nvrtc_version", lambda: "NVRTC 12 is not installed (test)")
    plain = Path(build_mod.build(one_bucket_model, ["cuda:sm_87"], tmp_path / "b", log=logged.append)["cuda-sm_87"])
    assert "kernels" not in json.loads((plain / "manifest.json").read_text()) and not (plain / "kernels").exists()
    assert any("kernels not precompiled: NVRTC 12 is not installed (test)" in line and "nvcc on the device" in line
               for line in logged), logged


def test_target_names_parse_and_reject():
    from export.targets import parse

    assert parse("llvm").target == {"kind": "llvm", "mcpu": "native"}
    assert parse("cuda:sm_72").target["arch"] == "sm_72"
    assert parse("cuda:sm_87@aarch64").cross == "aarch64"
    for bad in ("cuda:87", "riscv", "cuda:sm_87@riscv"):
        with pytest.raises(ValueError):
            parse(bad)


def test_native_cpu_resolves_to_a_cpu_llvm_knows():
    """LLVM 22 rejects mcpu=native and silently compiles generic x86-64 code (no SIMD)."""
    from tvm.target import codegen

    from export.targets import parse

    cpu = parse("llvm").resolved()["mcpu"]
    assert cpu != "native" and cpu == codegen.llvm_get_system_cpu()
    assert parse("llvm").tvm_target().attrs["mcpu"] == cpu
    assert parse("llvm:znver3").resolved()["mcpu"] == "znver3"  # an explicit CPU is kept
    host = parse("cuda:sm_87").resolved()["host"]
    assert host["kind"] == "llvm" and host.get("mcpu", "generic") != "native"


def test_export_cli_reports_bad_model(tmp_path, capsys):
    from export.__main__ import main

    assert main(["--model", str(tmp_path / "nope"), "--targets", "llvm"]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_cached_build_is_redone_when_the_tuning_database_changes(one_bucket_model, tmp_path, monkeypatch, capsys):
    from export.tvm_build import tuning_db
    from runtime.backends.tvm_backend import ensure_tvm

    monkeypatch.setenv("MDTRACK_CACHE", str(tmp_path))
    folder = ensure_tvm(one_bucket_model, "llvm")
    mpath = folder / "manifest.json"
    m = json.loads(mpath.read_text())
    assert m["tuning_db_sha256"] == tuning_db("llvm")[1]
    m["tuning_db_sha256"] = "stale"
    mpath.write_text(json.dumps(m))
    capsys.readouterr()
    ensure_tvm(one_bucket_model, "llvm")
    assert "another tuning database" in capsys.readouterr().err
    assert json.loads(mpath.read_text())["tuning_db_sha256"] == tuning_db("llvm")[1]


def test_build_counts_the_kernels_its_database_tuned(one_bucket_llvm, tmp_path):
    """A tuning budget or ``export.tune --top`` can tune some kernels of a bucket: the build
    log and the manifest say how many of them have a schedule, the rest being TVM's defaults
    (the committed CUDA records hold 4 of 192x192's 14 kernels; "tuned" overstated them)."""
    from tvm.s_tir import meta_schedule as ms

    from export.targets import parse
    from export.tvm_build import import_onnx, scheduled_kernels, tuned_kernels, tuning_db

    from export.build import tuned_note

    assert json.loads((one_bucket_llvm / "manifest.json").read_text())["tuned_kernels"] == {
        "bucket0_192x192.so": [14, 14]}
    assert [tuned_note(n, 14) for n in (14, 4, 0)] == [
        "14 of 14 kernels tuned", "4 of 14 kernels tuned, the rest on TVM's default schedules",
        "untuned: TVM's default schedules"]
    mod = import_onnx(one_bucket_llvm.parent / "onnx" / "bucket0_192x192.onnx")
    assert tuned_kernels(mod, parse("cuda:sm_90"), scheduled_kernels(tuning_db("cuda-sm_90")[0])) == (4, 14)
    assert tuned_kernels(mod, parse("llvm"), scheduled_kernels(None)) == (0, 14)
    # a record that failed to run schedules nothing
    rec = ms.database.JSONDatabase(work_dir=str(tuning_db("llvm")[0])).get_all_tuning_records()[0]
    (tmp_path / "db").mkdir()
    db = ms.database.JSONDatabase(work_dir=str(tmp_path / "db"))
    db.commit_tuning_record(ms.database.TuningRecord(rec.trace, db.commit_workload(rec.workload.mod), [1e10],
                                                     rec.target, rec.args_info))
    assert scheduled_kernels(tmp_path / "db") == set()


def test_cuda_targets_state_the_block_limits_metaschedule_needs():
    from export.targets import CUDA_LIMITS, parse

    for name in ("cuda:sm_90", "cuda:sm_87@aarch64"):
        attrs = dict(parse(name).tvm_target().attrs)
        for k, v in CUDA_LIMITS.items():
            assert int(attrs[k]) == v, (name, k)


def test_tune_takes_an_onnx_set_and_keeps_to_its_time_budget(tmp_path, monkeypatch, capsys, no_cost_model):
    """--onnx-dir needs no model or MXNet; --max-minutes starts no bucket that the time left
    cannot hold (estimated from the last bucket), and the log says which were skipped."""
    from export import tune

    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    shapes = [[64, 64], [64, 96], [96, 96]]
    names = [f"bucket{i}_{h}x{w}.onnx" for i, (h, w) in enumerate(shapes)]
    for i, name in enumerate(names):
        (onnx_dir / name).write_bytes(bytes([i]))
    manifest = {"kind": "onnx", "buckets": shapes,
                "files": {n: hashlib.sha256(bytes([i])).hexdigest() for i, n in enumerate(names)}}
    (onnx_dir / "manifest.json").write_text(json.dumps(manifest))
    assert {b: s for b, (s, _) in tune.onnx_buckets(onnx_dir).items()} == {0: (64, 64), 1: (64, 96), 2: (96, 96)}

    clock = [1000.0]
    tuned = []

    def fake_tune(path, target, trials, work, top=None, seed=0):  # each bucket "takes" two minutes
        tuned.append(Path(path).name)
        clock[0] += 120.0
        return 7

    monkeypatch.setattr(tune.time, "time", lambda: clock[0])
    monkeypatch.setattr(tune, "tune_bucket", fake_tune)
    monkeypatch.setattr(tune, "merge_database", lambda work, db: 3)
    db = tmp_path / "db"
    db.mkdir()
    rc = tune.main(["--target", "llvm", "--onnx-dir", str(onnx_dir), "--buckets", "2,0,1", "--trials", "4",
                    "--db", str(db), "--max-minutes", "3"])
    assert rc == 0
    assert tuned == ["bucket2_96x96.onnx"]  # after it, 2 min spent + 2 min estimate > 3
    log = json.loads((db / "tuning_log.json").read_text())[-1]
    assert log["buckets"]["96x96"] == {"tasks": 7, "records": 3, "minutes": 2.0}
    assert log["buckets"]["64x64"] == {"skipped": "time budget"}
    assert "not tuned" in capsys.readouterr().out

    # a run stopped part-way (a time limit, Ctrl-C) keeps the log line of what it merged
    def stopped(path, target, trials, work, top=None, seed=0):
        if tuned:
            raise KeyboardInterrupt
        return fake_tune(path, target, trials, work, top, seed)

    tuned.clear()
    monkeypatch.setattr(tune, "tune_bucket", stopped)
    capsys.readouterr()
    assert tune.main(["--target", "llvm", "--onnx-dir", str(onnx_dir), "--buckets", "0,1", "--db", str(db)]) == 130
    assert capsys.readouterr().err == f"interrupted (SIGINT); buckets merged into {db} so far: 64x64\n"
    logs = json.loads((db / "tuning_log.json").read_text())
    assert len(logs) == 2 and logs[-1]["buckets"] == {"64x64": {"tasks": 7, "records": 3, "minutes": 2.0}}
    assert logs[-1]["cpu"]  # whose CPU the records were measured on

    # databases that are not this target's: refused before any work
    from export.tvm_build import DB_FILES, tuning_dir

    other, damaged = tmp_path / "other-db", tmp_path / "damaged-db"
    other.mkdir()
    damaged.mkdir()
    for f in DB_FILES:  # the records say what they were tuned for, whatever the folder is called
        shutil.copy(tuning_dir("cuda-sm_90") / f, other / f)
        (damaged / f).write_text('["not a record"\n')
    (tmp_path / "a-set").mkdir()
    (tmp_path / "a-set" / "manifest.json").write_text("{}")
    for folder, why in ((other, "holds records tuned for cuda sm_90, not llvm (llvm)"),
                        (damaged, "is not a readable MetaSchedule database"), (tmp_path / "a-set", "artifact set")):
        assert tune.main(["--target", "llvm", "--onnx-dir", str(onnx_dir), "--db", str(folder)]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err
    if tune._gpu_name() is None:  # every candidate would fail to run: a database of failures
        assert tune.main(["--target", "cuda:sm_90", "--onnx-dir", str(onnx_dir), "--db", str(tmp_path / "c")]) == 2
        assert "this machine has none" in capsys.readouterr().err and not (tmp_path / "c").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bucket0_64x64.onnx").write_bytes(b"")  # files without a manifest are not a set
    assert tune.main(["--target", "llvm", "--onnx-dir", str(empty)]) == 2
    assert "no manifest.json in" in capsys.readouterr().err
    assert tune.main(["--target", "llvm", "--onnx-dir", str(onnx_dir), "--buckets", "5"]) == 2
    assert "no bucket 5" in capsys.readouterr().err
    (onnx_dir / names[1]).write_bytes(b"changed")
    assert tune.main(["--target", "llvm", "--onnx-dir", str(onnx_dir)]) == 2
    assert "does not match its sha256" in capsys.readouterr().err
    manifest["kind"] = "tvm"
    (onnx_dir / "manifest.json").write_text(json.dumps(manifest))
    assert tune.main(["--target", "llvm", "--onnx-dir", str(onnx_dir)]) == 2
    assert "holds tvm artifacts, not an ONNX set; pass the onnx folder" in capsys.readouterr().err
    assert tune.main(["--target", "llvm", "--onnx-dir", str(tmp_path)]) == 2  # export's --out, which holds onnx/
    manifest["kind"] = "onnx"
    (onnx_dir / "manifest.json").write_text(json.dumps(manifest))
    err = capsys.readouterr().err
    assert f"is export's output folder; pass its ONNX set, --onnx-dir {onnx_dir}" in err, err


def test_top_tasks_are_the_heaviest_convolutions(one_bucket_model, tmp_path):
    """--top N tunes the N kernels with the most FLOPs x occurrences: for the SqueezeNet
    extractor, 3x3 expand convolutions and the first conv, never a pool or a concat."""
    from tvm.s_tir.analysis import estimate_tir_flops
    from tvm.s_tir.meta_schedule import relax_integration as ri

    from export.build import build_onnx
    from export.targets import parse
    from export.tune import heaviest
    from export.tvm_build import import_onnx, prepare

    onnx_dir = build_onnx(one_bucket_model, tmp_path / "onnx", log=lambda m: None)
    target = parse("llvm")
    tasks = ri.extract_tasks(prepare(import_onnx(next(onnx_dir.glob("*.onnx"))), target), target.tvm_target())
    work = {t.task_name: float(estimate_tir_flops(t.dispatched[0])) * t.weight for t in tasks}
    top = [t.task_name for t in heaviest(tasks, 3)]
    assert len(top) == 3 and all("conv2d" in n for n in top)
    assert [work[n] for n in top] == sorted(work.values(), reverse=True)[:3]
    assert len(heaviest(tasks, None)) == len(tasks)


def test_tuning_builder_builds_candidates_in_its_workers(one_bucket_model, tmp_path):
    """The builder's workers build a real candidate with ``build_candidate`` (picklable, and
    without the 16 s tensor-intrinsic import of MetaSchedule's default build)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import relax_integration as ri

    from export.build import build_onnx
    from export.targets import parse
    from export.tune import build_candidate, heaviest
    from export.tvm_build import import_onnx, prepare

    onnx_dir = build_onnx(one_bucket_model, tmp_path / "onnx", log=lambda m: None)
    target = parse("llvm")
    task = heaviest(ri.extract_tasks(prepare(import_onnx(next(onnx_dir.glob("*.onnx"))), target),
                                     target.tvm_target()), 1)[0]
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=120, f_build=build_candidate)
    (result,) = builder.build([ms.builder.BuilderInput(task.dispatched[0], target.tvm_target())])
    assert result.error_msg is None, result.error_msg
    assert Path(result.artifact_path).is_file() and Path(result.artifact_path).stat().st_size > 0


def test_onnx_runtime_telemetry_is_off_unless_the_user_turns_it_on(tmp_path, monkeypatch):
    """ONNX Runtime 1.29+ keeps a device id and a telemetry queue under ~/.cache/Microsoft and
    uploads from Linux by default; sessions made by the project leave HOME untouched, and a
    user's own ORT_DISABLE_TELEMETRY is kept."""
    import subprocess
    import sys

    from conftest import child_env
    from export.onnx_export import TELEMETRY_OPT_OUT, import_onnxruntime

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    home = tmp_path / "home"
    home.mkdir()
    env = child_env({k: v for k, v in os.environ.items() if k != TELEMETRY_OPT_OUT[0]})
    env["HOME"] = str(home)
    code = (f"import numpy as np; from export.onnx_export import onnx_session; s = onnx_session({str(path)!r}); "
            "print(s.run(None, {'x': np.ones(1, np.float32)})[0][0])")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "1.0", r.stderr
    assert r.stderr == "", r.stderr
    assert list(home.rglob("*")) == [], "ONNX Runtime wrote into HOME"
    monkeypatch.setenv(TELEMETRY_OPT_OUT[0], "0")
    import_onnxruntime()
    assert os.environ[TELEMETRY_OPT_OUT[0]] == "0"
    monkeypatch.setenv(TELEMETRY_OPT_OUT[0], "")  # empty is unset (it kept telemetry on)
    import_onnxruntime()
    assert os.environ[TELEMETRY_OPT_OUT[0]] == TELEMETRY_OPT_OUT[1]


def test_portable_versions_for_both_extractors_ops_only():
    """VGG-M's LRN is relabelled too (its opset-13 schema is the current one); a graph with an
    op outside the list keeps the exporter's versions."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from export.onnx_export import PORTABLE_IR, PORTABLE_OPSET, make_portable

    def graph(op, **attrs):
        g = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 28)], ir_version=14)

    m = graph("LRN", size=5, alpha=1e-4, beta=0.75, bias=2.0)
    assert make_portable(m) and (m.ir_version, m.opset_import[0].version) == (PORTABLE_IR, PORTABLE_OPSET)
    onnx.checker.check_model(m)
    m = graph("Softmax", axis=1)
    assert not make_portable(m) and (m.ir_version, m.opset_import[0].version) == (14, 28)


def test_export_applies_a_users_own_tuning_database(one_bucket_model, tmp_path, capsys, monkeypatch):
    """A user who tunes on their own CPU or board (``export.tune --db DIR``) builds with that
    database: the committed one is for the machines it was tuned on, and an installed package's
    folder is no place to write. The set records which database it was built with."""
    from tvm.s_tir import meta_schedule as ms

    from export.__main__ import main
    from export.targets import parse
    from export.tvm_build import check_user_db, tuning_db, tuning_dir

    monkeypatch.setenv("MDTRACK_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "my-db"
    mine.mkdir()
    ms.database.JSONDatabase(work_dir=str(mine))  # what export.tune --db leaves before its first records
    out = tmp_path / "out"
    (tmp_path / "a-file").write_text("x")
    for args, why in (([], r"needs --out DIR .*committed databases.*--artifacts DIR/llvm"),
                      (["--targets", "onnx"], "--targets onnx builds none"),
                      (["--targets", "llvm,llvm:znver3"], "--targets names 2"),
                      (["--targets", "llvm", "--tuning-db", str(tmp_path / "none")], "holds no MetaSchedule database"
                       r".*the folder that python -m export.tune --db DIR wrote"),
                      (["--targets", "llvm", "--tuning-db", str(tmp_path / "a-file")], "is a file; give the folder"),
                      (["--targets", "llvm", "--tuning-db", str(tuning_dir("cuda-sm_90"))],
                       r"holds records tuned for cuda sm_90, not llvm \(llvm\)"),
                      (["--targets", "llvm", "--out", str(mine)], "is the --tuning-db folder"),
                      (["--targets", "llvm", "--out", str(tmp_path / "cache" / "artifacts" / "m")],
                       "in the runtime's cache, which rebuilds")):
        argv = ["--model", str(one_bucket_model.path), "--tuning-db", str(mine)] + args
        if "--out" not in argv and args:
            argv += ["--out", str(out)]
        assert main(argv) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and re.search(why, err), err
        assert not out.exists()  # refused before any work
    # a board's records build its cross target: what matters is the kind of target (and a GPU's
    # architecture), not what the folder or the tuning run called it
    assert check_user_db(tuning_dir("cuda-sm_90"), parse("cuda:sm_90@aarch64"), "--tuning-db")
    with pytest.raises(ValueError, match=r"tuned for cuda sm_90, not cuda sm_87 \(cuda:sm_87\)"):
        check_user_db(tuning_dir("cuda-sm_90"), parse("cuda:sm_87"), "--tuning-db")

    assert main(["--model", str(one_bucket_model.path), "--targets", "llvm", "--out", str(out),
                 "--tuning-db", str(mine)]) == 0
    m = json.loads((out / "llvm" / "manifest.json").read_text())
    assert m["tuning_db"] == str(mine.resolve()) and m["tuning_db_sha256"] == tuning_db("llvm", mine)[1]
    assert m["tuning_db_sha256"] != tuning_db("llvm")[1]
    assert m["base_tuning_db"] == "export/tuning/llvm" and m["base_tuning_db_sha256"] == tuning_db("llvm")[1]

    # a set built with the user's database is rebuilt with it, not the committed one
    from runtime.artifacts import verify
    from runtime.errors import ArtifactError

    with pytest.raises(ArtifactError, match=f"is a file, not a folder; pass the folder that holds it, {out / 'llvm'}$"):
        verify(out / "llvm" / "manifest.json", one_bucket_model, "tvm", "llvm")
    m["versions"]["tvm"] = "0.0"
    (out / "llvm" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=f"rebuild with: python -m export .*--out {out} --tuning-db {mine.resolve()}"):
        verify(out / "llvm", one_bucket_model, "tvm", "llvm")


def test_a_users_database_is_layered_over_the_committed_one(tmp_path):
    """The user's records win for every kernel they measured; the committed ones stay for the
    rest (TVM's default schedules ran the tracker 7x slower than the tuned ones), and a
    candidate that failed to run is no record."""
    from tvm.s_tir import meta_schedule as ms
    from tvm_ffi import structural_hash

    from export.tvm_build import layer_databases, tuning_db

    def commit(db, rec, secs=None):
        db.commit_tuning_record(ms.database.TuningRecord(rec.trace, db.commit_workload(rec.workload.mod),
                                                         secs or rec.run_secs, rec.target, rec.args_info))

    committed = ms.database.JSONDatabase(work_dir=str(tuning_db("llvm")[0])).get_all_tuning_records()
    count = collections.Counter(structural_hash(r.workload.mod) for r in committed)
    kernels = [k for k, n in count.items() if n >= 2][:3]
    (tmp_path / "base").mkdir()
    base = ms.database.JSONDatabase(work_dir=str(tmp_path / "base"))  # three kernels' committed records
    for r in committed:
        if structural_hash(r.workload.mod) in kernels:
            commit(base, r)
    recs = base.get_all_tuning_records()
    per = {k: sum(structural_hash(r.workload.mod) == k for r in recs) for k in kernels}
    a, b = (next(r for r in recs if structural_hash(r.workload.mod) == k) for k in kernels[:2])
    (tmp_path / "mine").mkdir()
    mine = ms.database.JSONDatabase(work_dir=str(tmp_path / "mine"))
    commit(mine, a, [1.0])   # measured, slower than the committed best: the user's machine, the user's record
    commit(mine, b, [1e10])  # failed to run
    layered = ms.database.JSONDatabase(work_dir=str(layer_databases(tmp_path / "mine", tmp_path / "base",
                                                                    tmp_path / "layered")))
    got = collections.Counter(structural_hash(r.workload.mod) for r in layered.get_all_tuning_records())
    assert got == {kernels[0]: 1, kernels[1]: per[kernels[1]], kernels[2]: per[kernels[2]]}
    assert float(layered.query_tuning_record(a.workload.mod, a.target, "main").run_secs[0]) == 1.0
