"""Shared fixtures: a tiny model folder and one compiled-artifact cache for the session."""
import tempfile
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config):
    """Hypothesis keeps its files (examples, a constants cache) in ./.hypothesis, the
    repository in CI: give it a temporary home so the suite writes only under tmp folders.
    ONNX Runtime, imported by test modules directly, gets the project's telemetry opt-out (it
    wrote a device id under the runner's HOME). SIGINT is made interruptible (below)."""
    import os

    from export.onnx_export import TELEMETRY_OPT_OUT

    if not os.environ.get(TELEMETRY_OPT_OUT[0]):
        os.environ[TELEMETRY_OPT_OUT[0]] = TELEMETRY_OPT_OUT[1]
    # A suite started in the background by a shell without job control (`cmd &`, as some CI
    # runners do) inherits SIGINT ignored, and so does every process it starts; the tracker
    # and training then rightly leave it ignored (runtime.stopping), and the tests that
    # interrupt them with SIGINT would fail. Python's own handler is reset to the default in
    # the processes the suite starts.
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:
        return
    set_hypothesis_home_dir(tempfile.mkdtemp(prefix="hypothesis-"))


def _extractor_params(rng: np.random.Generator) -> dict:
    """Seeded He-normal convs, with or without ../shared: the suite computes the same numbers
    on every machine (tests that need the ImageNet or shipped weights load them themselves)."""
    from train_mx import network

    feat, _ = network.extractor("squeezenet")
    arg_shapes, _, _ = feat.infer_shape(data=(1, 3, 224, 224))
    shapes = dict(zip(feat.list_arguments(), arg_shapes))
    out = {}
    for name in network.extractor_param_names("squeezenet"):
        shape = shapes[name]
        if name.endswith("_weight"):
            fan_in = int(np.prod(shape[1:]))
            out[name] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


def _xavier(rng: np.random.Generator, n_out: int, n_in: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, (n_out, n_in)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small SqueezeNet model folder (config, weights, manifest) written by save_model."""
    from runtime.buckets import BucketPolicy
    from runtime.model import FEATURE_COV, save_model

    rng = np.random.default_rng(0)
    config = {
        "extractor": "squeezenet",
        "feature_channels": 256,
        "feature_scale": 1 / 32,
        "mean_bgr": [104, 117, 123],
        "buckets": BucketPolicy().to_dict(),
    }
    params = _extractor_params(rng)
    params["fc4_weight"] = _xavier(rng, 512, 256 * 9)
    params["fc4_bias"] = np.zeros(512, np.float32)
    params["fc5_weight"] = _xavier(rng, 512, 512)
    params["fc5_bias"] = np.zeros(512, np.float32)
    # identity feature statistics: the same factored fc4 as none, without the missing-stats warning
    params[FEATURE_COV] = np.eye(256, dtype=np.float32)
    return save_model(tmp_path_factory.mktemp("tiny_model") / "model", config, params)


@pytest.fixture(scope="session")
def artifact_cache(tmp_path_factory):
    """One MDTRACK_CACHE for the session, so compiled backends are built once for all tests."""
    path = tmp_path_factory.getbasetemp() / "mdtrack-cache"
    path.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("MDTRACK_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture()
def no_cost_model(monkeypatch):
    """For tests that stop or fake tuning before its search: MetaSchedule's cost model needs
    xgboost, which the test extra does not install, so tuning's package check skips it."""
    import export

    monkeypatch.setattr(export, "TUNE_PACKAGES", {k: v for k, v in export.TUNE_PACKAGES.items() if k != "xgboost"})


def expect_one_error_line(capsys, code, *words):
    """A user's mistake: exit 2 and one ``error:`` line on stderr naming every one of ``words``."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


ROOT = Path(__file__).resolve().parents[1]


def child_env(env=None) -> dict:
    """The environment for a child Python process that imports this checkout's packages,
    whatever is installed and whatever the working folder."""
    import os

    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env
