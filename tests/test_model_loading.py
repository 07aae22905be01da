"""Model folders and artifact sets from elsewhere: damaged, outdated or hostile ones are
refused with one line naming the problem, never a traceback from MXNet / ONNX Runtime /
TVM, and an artifact set never makes the runtime read or load files outside its folder."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime import artifacts
from runtime.errors import ArtifactError, ModelError
from runtime.model import FEATURE_COV, Model, load_model, save_model


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """(config, params) of the tiny model, to write edited copies of with save_model."""
    m = load_model(tiny_model)
    return json.loads(json.dumps(m.config)), dict(m.params)


def _write(tmp_path, config, params) -> Path:
    """A model folder whose manifest vouches for ``config`` and ``params`` as given: the hashes
    match, so only the content checks can catch what is wrong."""
    return save_model(tmp_path / "model", config, params)


def test_tiny_model_loads(tiny_model):
    m = load_model(tiny_model)
    assert m.channels == 256 and m.policy.stride == 8


def test_config_edited_after_the_manifest_is_refused(tiny_model, tmp_path):
    """The manifest's hashes cover config.json: an edit without a new manifest is caught."""
    d = shutil.copytree(tiny_model, tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    c["feature_scale"] = 1.0
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(ModelError) as e:
        load_model(d)
    assert "config.json does not match its sha256" in _one_line(e)


def _set(path, value):
    def edit(c):
        *parents, key = path
        for p in parents:
            c = c[p]
        c[key] = value
    return edit


@pytest.mark.parametrize("edit, names", [
    (_set(["feature_scale"], "abc"), "'feature_scale'"),          # was: ValueError at the first frame
    (_set(["feature_scale"], None), "'feature_scale'"),           # was: TypeError
    (_set(["roi_shrink"], "x"), "'roi_shrink'"),                  # was: ValueError in the tracker
    (_set(["roi_offset"], 8), "'roi_offset'"),                     # a whole cell or more: not a centring
    (_set(["roi_sample_ratio"], "2"), "'roi_sample_ratio'"),
    (_set(["buckets", "stride"], 0), "'stride'"),                 # was: ZeroDivisionError
    (_set(["buckets", "stride"], 16), "'stride'"),                # was: accepted, features misplaced
    (_set(["buckets", "max_upscale"], 0), "'max_upscale'"),       # was: ZeroDivisionError at update
    (_set(["buckets", "target_size"], -64), "'target_size'"),     # was: "lower pos_iou_init"
    (_set(["buckets", "shapes"], [[192.5, 192]]), "'shapes'"),    # was: read as 192 without a word
    (_set(["buckets", "shapes"], [["192", "192"]]), "'shapes'"),
    (_set(["mean_bgr"], [float("nan"), 117, 123]), "'mean_bgr'"),  # was: tracked on NaN patches
    (_set(["mean_bgr"], ["104", "117", "123"]), "'mean_bgr'"),
    (_set(["feature_channels"], True), "'feature_channels'"),     # was: read as 1 channel
    (_set(["feature_channels"], 256.5), "'feature_channels'"),
    (_set(["feature_channels"], 512), "'feature_channels' is 512"),  # was: MXNet shape error in the head
    (_set(["extractor"], "vggm"), "'vggm' gives 512"),            # was: MXNet "conv2_weight is missing"
])
def test_config_with_unusable_values_is_refused(tiny, tmp_path, edit, names):
    config, params = tiny
    config = json.loads(json.dumps(config))
    edit(config)
    with pytest.raises(ModelError) as e:
        load_model(_write(tmp_path, config, params))
    msg = _one_line(e)
    assert "config.json" in msg and names in msg and "restore the model folder or retrain" in msg, msg


def test_model_of_an_older_version_without_optional_fields_loads(tiny, tmp_path):
    config, params = tiny
    config = {k: v for k, v in config.items() if k not in ("feature_scale", "roi_shrink", "roi_offset",
                                                         "roi_sample_ratio")}
    config["buckets"] = {k: v for k, v in config["buckets"].items() if k not in ("max_upscale", "stride")}
    params = {k: v for k, v in params.items() if k != FEATURE_COV}
    m = load_model(_write(tmp_path, config, params))
    assert (m.feature_scale, m.roi_shrink, m.roi_offset, m.policy.stride, m.feature_cov) == (1.0, 0.0, 0.0, 8, None)


def _replace(name, value):
    return lambda p: p.__setitem__(name, value)


@pytest.mark.parametrize("edit, names", [
    (_replace("fc4_weight", np.zeros((256, 256 * 9), np.float32)), "fc4_weight has shape (256, 2304)"),
    (_replace("fc4_weight", np.zeros((512, 512 * 9), np.float32)), "fc4_weight has shape (512, 4608)"),
    (_replace("fc5_weight", np.zeros((256, 512), np.float32)), "fc5_weight"),
    (_replace("conv1_weight", np.zeros((64, 3, 5, 5), np.float32)), "conv1_weight"),
    (_replace(FEATURE_COV, np.eye(128, dtype=np.float32)), FEATURE_COV),
    (lambda p: p.pop("fc5_bias"), "lacks fc5_bias"),
    (lambda p: p.pop("fire2_squeeze1x1_weight"), "lacks fire2_squeeze1x1_weight"),
    (lambda p: p.__setitem__("fc5_weight", p["fc5_weight"] * np.nan), "NaN"),
])
def test_weights_that_do_not_fit_the_config_are_refused(tiny, tmp_path, edit, names):
    """Before, each of these loaded and failed at init or update with an MXNet shape error,
    a KeyError or a numpy broadcast error from the head (or tracked on NaN scores)."""
    config, params = tiny
    params = dict(params)
    edit(params)
    with pytest.raises(ModelError) as e:
        load_model(_write(tmp_path, config, params))
    msg = _one_line(e)
    assert "weights.params" in msg and names in msg, msg


def test_artifact_set_passed_as_model_says_so(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "onnx", "model_hash": "0" * 64, "files": {}}))
    with pytest.raises(ModelError) as e:
        load_model(tmp_path)
    assert "artifact set, not a model folder" in _one_line(e) and "--artifacts" in str(e.value)


