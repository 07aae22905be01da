"""Compiled artifact sets: where they live, what their manifest says, and the checks made
before any of their native code is loaded.

An artifact set is a folder with ``manifest.json`` and one file per bucket (``.onnx`` for
ONNX Runtime, ``.so`` for TVM). The manifest ties it to one model (hash), one bucket set,
one target and the TVM / ONNX versions that built it; every file carries its sha256.
Artifacts are native code: load only sets you built or trust.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import struct
import sys
from pathlib import Path

from .errors import ArtifactError
from .model import sha256_file

MANIFEST = "manifest.json"
BACKEND_OF = {"onnx": "onnxruntime", "tvm": "tvm"}  # artifact kind -> the backend that loads it


def cache_root() -> Path:
    """``$MDTRACK_CACHE`` or ``~/.cache/mdtrack``: where first-use builds go (an empty
    MDTRACK_CACHE is unset: it would make the working folder the cache)."""
    given = os.environ.get("MDTRACK_CACHE")
    try:
        return Path(given).expanduser() if given else Path.home() / ".cache" / "mdtrack"
    except (RuntimeError, KeyError):  # no HOME and no passwd entry (env -i, an arbitrary container uid)
        what = (f"MDTRACK_CACHE={given} starts with ~, and there is no home folder (HOME is unset and the user "
                "has no passwd entry); give it an absolute path" if given else
                "the runtime's cache has no home folder to go in (HOME is unset and the user has no passwd "
                "entry); set MDTRACK_CACHE to a writable folder")
        raise ArtifactError(f"{what}, or pass a set built with python -m export --out DIR as --artifacts "
                            "DIR/<target>") from None


def cache_write_error(folder, e: OSError) -> ArtifactError:
    """A first-use build that cannot write the cache (read-only, no home folder), as one line
    with the two ways out."""
    given = os.environ.get("MDTRACK_CACHE")
    where = (f"the runtime's cache {folder} (from MDTRACK_CACHE={given})" if given
             else f"the runtime's cache {folder}")
    fix = "point MDTRACK_CACHE at a writable folder" if given else "set MDTRACK_CACHE to a writable folder"
    return ArtifactError(f"cannot build the artifact set in {where} ({e.strerror or e}); {fix}, or build a set "
                         "with python -m export and pass it with --artifacts")


@contextlib.contextmanager
def build_lock(folder: Path):
    """Held while a first-use build of the cache's set ``folder`` runs, so that workers started
    together build it once: the others wait, then find it built (each compiled its own copy,
    N times the CPU at start-up). A hidden lock file beside the set; best effort where the
    filesystem has no flock."""
    import fcntl

    lock = folder.parent / f".{folder.name}.lock"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lock file (0644 under umask 022) in a shared cache
            fd = os.open(lock, os.O_RDONLY)
    except OSError as e:
        raise cache_write_error(folder, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process's build of {folder}...", file=sys.stderr, flush=True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # no locks after all (ENOLCK on some network mounts): build anyway
                pass
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def in_cache(folder) -> bool:
    """Whether ``folder`` is one of the cache's sets, ``<cache>/artifacts/<model>/<target>``:
    only those hold nothing but what first-use builds put there."""
    try:
        root = cache_root()
    except ArtifactError:  # no cache anywhere: nothing is in it
        return False
    return Path(folder).resolve().parent.parent == (root / "artifacts").resolve()


def default_dir(model, target: str) -> Path:
    return cache_root() / "artifacts" / model.model_hash[:16] / target  # the ONNX set's target is "onnx"


def inside(path, root) -> bool:
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def bucket_file(bucket: int, shape, ext: str) -> str:
    return f"bucket{bucket}_{shape[0]}x{shape[1]}.{ext}"


# A CUDA set's precompiled kernels: KERNELS/<kernel_stem(source)>.cubin|.fatbin|.ptx beside its
# libraries, where the native runner and the tvm backend look them up by the source TVM hands
# them when a library loads (export.cuda_kernels writes them).
KERNELS = "kernels"
KERNEL_EXTS = (".cubin", ".fatbin", ".ptx")


def kernel_stem(source) -> str:
    """The file name (without extension) of the kernels compiled from a library's CUDA source."""
    return hashlib.sha256(str(source).encode()).hexdigest()


