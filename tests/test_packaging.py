"""A plain install (pip install ., a wheel) carries what the code reads at run time: the shipped
model and the committed TVM tuning databases (without them an installed export built untuned
libraries, 10-20x slower, and the default model was not found)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package tree a wheel would install: setuptools' build_py (what bdist_wheel packs) run
    on a copy of the tracked files, so the checkout gets no build/ folder."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are what a build packs")
    files = subprocess.run(["git", "ls-files", "-z", "--", "pyproject.toml", "README.md", "runtime", "train_mx",
                            "export", "benchmarks", "models"], cwd=ROOT, capture_output=True, check=True).stdout
    src = tmp_path_factory.mktemp("src")
    for name in filter(None, files.decode().split("\0")):
        dest = src / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest)
    site = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                        "--build-lib", str(site)], cwd=src, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return site


def test_install_carries_the_model_and_tuning_databases(installed):
    from export.tvm_build import DB_FILES, TUNING_ROOT

    for name in ("config.json", "manifest.json", "weights.params"):
        assert (installed / "models" / "default" / name).is_file(), name
    for target in sorted(p.name for p in TUNING_ROOT.iterdir() if p.is_dir()):
        for name in DB_FILES:
            assert (installed / "export" / "tuning" / target / name).is_file(), f"{target}/{name}"
    assert not (installed / "tests").exists()


def test_installed_copy_tracks_with_the_default_model_and_tuned_database(installed, tmp_path):
    """Run from another folder with only the installed tree on the path: the default model
    resolves and loads, the llvm database is the checkout's (same hash, so a shared artifact
    cache is not rebuilt untuned), and the tracker follows a synthetic target."""
    from export.tvm_build import tuning_db
    from runtime.model import DEFAULT_MODEL, load_model

    code = (
        # an editable install of the checkout would fill in whatever the install lacks: hide it
        "import sys\n"
        f"sys.path[:] = [p for p in sys.path if p and __import__('os').path.realpath(p) != {str(ROOT)!r}]\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        "import runtime, numpy as np\n"
        "from runtime import Tracker\n"
        "from runtime.geometry import iou\n"
        "from runtime.model import DEFAULT_MODEL, load_model\n"
        "from runtime.synthetic import make_sequence\n"
        "from export.tvm_build import tuning_db\n"
        "import runtime.backends, runtime.head, export.build\n"
        "assert all(m.__file__.startswith(runtime.__file__.rsplit('/runtime/', 1)[0]) for m in\n"
        "           (runtime.backends, runtime.head, export.build)), 'a module came from outside the install'\n"
        "print(runtime.__file__, load_model(DEFAULT_MODEL).model_hash, tuning_db('llvm')[1])\n"
        "seq = make_sequence(n_frames=8, size=(320, 240), seed=3)\n"
        "t = Tracker(seed=0); f = seq.read_frame(0); t.init(f.image, f.gt)\n"
        "ious = [iou(t.update(g.image).box[None], g.gt[None])[0] for g in map(seq.read_frame, range(1, 8))]\n"
        "print(float(np.mean(ious)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    where, model_hash, db_hash, mean_iou = r.stdout.split()[-4:]
    assert Path(where).is_relative_to(installed)
    assert model_hash == load_model(DEFAULT_MODEL).model_hash
    assert tuning_db("llvm")[1] is not None and db_hash == tuning_db("llvm")[1]
    assert float(mean_iou) > 0.6


def test_install_hints_come_from_the_package_metadata():
    """The pins of pyproject.toml, numpy's first (the extras' packages alone pulled in a numpy
    MXNet cannot import), not OpenCV's (a second cv2 beside a GUI build); tune's reference to
    the export extra is expanded."""
    from runtime.extras import install_hint

    export, tune = install_hint("export"), install_hint("tune")
    assert export.startswith("pip install numpy==1.23.5 ") and "opencv" not in export and "mxnet" not in export
    assert "onnxruntime==" in export and "pip install -e '.[export]'" in export
    assert "onnxruntime==" in tune and "xgboost==" in tune and "mdtrack[" not in tune
    assert install_hint("nonexistent") == "in a checkout: pip install -e '.[nonexistent]'"