# -- artifact sets ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_set(tiny, tmp_path_factory):
    """(model, folder): the tiny model with two buckets and its ONNX set, built once."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from export.build import build_onnx

    config, params = tiny
    config = json.loads(json.dumps(config))
    config["buckets"]["shapes"] = [[192, 192], [224, 224]]
    root = tmp_path_factory.mktemp("onnx_set")
    model = load_model(save_model(root / "model", config, params))
    return model, build_onnx(model, root / "set" / "onnx", log=lambda m: None)


def _copy(onnx_set, tmp_path):
    model, folder = onnx_set
    d = tmp_path / "set" / "onnx"
    shutil.copytree(folder, d)
    return model, d


def _edit_manifest(d, edit):
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))


B0 = "bucket0_192x192.onnx"


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/hostname", "sub/x.onnx", ".."])
def test_manifest_naming_files_outside_its_folder_is_refused_unread(onnx_set, tmp_path, monkeypatch, name):
    model, d = _copy(onnx_set, tmp_path)
    (d.parent / "outside.onnx").write_bytes(b"x")
    _edit_manifest(d, lambda m: m["files"].update({name: "0" * 64}))
    read = []
    real = artifacts.sha256_file
    monkeypatch.setattr(artifacts, "sha256_file", lambda p: read.append(Path(p)) or real(p))
    with pytest.raises(ArtifactError) as e:
        artifacts.verify(d, model, "onnx", "onnx")
    assert "not a file name in the set's folder" in _one_line(e) and repr(name) in str(e.value)
    assert all(artifacts.inside(p, d) for p in read), read


def test_link_to_a_file_outside_the_set_is_refused(onnx_set, tmp_path):
    """The hash follows the link, so the manifest vouched for it and the backend loaded a file
    (for TVM a library: native code) from outside the folder the user passed."""
    model, d = _copy(onnx_set, tmp_path)
    shutil.move(d / B0, d.parent / B0)
    (d / B0).symlink_to(d.parent / B0)
    with pytest.raises(ArtifactError) as e:
        artifacts.verify(d, model, "onnx", "onnx")
    assert "outside the set's folder" in _one_line(e) and B0 in str(e.value)


def test_link_inside_the_set_is_accepted(onnx_set, tmp_path):
    model, d = _copy(onnx_set, tmp_path)
    shutil.move(d / B0, d / ("real_" + B0))
    (d / B0).symlink_to("real_" + B0)
    artifacts.verify(d, model, "onnx", "onnx")


@pytest.mark.parametrize("field, value", [
    ("files", [["bucket0_192x192.onnx", "0" * 64]]),  # was: AttributeError in check_files
    ("files", None),
    ("files", {B0: 5}),
    ("versions", "1.0"),                               # was: AttributeError in verify (TVM)
    ("target", ["onnx"]),
])
def test_manifest_fields_of_the_wrong_type_are_refused(onnx_set, tmp_path, field, value):
    model, d = _copy(onnx_set, tmp_path)
    _edit_manifest(d, lambda m: m.__setitem__(field, value))
    with pytest.raises(ArtifactError) as e:
        artifacts.verify(d, model, "onnx", "onnx")
    assert repr(field) in _one_line(e) and "manifest.json" in str(e.value)


def test_tvm_manifest_with_a_target_that_is_not_a_name(tmp_path, tiny_model):
    """The backend takes the target from the manifest: a number there was an AttributeError
    (``startswith``) while it composed the rebuild advice."""
    pytest.importorskip("tvm")
    from runtime.backends.tvm_backend import TVMBackend

    model = load_model(tiny_model)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"kind": "tvm", "target": 5, "model_hash": model.model_hash, "files": {}}))
    with pytest.raises(ArtifactError) as e:
        TVMBackend(model, artifacts=tmp_path)
    assert "'target' must be a string" in _one_line(e)


def test_onnx_file_of_another_bucket_with_rewritten_hashes_is_refused(onnx_set, tmp_path):
    """Was ONNX Runtime's InvalidArgument (three lines) from the warm-up run."""
    from runtime.backends.onnx_backend import OnnxRuntimeBackend

    model, d = _copy(onnx_set, tmp_path)
    shutil.copy(d / "bucket1_224x224.onnx", d / B0)
    _edit_manifest(d, lambda m: m["files"].__setitem__(B0, artifacts.sha256_file(d / B0)))
    with pytest.raises(ArtifactError) as e:
        OnnxRuntimeBackend(model, artifacts=d)
    assert "takes input (1, 3, 224, 224), bucket 0 needs (1, 3, 192, 192)" in _one_line(e)


