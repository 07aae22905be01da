"""The export flow for one model: ONNX per bucket (checked), then TVM per target."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time
from pathlib import Path

from runtime import artifacts
from runtime.artifacts import KERNELS, bucket_file
from runtime.errors import ArtifactError

from . import targets as targets_mod
from .onnx_export import check_parity, export_bucket


def check_replaceable(folder) -> None:
    """Refuse to build over a folder that is not an artifact set: its files would be lost."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is a file, not a folder; give --out a new or empty folder")
    if not any(folder.iterdir()) or artifacts.in_cache(folder):
        return  # the cache holds only what first-use builds put there: a broken set is rebuilt
    m = artifacts.peek_manifest(folder)
    if not (m and m.get("kind") in artifacts.BACKEND_OF):
        raise ArtifactError(f"{folder} holds files but no artifact set (no manifest of one), and export would "
                            "replace them; give --out a new or empty folder")
    # A set holds its manifest, the files it lists and its own precompiled kernels; anything
    # else (a user's file, kernels someone put beside a library) would be lost with the old set.
    listed = m.get("files") if isinstance(m.get("files"), dict) else {}
    own = {name for _, name in artifacts.manifest_kernels(m)}
    kernels = folder / KERNELS if (folder / KERNELS).is_dir() else None  # the set's precompiled CUDA kernels
    foreign = sorted(p.name for p in folder.iterdir()
                     if p.name != artifacts.MANIFEST and p.name not in listed and p != kernels)
    if kernels is not None:  # ... and nothing else in that folder
        foreign += sorted(f"{KERNELS}/{p.name}" for p in kernels.iterdir() if f"{KERNELS}/{p.name}" not in own)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ArtifactError(f"{folder} holds {', '.join(foreign[:3])}{more} beside its artifact set, and export "
                            "would delete them with the old set; move them out or give --out a new folder")


# The staging folders this process holds (real path -> descriptor). A set built inside another
# one's staging folder (the GPU pack's cuda/ and cpu/) locks that folder as its parent: a
# second flock of it from this process would wait for this process forever.
_HELD: dict = {}


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on ``folder`` itself (no lock file left behind); best effort where
    the filesystem has no flock (some network mounts): a finished build is not thrown away."""
    import fcntl

    if os.path.realpath(folder) in _HELD:  # held by this process already, for its whole build
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _try_hold(folder: Path) -> int | None:
    """A descriptor holding an exclusive flock on ``folder``, or None where another process
    holds one (or the filesystem has no flock)."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


def remove_abandoned(out: Path) -> None:
    """Remove the staging folders of ``out`` whose build is gone without cleaning up (SIGKILL,
    the OOM killer, docker stop's timeout). A running build holds a flock on its folder for
    its whole life, which the kernel drops when its process dies, whatever the container or
    pid namespace; a folder nobody holds is abandoned. A previous set that a kill caught
    between the two renames of the swap is put back first. Call under the parent's lock."""
    for p in out.parent.glob(f"{glob.escape(f'.{out.name}.')}*"):
        if not p.name.endswith((".partial", ".old")) or not p.is_dir():
            continue
        fd = _try_hold(p)
        if fd is None:  # its build is running (or no flock here: left alone)
            continue
        try:
            if p.name.endswith(".old") and (p / out.name).is_dir() and not out.exists():
                (p / out.name).rename(out)
            shutil.rmtree(p, ignore_errors=True)
        finally:
            os.close(fd)