def rebuild_command(model, target: str, folder, tuning_db=None) -> str:
    """The export command that writes the set ``folder`` holds (``target``: 'onnx' or a TVM
    target name), with the user's own tuning database ``tuning_db`` if it was built with one.
    Export writes ``OUT/onnx`` and ``OUT/<target>``, so its --out is the parent."""
    folder = Path(folder)
    cmd = f"python -m export --model {model.path} --targets {_target_arg(target)} --out {folder.parent}"
    if tuning_db:
        cmd += f" --tuning-db {tuning_db}"
    return cmd if folder.name == target else f"{cmd}, then pass --artifacts {folder.parent / target}"


def _target_arg(target: str) -> str:
    """A set's target name (folder name) as export's --targets spells it."""
    if target.startswith("llvm-"):
        return "llvm:" + target[len("llvm-"):]
    if target.startswith("cuda-"):
        arch, _, host = target[len("cuda-"):].partition("-")
        return f"cuda:{arch}" + (f"@{host}" if host else "")
    return target


def write_manifest(folder, model, kind: str, target: str, target_dict, files: dict, extra=None) -> Path:
    folder = Path(folder)
    manifest = {
        "format": 1,
        "kind": kind,  # "onnx" or "tvm"
        "model_hash": model.model_hash,
        "extractor": model.extractor,
        "buckets": [list(s) for s in model.policy.shapes],
        "target": target,
        "target_dict": target_dict,
        "versions": _versions(kind),
        "files": {name: sha256_file(folder / name) for name in files},
    }
    manifest.update(extra or {})
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder / MANIFEST


def _versions(kind: str) -> dict:
    out = {}
    try:
        import onnx

        out["onnx"] = onnx.__version__
    except ImportError:
        pass
    if kind == "tvm":
        import tvm

        out["tvm"] = tvm.__version__
    return out


def read_manifest(folder, kind: str, fix: str) -> dict:
    """The manifest of an artifact set of ``kind``; :class:`ArtifactError` ending in ``fix``."""
    folder = Path(folder)
    if folder.is_file():
        inside = f"pass the folder that holds it, {folder.parent}" if folder.name == MANIFEST else \
            "pass the folder export wrote (OUT/<target>)"
        raise ArtifactError(f"artifact set {folder} is a file, not a folder; {inside}")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        sets = _sets_below(folder, kind)
        if sets:  # export's --out, which holds one set per target: name them, not a rebuild
            raise ArtifactError(f"{folder} is export's output folder, not one artifact set: pass --artifacts "
                                + " or ".join(str(folder / s) for s in sets))
        raise ArtifactError(f"no {MANIFEST} in {folder}; {fix}")
    try:
        m = json.loads(mpath.read_text())
    except ValueError as e:
        raise ArtifactError(f"{mpath} is not valid JSON ({e}); {fix}") from None
    if not isinstance(m, dict):
        raise ArtifactError(f"{mpath} is not an artifact manifest (a JSON object); {fix}")
    if m.get("kind") != kind:
        other = BACKEND_OF.get(m.get("kind"))
        if other:  # a valid set of the other kind: rebuilding over it would destroy it
            targets = "onnx" if kind == "onnx" else "llvm (or cuda:sm_XX)"
            raise ArtifactError(f"{folder} holds {m.get('kind')} artifacts, not {kind}: use it with --backend {other}, "
                                f"or build a set for --backend {BACKEND_OF[kind]} with: python -m export "
                                f"--targets {targets} --out NEW_FOLDER, then pass --artifacts NEW_FOLDER/"
                                f"{'onnx' if kind == 'onnx' else '<target>'}")
        raise ArtifactError(f"{folder} holds no {kind} artifacts (manifest kind {m.get('kind')!r}); {fix}")
    _check_fields(mpath, m, fix)
    return m