def test_onnx_set_whose_features_do_not_fit_the_model_is_refused(onnx_set):
    """A set that claims this model's hash but gives another channel count: before, the
    backend started and the head failed (or pooled wrong features) at the first frame."""
    from runtime.backends.onnx_backend import OnnxRuntimeBackend

    model, d = onnx_set
    wide = Model(path=model.path, config=dict(model.config, feature_channels=512), params=model.params,
                 model_hash=model.model_hash)
    with pytest.raises(ArtifactError) as e:
        OnnxRuntimeBackend(wide, artifacts=d)
    assert "gives features of shape (1, 256, 24, 24)" in _one_line(e) and "(1, 512, 24, 24)" in str(e.value)
    OnnxRuntimeBackend(model, artifacts=d)  # the set itself is fine


def test_a_failed_weights_write_is_an_oserror_naming_the_file(tiny, tmp_path, monkeypatch):
    """MXNet reports a full disk in mx.nd.save as an MXNetError with a C++ stack: save_model
    turns it into one OSError line naming the file (feature_stats showed a traceback), and the
    model folder it would have replaced still loads."""
    import mxnet as mx

    config, params = tiny
    folder = _write(tmp_path, config, params)

    def full(fname, data):
        raise mx.base.MXNetError(f"[12:00:00] src/io/local_filesys.cc:209: Check failed\nStack trace:\n  [bt] (0) x\n"
                                 f"No space left on device")

    monkeypatch.setattr(mx.nd, "save", full)
    with pytest.raises(OSError) as e:
        save_model(folder, config, params)
    msg = _one_line(e)
    assert str(folder) in msg and "weights.params" in msg and msg.endswith("No space left on device"), msg
    monkeypatch.undo()
    assert load_model(folder).model_hash
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_roi_sample_ratio_is_one_constant_with_the_old_default(tiny, tmp_path):
    """The RoIAlign sample ratio training pools with (network.roi_pool's default) is the one
    the runtime reads for a model that does not record it (models before it was recorded)."""
    import inspect

    from runtime.model import ROI_SAMPLE_RATIO
    from train_mx import network

    assert ROI_SAMPLE_RATIO == 2  # the shipped model's, which does not record it
    assert inspect.signature(network.roi_pool).parameters["sample_ratio"].default == ROI_SAMPLE_RATIO
    config, params = tiny
    config = {k: v for k, v in config.items() if k != "roi_sample_ratio"}
    assert load_model(_write(tmp_path, config, params)).roi_sample_ratio == ROI_SAMPLE_RATIO
    from runtime.model import DEFAULT_MODEL

    assert "roi_sample_ratio" not in json.loads((DEFAULT_MODEL / "config.json").read_text())