def swap_in(new: Path, out: Path) -> None:
    """Replace ``out`` (if any) by the finished folder ``new``, under a lock on their parent so
    two builds of one set (two first uses of the cache) do not collide: the later one wins.
    If the swap fails the previous folder is put back."""
    with _folder_lock(out.parent):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        try:
            moved = out.exists()
            if moved:
                out.rename(old / out.name)
            try:
                new.rename(out)
            except BaseException:
                if moved:
                    (old / out.name).rename(out)  # put the previous one back
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged(out: Path, check=check_replaceable):
    """A sibling temporary folder to build in, swapped in for ``out`` only once complete: a
    failed or interrupted build leaves the previous one as it was. ``check`` refuses an
    ``out`` that must not be replaced (default: anything but an artifact set)."""
    if check is not None:
        check(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out.parent):  # made and held before another build's clean-up can see it
        remove_abandoned(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        held = _try_hold(tmp)
    key = None
    try:
        if held is not None:
            key = os.path.realpath(tmp)
            _HELD[key] = held
        tmp.chmod(0o755)
        yield tmp
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if key is not None:
            _HELD.pop(key, None)
        if held is not None:
            os.close(held)


def build_onnx(model, out, log=print) -> Path:
    """Export every bucket to ``out`` (an artifact set of kind 'onnx'), parity-checked."""
    from runtime.backends.mxnet_backend import MXNetBackend

    out = Path(out)
    ref = MXNetBackend(model)
    files, parity = [], {}
    with staged(out) as tmp:
        for b, shape in enumerate(model.policy.shapes):
            name = bucket_file(b, shape, "onnx")
            export_bucket(model, b, tmp / name)
            parity[name] = check_parity(model, b, tmp / name, ref)
            files.append(name)
            log(f"onnx  bucket {b} {shape[0]}x{shape[1]}: parity {parity[name]:.1e} of feature scale")
        artifacts.write_manifest(tmp, model, "onnx", "onnx", None, files, {"parity_vs_mxnet": parity})
    return out


def build_tvm(model, target, onnx_dir, out, log=print, tuning=None) -> Path:
    """Compile every bucket of ``onnx_dir`` for ``target`` into ``out`` (kind 'tvm'), with the
    committed tuning database of ``target``; with ``tuning`` (a user's database folder), with
    that one's records first and the committed ones for the kernels it leaves out."""
    from .cuda_kernels import kernel_compiler, precompile
    from .tvm_build import (compile_module, export_library, import_onnx, layer_databases, scheduled_kernels,
                            tuned_kernels, tuning_db)

    out = Path(out)
    db_dir, db_hash = tuning_db(target.name)
    extra = {"tuning_db": _shown(db_dir), "tuning_db_sha256": db_hash}
    with contextlib.ExitStack() as stack:
        if tuning is not None:
            mine, mine_hash = tuning_db(target.name, tuning)
            extra = {"tuning_db": str(mine.resolve()), "tuning_db_sha256": mine_hash,
                     "base_tuning_db": extra["tuning_db"], "base_tuning_db_sha256": db_hash}
            db_dir = layer_databases(mine, db_dir, stack.enter_context(tempfile.TemporaryDirectory()))
        scheduled = scheduled_kernels(db_dir)
        nvrtc = kernel_compiler(target, log) if target.device == "cuda" else None
        files, tuned, cubins = [], {}, {}
        with staged(out) as tmp:
            for b, shape in enumerate(model.policy.shapes):
                t0 = time.time()
                name = bucket_file(b, shape, "so")
                mod = import_onnx(Path(onnx_dir) / bucket_file(b, shape, "onnx"))
                n, total = tuned[name] = tuned_kernels(mod, target, scheduled)
                executable = compile_module(mod, target, db_dir)
                export_library(executable, tmp / name, target)
                files.append(name)
                if nvrtc is not None:
                    try:
                        cubin = precompile(executable, tmp / name, target.target["arch"], tmp / KERNELS)
                    except RuntimeError as e:  # NVRTC's log: the set still works, compiling on load
                        why = next((ln.strip() for ln in str(e).splitlines() if "error" in ln), str(e)[:200])
                        log(f"tvm   {target.name:18s} bucket {b}: kernels not precompiled, NVRTC failed ({why}); "
                            "the native runner compiles them with nvcc on the device")
                        cubin = None
                    if cubin is not None:
                        cubins[name] = {"file": f"{KERNELS}/{cubin}",
                                        "sha256": artifacts.sha256_file(tmp / KERNELS / cubin)}
                log(f"tvm   {target.name:18s} bucket {b} {shape[0]}x{shape[1]}: {time.time() - t0:.1f} s, "
                    f"{tuned_note(n, total)}" + (", kernels precompiled" if name in cubins else ""))
            # a partly tuned set (a tuning budget, --top) says so in its manifest
            extra.update({"device": target.device, "cross": target.cross, "tuned_kernels": tuned})
            if cubins:
                extra.update({"kernels": cubins, "kernels_compiler": f"NVRTC {nvrtc[0]}.{nvrtc[1]}"})
            artifacts.write_manifest(tmp, model, "tvm", target.name, target.resolved(), files, extra)
    return out


def tuned_note(n: int, total: int) -> str:
    """The build log's word on a bucket of which ``n`` of ``total`` kernels have a schedule."""
    if n == total:
        return f"{n} of {total} kernels tuned"
    if n == 0:
        return "untuned: TVM's default schedules"
    return f"{n} of {total} kernels tuned, the rest on TVM's default schedules"


def _shown(db_dir):
    """A committed database's folder as the manifest records it: relative to the project."""
    if db_dir is None:
        return None
    root = Path(__file__).resolve().parents[1]
    d = Path(db_dir).resolve()
    return str(d.relative_to(root)) if d.is_relative_to(root) else str(d)


def build(model, target_names, out=None, log=print, done=None, tuning=None) -> dict:
    """ONNX set plus one TVM set per target under ``out``; returns {name: folder}, the dict
    ``done`` when given, filled as each set is swapped in (for a caller that is stopped part-way
    to say which sets are new). ``tuning``: a user's database folder, layered over the committed
    one, for a single TVM target and an explicit ``out`` outside the runtime's cache (which holds
    sets built with the committed databases, and rebuilds any other)."""
    tgts = [targets_mod.parse(t) if isinstance(t, str) else t for t in target_names]
    if tuning is not None:
        if not tgts:
            raise ArtifactError("--tuning-db applies to a TVM target, and --targets onnx builds none; drop it")
        if len(tgts) > 1:
            raise ArtifactError(f"--tuning-db holds one target's records, and --targets names {len(tgts)}; "
                                "export each with its own database")
        if out is None:
            raise ArtifactError("--tuning-db needs --out DIR (the runtime's cache holds only sets built with the "
                                "committed databases); then pass the set with --artifacts DIR/"
                                f"{tgts[0].name}")
        from .tvm_build import check_user_db

        try:
            mine = check_user_db(tuning, tgts[0], "--tuning-db")  # before minutes of ONNX export
        except ValueError as e:
            raise ArtifactError(str(e)) from None
        dest = Path(out).expanduser()
        if os.path.realpath(mine) == os.path.realpath(dest):
            raise ArtifactError(f"--out {out} is the --tuning-db folder; give the sets a folder of their own")
        if artifacts.in_cache(dest / tgts[0].name):
            raise ArtifactError(f"--out {out} is in the runtime's cache, which rebuilds any set not built with the "
                                "committed databases; give --out a folder outside it")
    out = Path(out).expanduser() if out is not None else artifacts.default_dir(model, "onnx").parent
    m = artifacts.peek_manifest(out) if out.is_dir() else None
    if m and m.get("kind") in artifacts.BACKEND_OF:  # --out at one set: the new ones would nest in it
        raise ArtifactError(f"--out {out} is one artifact set ({m.get('kind')}), not the folder export writes "
                            f"its sets into; give its parent, {out.parent}, or a new folder")
    for folder in [out / "onnx"] + [out / t.name for t in tgts]:  # before minutes of work
        check_replaceable(folder)
    done = {} if done is None else done
    onnx_dir = build_onnx(model, out / "onnx", log)
    done["onnx"] = onnx_dir
    for target in tgts:
        done[target.name] = build_tvm(model, target, onnx_dir, out / target.name, log, tuning)
    return done