def _check_fields(mpath: Path, m: dict, fix: str) -> None:
    """The manifest fields the runtime reads, of the types export writes, so a damaged or
    hand-edited manifest is refused here rather than failing as an AttributeError later."""
    files = m.get("files", {})
    if not (isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        raise ArtifactError(f"{mpath}: 'files' must map file names to sha256 strings; {fix}")
    for key, typ, what in (("target", str, "a string"), ("versions", dict, "an object"),
                           ("buckets", list, "a list")):
        if key in m and not isinstance(m[key], typ):
            raise ArtifactError(f"{mpath}: {key!r} must be {what}, got {m[key]!r}; {fix}")


def peek_manifest(folder) -> dict | None:
    """The manifest of ``folder`` as a dict, or None where there is none or it is not one
    (for a look before :func:`read_manifest` or :func:`verify`, which name the problem)."""
    try:
        m = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _sets_below(folder: Path, kind: str) -> list:
    """Names of the subfolders of ``folder`` that hold a set of ``kind``."""
    try:
        subs = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return []
    sets = [(sub.name, m) for sub in subs if (m := peek_manifest(sub) or {}).get("kind") == kind]
    # the sets cross-compiled for a board are not the ones to pass here, unless there are no others
    return [n for n, m in sets if runs_here(m)] or [n for n, _ in sets]


def check_files(folder, manifest: dict, fix: str) -> None:
    """Every file the manifest lists is there, in the set's own folder, and matches its sha256;
    so are a CUDA set's precompiled kernels (export.cuda_kernels: kernels/<sha256 of the source>.cubin).

    A name with a folder part (``../x.so``, ``/abs/x.so``) or a link that leads out of the
    folder is refused before anything is read: else a manifest could make the runtime hash
    any file, and load a library from outside the set the user chose to trust."""
    folder = Path(folder)
    for name, digest in manifest.get("files", {}).items():
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise ArtifactError(f"{folder / MANIFEST} lists {name!r}, not a file name in the set's folder "
                                f"(a set holds its files itself); {fix}")
        _check_listed(folder, folder / name, digest, fix)
    for entry, name in manifest_kernels(manifest):
        if name is None:
            raise ArtifactError(f"{folder / MANIFEST} lists kernels {entry!r}, not a file in the set's {KERNELS}/ "
                                f"folder; {fix}")
        _check_listed(folder, folder / name, entry.get("sha256"), fix)


def manifest_kernels(manifest: dict) -> list:
    """(entry, file) for each precompiled kernel a set's manifest lists ({"file": "kernels/<stem>.cubin",
    "sha256": ...}); file is None where the entry does not name a file in the set's kernels/ folder."""
    kernels = manifest.get("kernels", {})
    out = []
    for entry in kernels.values() if isinstance(kernels, dict) else [kernels]:
        name = entry.get("file") if isinstance(entry, dict) else None
        parts = name.split("/") if isinstance(name, str) else []
        ok = len(parts) == 2 and parts[0] == KERNELS and parts[1] not in ("", ".", "..") and "\\" not in name
        out.append((entry, name if ok else None))
    return out


def _check_listed(folder: Path, f: Path, digest, fix: str) -> None:
    """One file a set's manifest lists: in the set's folder (a link, or a kernels/ folder that
    is one, may not lead out of it), present, and matching ``digest``."""
    if not inside(f, folder):
        raise ArtifactError(f"{f} is a link to {f.resolve()}, outside the set's folder (the runtime loads only "
                            f"the set's own files): copy the file in (cp -L) or {fix}")
    if not f.is_file():
        raise ArtifactError(f"{f} is missing; {fix}")
    if sha256_file(f) != digest:
        raise ArtifactError(f"{f} does not match its sha256 in the manifest (corrupt or modified); {fix}")


def missing_set(folder, model, target: str) -> ArtifactError:
    """The error for a mistyped --artifacts (a rebuild "into" its parent would be a guess).
    The runtime builds onnx and llvm sets itself when --artifacts is left out."""
    builds = " or leave --artifacts out (the runtime builds and caches its own set)," \
        if target in ("onnx", "llvm") else ""
    return ArtifactError(f"artifact folder {folder} does not exist; pass the set export wrote (OUT/{target}),"
                         f"{builds} or build one with: {rebuild_command(model, target, Path('OUT') / target)}")


def verify(folder, model, kind: str, target: str) -> dict:
    """Check a set against the model, bucket set, target, installed TVM and file hashes.

    Returns the manifest; raises :class:`ArtifactError` naming the mismatch and the
    command that rebuilds the set.
    """
    folder = Path(folder)
    if not folder.exists():
        raise missing_set(folder, model, target)
    peeked = peek_manifest(folder)
    mine = peeked.get("tuning_db") if isinstance(peeked, dict) and "base_tuning_db_sha256" in peeked else None
    fix = f"rebuild with: {rebuild_command(model, target, folder, mine)}"
    if peeked is None and folder.is_dir() and any(folder.iterdir()) and not in_cache(folder):
        # files but no set: export refuses to build over them (they could be anyone's)
        fix = (f"build a set with: {rebuild_command(model, target, Path('NEW_FOLDER') / target)}, then pass "
               f"--artifacts NEW_FOLDER/{target}")
    m = read_manifest(folder, kind, fix)
    if m.get("model_hash") != model.model_hash:
        # The folder belongs to the other model (rebuilding it in place would destroy that
        # model's set): this model's own set goes to its own folder in the runtime's cache.
        own = rebuild_command(model, target, default_dir(model, target))
        where = "" if in_cache(folder) else " (the runtime's cache, used when --artifacts is left out)"
        raise ArtifactError(f"{folder} was built for another model ({str(m.get('model_hash'))[:12]}, "
                            f"this is {model.model_hash[:12]}); pass the model it was built for with --model, "
                            f"or build this model's set{where} with: {own}")
    if m.get("buckets") != [list(s) for s in model.policy.shapes]:
        raise ArtifactError(f"{folder} was built for another bucket set {m.get('buckets')}; {fix}")
    if m.get("target") != target:
        raise ArtifactError(f"{folder} was built for target {m.get('target')}, not {target}; {fix}")
    if kind == "tvm":
        import tvm

        built = m.get("versions", {}).get("tvm")
        if built != tvm.__version__:
            raise ArtifactError(f"{folder} was built with TVM {built}, installed is {tvm.__version__}; {fix}")
    check_files(folder, m, fix)
    for b, shape in enumerate(model.policy.shapes):
        name = bucket_file(b, shape, "onnx" if kind == "onnx" else "so")
        if name not in m.get("files", {}):
            raise ArtifactError(f"{folder} has no artifact for bucket {b} {tuple(shape)}; {fix}")
    return m


def check_feature_shape(path, out, model, bucket: int, fix: str) -> None:
    """A bucket's warm-up output has the feature-map shape the head pools from: a file of
    another model or bucket whose hashes were rewritten would else give wrong features, or
    fail in RoIAlign at the first frame."""
    want = (1, model.channels) + tuple(model.policy.feature_shape(bucket))
    if tuple(getattr(out, "shape", ())) != want:
        raise ArtifactError(f"{path} gives features of shape {tuple(getattr(out, 'shape', ()))}, bucket {bucket} "
                            f"of this model needs {want} (a file of another model or bucket); {fix}")


_ELF_MACHINES = {62: "x86-64", 183: "aarch64", 40: "32-bit Arm", 3: "32-bit x86"}  # e_machine
_ARCH_NAMES = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_arch() -> str:
    """This machine's architecture, named as export's cross targets and ELF headers are."""
    m = platform.machine().lower()
    return _ARCH_NAMES.get(m, m)


def runs_here(manifest: dict) -> bool:
    """Whether a set's code is for this machine's architecture (not cross-compiled for another)."""
    cross = manifest.get("cross")
    return not cross or cross == host_arch()


def check_shared_library(path, fix: str, other_arch_fix: str | None = None) -> None:
    """Check a compiled library's ELF headers against the file and this machine before it
    is loaded (as the native runner does): the loader maps a library as its headers say, so
    a truncated copy kills the process with SIGBUS instead of failing, and one built for
    another architecture fails as "No such file or directory". Raises :class:`ArtifactError`
    ending in ``fix`` (``other_arch_fix`` for a library of another architecture)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF":
                raise ArtifactError(f"{path} is not a shared library (no ELF header); {fix}")
            if head[4] != 2 or head[5] != 1:
                raise ArtifactError(f"{path} is not a 64-bit little-endian library; {fix}")
            machine = struct.unpack_from("<H", head, 18)[0]
            host = {v: k for k, v in _ELF_MACHINES.items()}.get(host_arch())
            if host is not None and machine != host:
                raise ArtifactError(f"{path} is a library for {_ELF_MACHINES.get(machine, 'another architecture')} "
                                    f"and cannot run on this {host_arch()} machine; {other_arch_fix or fix}")
            phoff, shoff = struct.unpack_from("<QQ", head, 32)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 54)
            truncated = ArtifactError(f"{path} is truncated ({size} bytes; its headers describe more); {fix}")
            if phentsize != 56 or phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
                raise truncated
            f.seek(phoff)
            table = f.read(phnum * phentsize)
            for i in range(phnum):
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
                if p_type == 1 and p_offset + p_filesz > size:  # PT_LOAD
                    raise truncated
    except OSError as e:
        raise ArtifactError(f"cannot read {path} ({e.strerror or e}); {fix}") from None
