"""Device check: the Python tvm backend (runtime.backends.tvm_backend.TVMBackend) on CUDA with
TVM's runtime alone (no libtvm_compiler.so) and the set's NVRTC cubins; nvcc fallback disabled."""
import json, os, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
import numpy as np
import tvm
import tvm.support.nvcc as nvcc
t_import = time.perf_counter() - t0

def no_nvcc(*a, **k):
    raise RuntimeError("nvcc was called: a kernel had no precompiled cubin")
nvcc.tvm_callback_cuda_compile = no_nvcc  # captured by use_precompiled_kernels as its fallback

from runtime import artifacts
from runtime.model import Model
from runtime.backends.tvm_backend import TVMBackend
served = []
_stem = artifacts.kernel_stem
artifacts.kernel_stem = lambda code: served.append(_stem(code)) or served[-1]

pack = Path("gpu_py")
pr = np.load(pack / "pr.npz")
cfg = json.loads(Path("models/default/config.json").read_text())
man = json.loads(Path("models/default/manifest.json").read_text())
model = Model(path=Path("models/default"), config=cfg, params={}, model_hash=man["model_hash"])
t1 = time.perf_counter()
b = TVMBackend(model, "cuda", artifacts=pack / "cuda")
t_init = time.perf_counter() - t1
cubins = {p.stem for p in (pack / "cuda" / "kernels").glob("*.cubin")}
out = {"tvm": tvm.__version__, "runtime_only": bool(getattr(tvm.base, "_RUNTIME_ONLY", False)),
       "relax_imported": "tvm.relax" in sys.modules, "import_s": round(t_import, 3),
       "backend_init_s (verify, load 8 libraries, warm-up)": round(t_init, 3),
       "kernels_served": len(served), "all_from_set_cubins": set(served) <= cubins, "buckets": []}
for i, shape in enumerate(b.policy.shapes):
    name = artifacts.bucket_file(i, shape, "npy")
    x, ref = pr["p_" + name[:-4]], pr["r_" + name[:-4]]
    y = b.extract(i, x)
    ts = []
    for k in range(220):
        s = time.perf_counter(); b.extract(i, x); ts.append(time.perf_counter() - s)
    ts = np.array(ts[20:]) * 1e3
    out["buckets"].append({"bucket": name[:-4], "max_rel_vs_mxnet": float(np.abs(y - ref).max() / np.abs(ref).max()),
                           "median_ms": round(float(np.median(ts)), 4), "p95_ms": round(float(np.percentile(ts, 95)), 4)})
out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
out["ok"] = out["all_from_set_cubins"] and out["kernels_served"] == 8 and all(r["max_rel_vs_mxnet"] <= 1e-4 for r in out["buckets"])
print(json.dumps(out, indent=1))
Path(os.environ.get("OUT", "."), "h200_python_tvm_backend_cubins.json").write_text(json.dumps(out, indent=1))
sys.exit(0 if out["ok"] else 1)
