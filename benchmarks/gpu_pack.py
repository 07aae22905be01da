"""A self-contained folder that checks and times the TVM-CUDA feature path on a GPU machine.

    python -m benchmarks.gpu_pack --model models/default --out gpu_pack [--arch sm_90]

Builds here (no GPU needed): TVM-CUDA libraries for ``--arch`` and TVM-llvm libraries for a
generic x86-64 CPU (one per bucket, with their manifests); the kernels of every CUDA library
compiled ahead of time (TVM 0.27 stores CUDA kernels as source when the build machine has no
CUDA driver and compiles them when the library is loaded: the native runner answers that from
precompiled kernels and needs no compiler on the GPU machine). They are the export's own NVRTC
cubins in ``cuda/kernels/``, the files a deployment loads; nvcc compiles
``kernels/<sha256 of its CUDA source>.fatbin`` only for a bucket the set has no cubin for (an
``--arch`` above NVRTC 12.2's sm_90, or no ``cuda-kernels`` extra installed); the native
runner (CMake, x86-64) with the TVM runtime libraries and every non-system library they load
(libcudart); one patch per bucket cropped around the target of a real frame (``--sequence``,
a development sequence of ../shared when there is one; random values otherwise) with MXNet's
features for it; the extractor's weights as ``weights.npz``; ``run.sh`` and ``torch_ref.py``.

On the GPU machine ``./run.sh [RESULTS_DIR]`` runs the native runner per bucket on the CPU
(llvm libraries; ``--no-cpu`` leaves them out of a pack that must stay small) and on CUDA
(``CUDA_LIBS=DIR`` times other CUDA libraries, e.g. ones built there with a new tuning database), compares both with the MXNet reference, rebuilds the same
extractor in PyTorch from ``weights.npz`` and prints a JSON table of per-bucket median ms,
TVM-CUDA vs PyTorch (cuDNN). It says so plainly, and still runs the CPU part, when the TVM
runtime cannot use CUDA there (no driver, a driver older than CUDA 13, no GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACK_MARKER = "pack.json"
DEFAULT_CPU_TARGET = "llvm:x86-64-v2"  # any x86-64 server CPU of the last decade
# Same flags as tvm.support.nvcc (and the runner's nvcc fallback); PTX kept for newer GPUs.
NVCC_FLAGS = ["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
              "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math"]
SYSTEM_LIB_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")


class PackError(RuntimeError):
    """A build step failed (nvcc, cmake, the size limit): its message says which and why."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- pieces


def subset_model(model, buckets, workdir: Path):
    """``model`` restricted to the bucket indices ``buckets`` (re-numbered from 0)."""
    if buckets is None:
        return model
    from runtime.model import load_model, save_model

    config = json.loads(json.dumps(model.config))
    config["buckets"]["shapes"] = [list(model.policy.shapes[b]) for b in buckets]
    return load_model(save_model(workdir / "model", config, model.params))


def cuda_source(onnx_path: Path, target, library: Path) -> str | None:
    """The CUDA source ``library`` carries, or None when it carries compiled kernels.

    Compiles the bucket again (deterministic, seconds) to read the source through TVM's API,
    and checks that exactly these bytes are inside the exported library.
    """
    from export.cuda_kernels import cuda_module
    from export.tvm_build import compile_module, import_onnx, tuning_db

    db_dir, _ = tuning_db(target.name)
    ex = compile_module(import_onnx(onnx_path), target, db_dir)
    cuda = cuda_module(ex.mod)
    if cuda is None:
        raise PackError(f"{library}: no CUDA module in the compiled executable")
    src = cuda.inspect_source("cuda")
    if not src:
        return None  # already PTX / cubin
    if src.encode() not in library.read_bytes():
        log(f"  warning: {library.name} carries other CUDA source than a fresh compile of the same bucket; "
            "its kernels are not precompiled (the runner then needs nvcc on the GPU machine)")
        return None
    return src


def find_nvcc() -> str | None:
    for p in (os.environ.get("NVCC"), shutil.which("nvcc"),
              *(str(Path(os.environ[v]) / "bin" / "nvcc") for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ),
              "/usr/local/cuda/bin/nvcc"):
        if p and Path(p).is_file() and os.access(p, os.X_OK):
            return p
    return None


def precompile_kernels(src: str, arch: str, out_dir: Path, nvcc: str) -> str:
    """nvcc ``src`` into out_dir/<sha256>.fatbin (SASS for ``arch`` + PTX); returns the hash."""
    from runtime.artifacts import kernel_stem

    digest = kernel_stem(src)
    target = out_dir / f"{digest}.fatbin"
    if target.is_file():
        return digest
    num = arch.removeprefix("sm_")
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / "kernels.cu"
        cu.write_text(src)
        cmd = [nvcc, "--fatbin", "-gencode", f"arch=compute_{num},code=sm_{num}",
               "-gencode", f"arch=compute_{num},code=compute_{num}", *NVCC_FLAGS, "-o", str(target), str(cu)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not target.is_file():
            raise PackError(f"nvcc failed for {arch}:\n{(r.stdout + r.stderr)[-3000:]}")
    return digest


def build_runner(out: Path, build_dir: Path) -> None:
    """CMake Release build of the native runner, installed into out/bin and out/lib."""
    if shutil.which("cmake") is None:
        raise PackError("cmake is not installed: apt-get install cmake g++")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    steps = [["cmake", "-S", str(ROOT), "-B", str(build_dir), *gen, "-DCMAKE_BUILD_TYPE=Release",
              f"-DTVM_PYTHON={sys.executable}"],
             ["cmake", "--build", str(build_dir), "-j", str(min(4, os.cpu_count() or 1))],
             ["cmake", "--install", str(build_dir), "--prefix", str(out)]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise PackError(f"{' '.join(cmd)} failed:\n{(r.stdout + r.stderr)[-4000:]}")
    shutil.rmtree(out / "include", ignore_errors=True)


def copy_runtime_deps(out: Path) -> list:
    """Copy into out/lib every library the runner's files load from outside the system
    folders (libcudart from the CUDA toolkit); libcuda.so.1 is the driver's and stays out."""
    copied, lib = [], out / "lib"
    for f in [out / "bin" / "mdtrack_features", *sorted(lib.glob("*.so*"))]:
        r = subprocess.run(["ldd", str(f)], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            parts = line.split("=>")
            if len(parts) != 2:
                continue
            name, where = parts[0].strip(), parts[1].split("(")[0].strip()
            if not where.startswith("/") or (lib / name).exists():
                continue
            real = os.path.realpath(where)
            if real.startswith(str(out)) or any(real.startswith(d) for d in SYSTEM_LIB_DIRS):
                continue
            shutil.copy2(real, lib / name)
            copied.append(name)
    return copied


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


# ----------------------------------------------------------------------------- the pack


def sample_patches(model, sequence=None, seed=0):
    """One extractor input per bucket, prepared as the tracker prepares its patch: cropped
    around the first ground-truth box of ``sequence`` (default: the first development
    sequence in ../shared) and mean-subtracted. Random values when no sequence is found."""
    from runtime.buckets import extractor_input

    if sequence is None:
        from .common import default_sequences

        found = default_sequences()
        sequence = found[0] if found else None
    if sequence is not None:
        from runtime.sources import open_sequence_folder

        with open_sequence_folder(sequence) as src:
            frame = next(iter(src))
            box = np.asarray(src.init_box, dtype=np.float64)
        out = [extractor_input(frame.image, model.policy.for_shape(box, b), model.mean)
               for b in range(len(model.policy.shapes))]
        return out, f"{Path(sequence).name} frame 0, cropped around its ground-truth box"
    rng = np.random.default_rng(seed)
    return ([rng.uniform(-128, 128, (1, 3) + tuple(s)).astype(np.float32) for s in model.policy.shapes],
            f"uniform random in [-128, 128] (seed {seed}; no sequence found)")


def build_pack(model_dir, out, arch="sm_90", cpu_target=DEFAULT_CPU_TARGET, buckets=None, build_dir=None,
               max_mb=60.0, seed=0, with_cpu=True, sequence=None) -> dict:
    from export.targets import parse
    from runtime.errors import TrackerInputError
    from runtime.model import load_model
    from runtime.outputs import check_output_folder
    from runtime.sources import open_sequence_folder

    # Everything checked before the old pack is touched or minutes are spent compiling.
    final = Path(out).expanduser()
    check_output_folder(final, "--out")
    if final.exists() and any(final.iterdir()) and not (final / PACK_MARKER).is_file():
        raise TrackerInputError(f"{final} exists and is not a GPU pack: choose another --out")
    full = load_model(model_dir)
    n = len(full.policy.shapes)
    if buckets is not None and (not buckets or any(not 0 <= b < n for b in buckets)):
        raise TrackerInputError(f"--buckets {buckets}: the model has buckets 0 to {n - 1}")
    cuda_t, cpu_t = parse(f"cuda:{arch}"), parse(cpu_target)
    if not max_mb > 0:
        raise TrackerInputError(f"--max-mb must be positive, got {max_mb}")
    if sequence is not None:
        open_sequence_folder(sequence).close()
    if not (ROOT / "CMakeLists.txt").is_file():
        raise PackError(f"the native runner is built from a checkout's CMakeLists.txt and native/, which {ROOT} "
                        "(an installed copy) does not have: run benchmarks.gpu_pack from a clone of the project")
    if shutil.which("cmake") is None:
        raise PackError("cmake is not installed: apt-get install cmake g++")
    # Built beside the destination and swapped in when complete: a failed build keeps the old pack.
    from export.build import staged

    with staged(final, check=None) as out:  # the pack marker was checked above
        return _build_into(out, full, buckets, cuda_t, cpu_t, arch, build_dir, seed, with_cpu, sequence, max_mb, final)


def _build_into(out, full, buckets, cuda_t, cpu_t, arch, build_dir, seed, with_cpu, sequence, max_mb, final) -> dict:
    from export.build import build_onnx, build_tvm
    from runtime.artifacts import KERNELS, bucket_file, kernel_stem, peek_manifest
    from runtime.backends.mxnet_backend import MXNetBackend

    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = subset_model(full, buckets, tmp)
        shapes = [tuple(s) for s in model.policy.shapes]

        log(f"[1/6] ONNX export of {len(shapes)} buckets (parity-checked against MXNet)")
        onnx_dir = build_onnx(model, tmp / "onnx", log=lambda m: log("  " + m))
        log(f"[2/6] TVM {cuda_t.name} and {cpu_t.name} libraries")
        build_tvm(model, cuda_t, onnx_dir, out / "cuda", log=lambda m: log("  " + m))
        if with_cpu:
            build_tvm(model, cpu_t, onnx_dir, out / "cpu", log=lambda m: log("  " + m))

        log(f"[3/6] CUDA kernels for {arch}, compiled ahead of time")
        nvcc = find_nvcc()
        (out / "kernels").mkdir()
        kernels = {}
        for b, shape in enumerate(shapes):
            lib = out / "cuda" / bucket_file(b, shape, "so")
            src = cuda_source(onnx_dir / bucket_file(b, shape, "onnx"), cuda_t, lib)
            own = None if src is None else Path("cuda") / KERNELS / f"{kernel_stem(src)}.cubin"
            if src is None:
                kernels[b] = None
                log(f"  bucket {b}: no kernels to precompile")
            elif (out / own).is_file():  # the export's NVRTC cubin (the runner checks it against the set's manifest)
                kernels[b] = own.as_posix()
                log(f"  bucket {b} {shape[0]}x{shape[1]}: {kernels[b][:29]}....cubin (the export's, NVRTC)")
            elif nvcc is None:
                log(f"  bucket {b}: no cubin in the set and no nvcc here; the runner will need nvcc on the GPU machine")
                kernels[b] = None
            else:
                kernels[b] = f"kernels/{precompile_kernels(src, arch, out / 'kernels', nvcc)}.fatbin"
                log(f"  bucket {b} {shape[0]}x{shape[1]}: {kernels[b][:24]}....fatbin (nvcc)")

        log("[4/6] native runner (CMake, Release) and its runtime libraries")
        build_runner(out, Path(build_dir) if build_dir else tmp / "build")
        deps = copy_runtime_deps(out)
        log(f"  bin/mdtrack_features; lib/: {', '.join(sorted(p.name for p in (out / 'lib').iterdir()))}"
            + (f" (copied {', '.join(deps)})" if deps else ""))

        log("[5/6] sample patches and MXNet reference features")
        (out / "patches").mkdir()
        (out / "reference").mkdir()
        ref = MXNetBackend(model)
        patches, source = sample_patches(model, sequence, seed)
        log(f"  patches: {source}")
        for b, shape in enumerate(shapes):
            name = bucket_file(b, shape, "npy")
            np.save(out / "patches" / name, patches[b])
            np.save(out / "reference" / name, ref.extract(b, patches[b]))
        np.savez(out / "weights.npz", **{k: np.asarray(v, np.float32) for k, v in model.extractor_params().items()})

        log("[6/6] run.sh, torch_ref.py, pack.json")
        names = [Path(bucket_file(b, s, "so")).stem for b, s in enumerate(shapes)]
        (out / "run.sh").write_text(RUN_SH.replace("@BUCKETS@", " ".join(names)))
        (out / "run.sh").chmod(0o755)
        (out / "torch_ref.py").write_text(TORCH_REF)
        info = {
            "what": "mdtrack GPU pack: ./run.sh [RESULTS_DIR] on a machine with an NVIDIA GPU",
            "arch": arch,
            "cuda_target": cuda_t.name,
            "cpu_target": cpu_t.name,
            "extractor": model.extractor,
            "feature_scale": model.feature_scale,
            "channels": model.channels,
            "model_hash": model.model_hash,
            "versions": (peek_manifest(out / "cuda") or {}).get("versions"),
            "buckets": [{"name": n, "shape": list(s), "kernels": kernels[b]}
                        for b, (n, s) in enumerate(zip(names, shapes))],
            "tolerance_rel": 1e-4,
            "patches": source,
            "cpu_libraries": with_cpu,
            "needs": "x86-64 Linux with glibc >= 2.34 and libstdc++ from GCC >= 11; for CUDA an NVIDIA driver "
                     "for CUDA 13 (>= 580); python3 with numpy (and torch for the PyTorch side)",
        }
        (out / PACK_MARKER).write_text(json.dumps(info, indent=1))
    size = folder_bytes(out)
    info["size_mb"] = round(size / 2**20, 2)
    (out / PACK_MARKER).write_text(json.dumps(info, indent=1))
    log(f"{final}: {info['size_mb']} MB in {time.time() - t_start:.0f} s")
    if size > max_mb * 2**20:
        raise PackError(f"the pack is {size / 2**20:.1f} MB, over the {max_mb} MB limit: pick fewer --buckets "
                           f"({final} is unchanged)")
    return info


def main(argv=None) -> int:
    from export.onnx_export import ParityError
    from runtime.errors import TrackerInputError, cli_logging

    cli_logging()

    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_pack", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped models/default)")
    ap.add_argument("--out", required=True, help="pack folder to write (replaced if it is an older pack)")
    ap.add_argument("--arch", default="sm_90", help="CUDA architecture of the GPU machine (default sm_90: H100/H200)")
    ap.add_argument("--cpu-target", default=DEFAULT_CPU_TARGET,
                    help=f"TVM target of the CPU parity libraries (default {DEFAULT_CPU_TARGET})")
    ap.add_argument("--buckets", default=None, help="comma-separated bucket indices (default: all)")
    ap.add_argument("--build-dir", default=None, help="CMake build folder to use (default: a temporary one)")
    ap.add_argument("--max-mb", type=float, default=60.0, help="fail when the pack is larger (default 60)")
    ap.add_argument("--no-cpu", action="store_true", help="leave out the CPU (llvm) libraries and their check")
    ap.add_argument("--sequence", default=None,
                    help="sequence folder whose first frame gives the patches (default: a development sequence)")
    args = ap.parse_args(argv)
    buckets = None
    if args.buckets:
        try:
            buckets = [int(b) for b in args.buckets.split(",") if b.strip()]
        except ValueError:
            ap.error(f"--buckets takes indices like 0,3, got {args.buckets!r}")
    if not args.arch.startswith("sm_") or not args.arch[3:].isdigit():
        ap.error(f"--arch takes sm_XX, got {args.arch!r}")
    try:
        build_pack(args.model, args.out, args.arch, args.cpu_target, buckets, args.build_dir, args.max_mb,
                   with_cpu=not args.no_cpu, sequence=args.sequence)
    except (PackError, ParityError, TrackerInputError) as e:  # a failed build step or check, a bad model or argument
        print(f"error: {e}; an existing pack is unchanged", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or args.out}: {e.strerror or e} (an existing pack is unchanged)", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- files of the pack

RUN_SH = r"""#!/usr/bin/env bash
# mdtrack GPU pack: checks and times the TVM-CUDA feature extractor on this machine.
#   ./run.sh [RESULTS_DIR]      (default: ./results; REPEAT=50 WARMUP=10 PYTHON=python3;
#                               CUDA_LIBS=DIR times the CUDA libraries in DIR instead of cuda/)
# 1. the native runner on the CPU (TVM llvm libraries) vs the MXNet reference features;
# 2. the native runner on CUDA (TVM CUDA libraries, kernels precompiled in cuda/kernels/ or
#    kernels/) vs the same;
# 3. torch_ref.py: the same extractor in PyTorch (cuDNN) from weights.npz, its features vs the
#    reference, and a JSON table of per-bucket median ms, TVM-CUDA vs PyTorch.
# Exit status: 0 all checks passed; 1 a check failed; 2 the runner cannot start here;
# 3 CPU checks passed but CUDA could not be used (reported above).
set -u
HERE="$(cd "$(dirname "$0")" && pwd)"
RES="${1:-$HERE/results}"
RES="$(mkdir -p "$RES" && cd "$RES" && pwd)"
PY="${PYTHON:-python3}"
REPEAT="${REPEAT:-50}"
WARMUP="${WARMUP:-10}"
RUNNER="$HERE/bin/mdtrack_features"
CUDA_LIBS="${CUDA_LIBS:-$HERE/cuda}"
BUCKETS="@BUCKETS@"
mkdir -p "$RES/cpu" "$RES/cuda"
status=0

echo "== machine"
echo "$(uname -m), $(ldd --version 2>&1 | head -n1)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/  /'
else
  echo "  nvidia-smi: not found"
fi
if ! "$RUNNER" --help >/dev/null 2>"$RES/runner_start.err"; then
  echo "error: the native runner does not start on this machine:"
  sed 's/^/  /' "$RES/runner_start.err"
  ldd "$RUNNER" 2>&1 | grep -E "not found|version" | sed 's/^/  /'
  exit 2
fi

echo "== CPU: native runner, TVM llvm libraries, vs MXNet reference"
[ -d "$HERE/cpu" ] || echo "  (no CPU libraries in this pack)"
[ -d "$HERE/cpu" ] && for b in $BUCKETS; do
  if "$RUNNER" --lib "$HERE/cpu/$b.so" --input "$HERE/patches/$b.npy" --output "$RES/cpu/$b.npy" \
      --repeat 3 --warmup 1 >"$RES/cpu/$b.json" 2>"$RES/cpu/$b.err"; then
    echo "  $b: ok"
  else
    echo "  $b: FAILED: $(tail -n 3 "$RES/cpu/$b.err")"; status=1
  fi
done

echo "== CUDA: native runner, TVM CUDA libraries of $CUDA_LIBS"
cuda_ok=1
first="${BUCKETS%% *}"
if ! "$RUNNER" --lib "$CUDA_LIBS/$first.so" --input "$HERE/patches/$first.npy" --device cuda \
    --kernels "$HERE/kernels" --repeat 0 >/dev/null 2>"$RES/cuda/probe.err"; then
  cuda_ok=0
  echo "  CUDA NOT AVAILABLE to the TVM runtime here; the CUDA check and timing are skipped:"
  sed 's/^/    /' "$RES/cuda/probe.err" | head -n 8
  echo "  (the pack's libtvm_runtime_cuda.so needs the NVIDIA driver's libcuda.so.1, CUDA 13 level: driver >= 580)"
fi
if [ "$cuda_ok" = 1 ]; then
  for b in $BUCKETS; do
    if "$RUNNER" --lib "$CUDA_LIBS/$b.so" --input "$HERE/patches/$b.npy" --output "$RES/cuda/$b.npy" \
        --device cuda --kernels "$HERE/kernels" --repeat "$REPEAT" --warmup "$WARMUP" \
        >"$RES/cuda/$b.json" 2>"$RES/cuda/$b.err"; then
      echo "  $b: $(cat "$RES/cuda/$b.json")"
    else
      echo "  $b: FAILED: $(tail -n 3 "$RES/cuda/$b.err")"; status=1
    fi
  done
fi

echo "== compare and time against PyTorch (torch_ref.py)"
"$PY" "$HERE/torch_ref.py" --pack "$HERE" --results "$RES" --repeat "$REPEAT" --warmup "$WARMUP"
rc=$?
[ "$rc" != 0 ] && status=1
if [ "$status" = 0 ] && [ "$cuda_ok" = 0 ]; then
  echo "CPU checks passed; CUDA was not available (exit 3)"
  exit 3
fi
exit "$status"
"""

TORCH_REF = r'''#!/usr/bin/env python3
"""The mdtrack feature extractor in PyTorch, and the GPU pack's comparisons.

    python3 torch_ref.py [--pack DIR] [--results DIR] [--device auto|cuda|cpu] [--repeat N] [--warmup K]

Rebuilds the extractor of train_mx/network.py from weights.npz (SqueezeNet v1.1 to fire5, or
RT-MDNet's VGG-M conv1-3): same padding, max pooling 3x3 stride 2 pad 1 (MXNet's 'valid'
convention = floor), fire modules concatenating expand1x1 then expand3x3, LRN (5, 1e-4, 0.75,
k=2), output times feature_scale. Compares with the MXNet reference features of the pack: the
PyTorch output, and the native runner's CPU / CUDA outputs found in --results (written by
run.sh). Times PyTorch per bucket the way the runner is timed (patch copied in, forward,
features copied out) and prints one JSON table. Needs numpy; torch for the PyTorch part.
Exit 1 when a comparison exceeds the pack's tolerance (max abs diff / max |reference|).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def build_extractor(torch, extractor, weights, feature_scale):
    F = torch.nn.functional

    class Extractor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for k, v in weights.items():
                self.register_buffer(k, torch.from_numpy(np.ascontiguousarray(v, np.float32)))

        def conv(self, x, name, stride=1, pad=0, dilation=1):
            w, b = getattr(self, name + "_weight"), getattr(self, name + "_bias")
            return F.relu(F.conv2d(x, w, b, stride=stride, padding=pad, dilation=dilation))

        @staticmethod
        def pool(x):
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=False)

        def fire(self, x, name):
            s = self.conv(x, name + "_squeeze1x1")
            return torch.cat([self.conv(s, name + "_expand1x1"), self.conv(s, name + "_expand3x3", pad=1)], dim=1)

        @staticmethod
        def lrn(x):
            return F.local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0)

        def forward(self, x):
            if extractor == "squeezenet":
                x = self.pool(self.conv(x, "conv1", stride=2, pad=1))
                x = self.fire(self.fire(x, "fire2"), "fire3")
                x = self.pool(x)
                x = self.fire(self.fire(x, "fire4"), "fire5")
            elif extractor == "vggm":
                x = self.pool(self.lrn(self.conv(x, "conv1", stride=2, pad=3)))
                x = self.lrn(self.conv(x, "conv2", stride=2, pad=2))
                x = self.conv(x, "conv3", stride=1, pad=3, dilation=3)
            else:
                raise ValueError(f"unknown extractor {extractor!r}")
            return x * feature_scale if feature_scale != 1.0 else x

    return Extractor().eval()


def diff(a, ref):
    if a is None:
        return None
    if a.shape != ref.shape:
        return {"error": f"shape {list(a.shape)} != reference {list(ref.shape)}"}
    d = float(np.abs(a.astype(np.float64) - ref).max())
    return {"max_abs": d, "max_rel": d / max(float(np.abs(ref).max()), 1e-12)}


def median_ms(fn, repeat, warmup):
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(t)) if t else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent
    ap.add_argument("--pack", default=str(here))
    ap.add_argument("--results", default=None, help="run.sh's results folder (native runner outputs)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--tf32", action="store_true",
                    help="let cuDNN use TF32 (faster on Ampere and later; then torch_vs_ref exceeds the fp32 tolerance)")
    args = ap.parse_args()
    pack = Path(args.pack)
    info = json.loads((pack / "pack.json").read_text())
    tol = info["tolerance_rel"]
    res = Path(args.results) if args.results else None

    torch, model, dev, torch_note = None, None, None, None
    try:
        import torch
    except ImportError as e:
        torch_note = f"torch not importable ({e}): PyTorch side skipped"
    if torch is not None:
        want = args.device
        if want == "auto":
            want = "cuda" if torch.cuda.is_available() else "cpu"
        if want == "cuda" and not torch.cuda.is_available():
            print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            return 2
        dev = torch.device(want)
        torch.backends.cudnn.benchmark = True
        # cuDNN convolutions default to TF32 on Ampere and later: 4e-4..1e-3 relative
        # difference from MXNet's fp32 on an H200, against 8e-7 in fp32. --tf32 times that mode.
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        weights = dict(np.load(pack / "weights.npz"))
        model = build_extractor(torch, info["extractor"], weights, info["feature_scale"]).to(dev)
        if want == "cpu":
            torch_note = "PyTorch timed on the CPU (no CUDA device visible to torch)"

    rows, ok = [], True
    for b in info["buckets"]:
        name = b["name"]
        x = np.load(pack / "patches" / f"{name}.npy")
        ref = np.load(pack / "reference" / f"{name}.npy").astype(np.float64)
        row = {"bucket": name, "shape": b["shape"]}
        for kind in ("cpu", "cuda"):
            out = res / kind / f"{name}.npy" if res else None
            row[f"tvm_{kind}_vs_ref"] = diff(np.load(out), ref) if out is not None and out.is_file() else None
            js = res / kind / f"{name}.json" if res else None
            if js is not None and js.is_file() and js.stat().st_size:
                row[f"tvm_{kind}_median_ms"] = json.loads(js.read_text())["median_ms"]
            else:
                row[f"tvm_{kind}_median_ms"] = None
        if model is not None:
            with torch.inference_mode():
                y = model(torch.from_numpy(x).to(dev)).cpu().numpy()
                row["torch_vs_ref"] = diff(y, ref)
                sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

                def end_to_end():  # as the native runner times one run: copy in, forward, copy out
                    return model(torch.from_numpy(x).to(dev)).cpu()

                xd = torch.from_numpy(x).to(dev)

                def forward_only():
                    model(xd)
                    sync()

                row["torch_device"] = dev.type
                row["torch_median_ms"] = median_ms(end_to_end, args.repeat, args.warmup)
                row["torch_forward_median_ms"] = median_ms(forward_only, args.repeat, args.warmup)
        for k, v in row.items():
            if k.endswith("_vs_ref") and v is not None and ("error" in v or v["max_rel"] > tol):
                ok = False
        rows.append(row)

    print("bucket            tvm-cpu rel   tvm-cuda rel   torch rel     tvm-cuda ms   torch ms", file=sys.stderr)
    fmt = lambda d: "-" if d is None else ("shape!" if "error" in d else f"{d['max_rel']:.2e}")  # noqa: E731
    num = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        print(f"{r['bucket']:17s} {fmt(r['tvm_cpu_vs_ref']):13s} {fmt(r['tvm_cuda_vs_ref']):14s} "
              f"{fmt(r.get('torch_vs_ref')):13s} {num(r['tvm_cuda_median_ms']):13s} {num(r.get('torch_median_ms'))}",
              file=sys.stderr)
    summary = {"ok": ok, "tolerance_rel": tol, "note": torch_note, "torch_tf32": args.tf32,
               "timing": "median ms of one run: patch copied to the device, extractor, features copied back",
               "torch": getattr(torch, "__version__", None),
               "gpu": torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None,
               "buckets": rows}
    print(json.dumps(summary))
    if res is not None:
        (res / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
'''

if __name__ == "__main__":
    sys.exit(main())
