"""Sequence readers: OTB / VOT folders, video files, globs, cameras, and their error messages."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.errors import SequenceError, TrackerInputError
from runtime.sources import (
    CameraSource,
    Frame,
    ImageGlobSource,
    OTBSequence,
    SequenceSource,
    VideoSource,
    VOTSequence,
    load_groundtruth,
    natural_key,
    open_sequence_folder,
    parse_box,
    read_image,
)

H, W = 24, 32


def _image(i: int) -> np.ndarray:
    """A frame whose pixels encode its index (survives PNG exactly, JPEG roughly)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = 10 * i
    img[..., 1] = 100
    img[..., 2] = 255 - 10 * i
    return img


def _write(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(path.suffix, img)
    assert ok
    path.write_bytes(buf.tobytes())


def make_otb(root: Path, n: int = 5, gt_text: str | None = None, ext: str = ".png",
             gt_name: str = "groundtruth_rect.txt") -> Path:
    folder = root / "seq"
    (folder / "img").mkdir(parents=True)
    for i in range(n):
        _write(folder / "img" / f"{i + 1:04d}{ext}", _image(i))
    if gt_text is None:
        gt_text = "".join(f"{i + 1},{i + 2},10,8\n" for i in range(n))
    if gt_text is not False:
        (folder / gt_name).write_text(gt_text)
    return folder


def _frames(src):
    return list(src)


# --------------------------------------------------------------------------- OTB


def test_otb_reads_frames_in_order_with_gt(tmp_path):
    folder = make_otb(tmp_path, 5)
    with OTBSequence(folder) as seq:
        assert isinstance(seq, SequenceSource)
        assert seq.name == "seq"
        assert len(seq) == 5
        assert [Path(p).name for p in seq.frame_paths] == [f"{i:04d}.png" for i in range(1, 6)]
        frames = _frames(seq)
        assert [f.index for f in frames] == list(range(5))
        for i, f in enumerate(frames):
            assert isinstance(f, Frame)
            assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
            np.testing.assert_array_equal(f.image, _image(i))
            assert f.gt.dtype == np.float64 and f.gt.shape == (4,)
            np.testing.assert_array_equal(f.gt, [i + 1, i + 2, 10, 8])
            assert f.error is None and f.path == seq.frame_paths[i]
        assert seq.groundtruth.shape == (5, 4)
        np.testing.assert_array_equal(seq.init_box, [1, 2, 10, 8])
        assert seq.warnings == []
        # random access without iterating
        np.testing.assert_array_equal(seq.read_frame(-1).image, _image(4))
        np.testing.assert_array_equal(seq[2].gt, [3, 4, 10, 8])
        with pytest.raises(IndexError):
            seq.read_frame(5)


def test_otb_iterates_lazily(tmp_path, monkeypatch):
    folder = make_otb(tmp_path, 4)
    seq = OTBSequence(folder)
    calls = []
    import runtime.sources as sources

    real = sources.read_image
    monkeypatch.setattr(sources, "read_image", lambda p: calls.append(p) or real(p))
    it = iter(seq)
    assert calls == []
    next(it)
    assert len(calls) == 1


@pytest.mark.parametrize(
    "text",
    [
        "1,2,3,4\n5,6,7,8\n9,10,11,12\n",
        "1\t2\t3\t4\n5\t6\t7\t8\n9\t10\t11\t12\n",
        "1 2 3 4\n5  6 7   8\n9 10 11 12\n",
        "1, 2,\t3 4\r\n5 ,6,7,8\r\n9\t10 , 11,12\r\n\r\n\n  \n",
        "\ufeff1,2,3,4\n5,6,7,8\n9,10,11,12",
    ],
    ids=["comma", "tab", "space", "mixed-crlf-trailing-blank", "bom-no-final-newline"],
)
def test_otb_separators(tmp_path, text):
    folder = make_otb(tmp_path, 3, text)
    seq = OTBSequence(folder)
    np.testing.assert_array_equal(seq.groundtruth, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    assert seq.warnings == []


def test_otb_float_values(tmp_path):
    folder = make_otb(tmp_path, 2, "1.5,2.25,3e1,4.125\n-3.5,0.0,10,8\n")
    np.testing.assert_array_equal(OTBSequence(folder).groundtruth, [[1.5, 2.25, 30, 4.125], [-3.5, 0, 10, 8]])


def test_otb_nan_rows_mean_absent_and_init_box_skips_them(tmp_path):
    folder = make_otb(tmp_path, 5, "NaN,NaN,NaN,NaN\nnan nan nan nan\nNAN\tNaN\tnan\tNaN\n4,5,6,7\nNaN,NaN,NaN,NaN\n")
    seq = OTBSequence(folder)
    gt = seq.groundtruth
    assert np.isnan(gt[[0, 1, 2, 4]]).all()
    np.testing.assert_array_equal(gt[3], [4, 5, 6, 7])
    np.testing.assert_array_equal(seq.init_box, [4, 5, 6, 7])
    frames = _frames(seq)
    assert np.isnan(frames[0].gt).all() and frames[0].image is not None
    np.testing.assert_array_equal(frames[3].gt, [4, 5, 6, 7])


def test_init_box_skips_zero_size_rows(tmp_path):
    folder = make_otb(tmp_path, 3, "1,2,0,5\n1,2,3,0\n7,8,9,10\n")
    np.testing.assert_array_equal(OTBSequence(folder).init_box, [7, 8, 9, 10])


def test_init_box_none_when_no_usable_row(tmp_path):
    folder = make_otb(tmp_path, 2, "NaN,NaN,NaN,NaN\n0,0,0,0\n")
    assert OTBSequence(folder).init_box is None


def test_user_init_box_overrides_gt(tmp_path):
    folder = make_otb(tmp_path, 2)
    np.testing.assert_array_equal(OTBSequence(folder, init_box="5 6 7 8").init_box, [5, 6, 7, 8])
    np.testing.assert_array_equal(OTBSequence(folder, init_box=(1, 1, 2, 2)).init_box, [1, 1, 2, 2])
    with pytest.raises(TrackerInputError):
        OTBSequence(folder, init_box=(1, 1, 0, 2))
    np.testing.assert_array_equal(OTBSequence(folder, init_box=[[1, 1, 2, 2]]).init_box, [1, 1, 2, 2])
    # refused as runtime.tracker.start_box refuses them: corners are no x,y,w,h, booleans no numbers
    for box in ([[1, 1], [3, 3]], [True, True, True, True]):
        with pytest.raises(TrackerInputError, match="4 numbers x,y,w,h"):
            OTBSequence(folder, init_box=box)


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("1,2,3,4\n1,2,3\n1,2,3,4\n", 2, "got 3"),
        ("1,2,3,4\n1,2,3,4\n1,2,3,4,5\n", 3, "got 5"),
        ("1,2,3,4,5,6,7,8\n1,2,3,4\n1,2,3,4\n", 1, "got 8"),
        ("1,2,3,4\n1,2,abc,4\n1,2,3,4\n", 2, "non-numeric value 'abc'"),
        ("1,2,3,4\n1,,3,4\n1,2,3,4\n", 2, "non-numeric"),
        ("1,2,3,4\n\n1,2,3,4\n", 2, "blank line"),
        ("1,2,3,4\n1,2,inf,4\n1,2,3,4\n", 2, "infinite"),
    ],
    ids=["too-few", "too-many", "polygon-in-otb", "word", "empty-field", "blank-middle", "inf"],
)
def test_otb_malformed_rows_name_file_and_line(tmp_path, text, line, words):
    folder = make_otb(tmp_path, 3, text)
    with pytest.raises(SequenceError) as info:
        OTBSequence(folder)
    msg = str(info.value)
    assert f"groundtruth_rect.txt:{line}:" in msg
    assert "expected 4 values x,y,w,h" in msg
    assert words in msg


def test_otb_fewer_gt_rows_than_frames_pads_with_nan(tmp_path):
    folder = make_otb(tmp_path, 6, "1,2,3,4\n5,6,7,8\n9,10,11,12\n13,14,15,16\n")
    seq = OTBSequence(folder)
    assert len(seq) == 6
    gt = seq.groundtruth
    assert gt.shape == (6, 4)
    np.testing.assert_array_equal(gt[3], [13, 14, 15, 16])
    assert np.isnan(gt[4:]).all()
    frames = _frames(seq)
    assert len(frames) == 6 and np.isnan(frames[5].gt).all()
    assert seq.warnings == ["groundtruth_rect.txt has 4 rows for 6 frames; frames 4-5 have no ground truth"]


def test_otb_more_gt_rows_than_frames_drops_extras(tmp_path):
    text = "".join(f"{i},{i},5,5\n" for i in range(8))
    folder = make_otb(tmp_path, 5, text)
    seq = OTBSequence(folder)
    assert seq.groundtruth.shape == (5, 4)
    np.testing.assert_array_equal(seq.groundtruth[:, 0], np.arange(5))
    assert len(_frames(seq)) == 5
    assert len(seq.warnings) == 1
    assert "8 rows for 5 frames" in seq.warnings[0] and "last 3 rows are ignored" in seq.warnings[0]


def test_otb_falls_back_to_groundtruth_txt(tmp_path):
    folder = make_otb(tmp_path, 2, "1,2,3,4\n5,6,7,8\n", gt_name="groundtruth.txt")
    seq = OTBSequence(folder)
    np.testing.assert_array_equal(seq.groundtruth, [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_otb_without_gt_has_none(tmp_path):
    folder = make_otb(tmp_path, 2, False)
    seq = OTBSequence(folder)
    assert seq.groundtruth is None and seq.init_box is None
    assert all(f.gt is None for f in seq)
    assert "no groundtruth_rect.txt" in seq.warnings[0]


def _two_targets(tmp_path):
    """An OTB-100 folder like Jogging: one ground-truth file per target, no groundtruth_rect.txt."""
    folder = make_otb(tmp_path, 3, False)
    (folder / "groundtruth_rect.1.txt").write_text("1,2,10,8\n2,3,10,8\n3,4,10,8\n")
    (folder / "groundtruth_rect.2.txt").write_text("11,12,6,5\n12,13,6,5\n13,14,6,5\n")
    return folder


def test_otb_folder_with_two_targets_is_two_sequences(tmp_path):
    """OTB-100's Jogging and Skating2: ``Jogging.1`` and ``Jogging.2`` (the GOT-10k toolkit's
    names) open one target each; the folder itself says which to give instead of claiming
    there is no ground truth."""
    from runtime.sources import groundtruth_targets, target_sequences

    folder = _two_targets(tmp_path)
    assert list(groundtruth_targets(folder)) == ["1", "2"]
    assert target_sequences(folder) == [str(tmp_path / "seq.1"), str(tmp_path / "seq.2")]
    for k, first in (("1", [1, 2, 10, 8]), ("2", [11, 12, 6, 5])):
        seq = open_sequence_folder(tmp_path / f"seq.{k}")
        assert seq.name == f"seq.{k}" and seq.groundtruth_path == folder / f"groundtruth_rect.{k}.txt"
        assert seq.init_box.tolist() == first and len(seq) == 3 and not seq.warnings
    with pytest.raises(SequenceError) as e:
        open_sequence_folder(folder)
    assert "groundtruth_rect.1.txt, groundtruth_rect.2.txt" in str(e.value)
    assert f"{folder}.1 or {folder}.2" in str(e.value)
    # with a box of the user's, it tracks without ground truth and says why
    seq = open_sequence_folder(folder, init_box=[1, 2, 10, 8])
    assert seq.groundtruth is None and "2 targets" in seq.warnings[0]
    with pytest.raises(SequenceError, match="does not exist, and .*seq has no target 3") as e:
        open_sequence_folder(tmp_path / "seq.3")
    assert "its targets are seq.1, seq.2" in str(e.value)
    # an ordinary folder is itself; a lone groundtruth_rect.N.txt (Human4, beside an empty one) is its ground truth
    assert target_sequences(tmp_path / "nothing") == [tmp_path / "nothing"]
    (folder / "groundtruth_rect.1.txt").write_text("")
    assert target_sequences(folder) == [folder]
    assert open_sequence_folder(folder).init_box.tolist() == [11, 12, 6, 5]
    # ... and the GOT-10k toolkit's name for it (Human4.2) opens it too; the empty target does not
    seq = open_sequence_folder(tmp_path / "seq.2")
    assert seq.name == "seq.2" and seq.init_box.tolist() == [11, 12, 6, 5] and len(seq) == 3
    with pytest.raises(SequenceError, match="does not exist"):
        open_sequence_folder(tmp_path / "seq.1")


def test_otb_natural_sort_and_extensions(tmp_path):
    folder = tmp_path / "seq"
    (folder / "img").mkdir(parents=True)
    names = ["img10.jpg", "img9.PNG", "img1.bmp", "img2.jpeg", "notes.txt", "._img3.jpg"]
    for i, n in enumerate(names):
        p = folder / "img" / n
        if n.endswith(".txt") or n.startswith("."):
            p.write_text("x")
        else:
            _write(p, _image(i))
    (folder / "img" / "sub.jpg").mkdir()  # a folder named like an image is not a frame
    seq = OTBSequence(folder)
    assert [Path(p).name for p in seq.frame_paths] == ["img1.bmp", "img2.jpeg", "img9.PNG", "img10.jpg"]
    assert sorted(["a10", "a9", "a1b", "A2"], key=natural_key) == ["a1b", "A2", "a9", "a10"]


def test_otb_grey_rgba_and_16bit_png_frames(tmp_path):
    folder = tmp_path / "seq"
    (folder / "img").mkdir(parents=True)
    grey = np.tile(np.arange(W, dtype=np.uint8) * 8, (H, 1))
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[...] = (10, 20, 30, 128)
    deep = np.full((H, W, 3), 257 * 200, np.uint16)
    deep[..., 2] = 65535
    deep_grey = np.full((H, W), 257 * 7, np.uint16)
    for i, img in enumerate([grey, rgba, deep, deep_grey]):
        assert cv2.imwrite(str(folder / "img" / f"{i + 1:04d}.png"), img)
    (folder / "groundtruth_rect.txt").write_text("1,1,4,4\n" * 4)
    frames = _frames(OTBSequence(folder))
    for f in frames:
        assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 and f.image.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(frames[0].image[..., 1], grey)
    assert frames[1].image[0, 0].tolist() == [10, 20, 30]
    assert frames[2].image[0, 0].tolist() == [200, 200, 255]
    assert frames[3].image[0, 0].tolist() == [7, 7, 7]


def _corrupt_middle(tmp_path, how):
    folder = make_otb(tmp_path, 5, ext=".jpg")
    bad = folder / "img" / "0003.jpg"
    if how == "garbage":
        bad.write_bytes(b"this is not a jpeg at all" * 10)
    elif how == "truncated":
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) * 2 // 3])
    elif how == "empty":
        bad.write_bytes(b"")
    return folder, bad


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_corrupt_frame_raises_naming_the_file(tmp_path, how):
    folder, bad = _corrupt_middle(tmp_path, how)
    seq = OTBSequence(folder)
    it = iter(seq)
    assert next(it).index == 0 and next(it).index == 1
    with pytest.raises(SequenceError) as info:
        next(it)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_frame_skip_mode_keeps_indices_aligned(tmp_path, how):
    folder, bad = _corrupt_middle(tmp_path, how)
    seq = OTBSequence(folder, on_bad_frame="skip")
    frames = _frames(seq)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert frames[2].image is None
    assert frames[2].path == str(bad) and str(bad) in frames[2].error
    np.testing.assert_array_equal(frames[2].gt, [3, 4, 10, 8])
    for i in (0, 1, 3, 4):
        assert frames[i].image is not None and frames[i].error is None
        np.testing.assert_array_equal(frames[i].gt, [i + 1, i + 2, 10, 8])
    assert len(seq.warnings) == 1 and "skipped frame 2" in seq.warnings[0]


def test_bad_on_bad_frame_value(tmp_path):
    with pytest.raises(TrackerInputError, match="on_bad_frame"):
        OTBSequence(make_otb(tmp_path, 1), on_bad_frame="ignore")


def test_read_image_missing_file(tmp_path):
    with pytest.raises(SequenceError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def test_otb_missing_folder(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(SequenceError, match="does not exist") as info:
        OTBSequence(missing)
    assert str(missing) in str(info.value)


def test_otb_path_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(SequenceError, match="not a folder"):
        OTBSequence(f)


def test_otb_missing_img_folder(tmp_path):
    (tmp_path / "seq").mkdir()
    (tmp_path / "seq" / "groundtruth_rect.txt").write_text("1,2,3,4\n")
    with pytest.raises(SequenceError, match="no img/ folder"):
        OTBSequence(tmp_path / "seq")


def test_otb_folder_with_no_images(tmp_path):
    (tmp_path / "seq" / "img").mkdir(parents=True)
    (tmp_path / "seq" / "img" / "readme.txt").write_text("x")
    with pytest.raises(SequenceError, match="holds no images") as info:
        OTBSequence(tmp_path / "seq")
    assert str(tmp_path / "seq" / "img") in str(info.value)


def test_closed_source_refuses_iteration(tmp_path):
    seq = OTBSequence(make_otb(tmp_path, 2))
    seq.close()
    seq.close()
    with pytest.raises(SequenceError, match="closed"):
        iter(seq)


# --------------------------------------------------------------------------- VOT


def make_vot(root: Path, n: int, gt_text: str, in_color: bool = True) -> Path:
    folder = root / "vot"
    img = folder / "color" if in_color else folder
    img.mkdir(parents=True)
    for i in range(n):
        _write(img / f"{i + 1:08d}.jpg", _image(i))
    (folder / "groundtruth.txt").write_text(gt_text)
    return folder


def test_vot_four_value_rows(tmp_path):
    folder = make_vot(tmp_path, 3, "1,2,3,4\n5,6,7,8\n9,10,11,12\n")
    seq = VOTSequence(folder)
    assert len(seq) == 3
    np.testing.assert_array_equal(seq.groundtruth, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    frames = _frames(seq)
    assert frames[2].image.shape == (H, W, 3)


def test_vot_polygon_rows_become_min_max_boxes(tmp_path):
    text = (
        "10,20,50,20,50,60,10,60\n"                 # axis-aligned rectangle
        "30.5,10,60,40.25,30.5,70,1,40.25\n"        # rotated (diamond)
        "NaN,NaN,NaN,NaN,NaN,NaN,NaN,NaN\n"
        "0\n"                                        # VOT special code: no region
        "0,0,0,0\n"
        "1,2,3,4\n"                                  # 4-value rows may be mixed in
    )
    folder = make_vot(tmp_path, 6, text, in_color=False)
    seq = VOTSequence(folder)
    gt = seq.groundtruth
    np.testing.assert_allclose(gt[0], [10, 20, 40, 40])
    np.testing.assert_allclose(gt[1], [1, 10, 59, 60])
    assert np.isnan(gt[2:5]).all()
    np.testing.assert_array_equal(gt[5], [1, 2, 3, 4])
    np.testing.assert_allclose(seq.init_box, [10, 20, 40, 40])


def test_vot_bad_rows(tmp_path):
    folder = make_vot(tmp_path, 2, "1,2,3,4,5,6\n1,2,3,4\n")
    with pytest.raises(SequenceError, match=r"groundtruth.txt:1: expected 4 values x,y,w,h or 8 values.*got 6"):
        VOTSequence(folder)


def test_vot_mask_rows_are_rejected_clearly(tmp_path):
    folder = make_vot(tmp_path, 1, "m12,34,5,6,7\n")
    with pytest.raises(SequenceError, match="mask"):
        VOTSequence(folder)


def test_vot_no_images(tmp_path):
    (tmp_path / "vot" / "color").mkdir(parents=True)
    (tmp_path / "vot" / "groundtruth.txt").write_text("1,2,3,4\n")
    with pytest.raises(SequenceError, match="holds no images"):
        VOTSequence(tmp_path / "vot")


def test_vot_missing_folder(tmp_path):
    with pytest.raises(SequenceError, match="does not exist"):
        VOTSequence(tmp_path / "nope")


def test_load_groundtruth_empty_file(tmp_path):
    p = tmp_path / "gt.txt"
    p.write_text("\n\n")
    assert load_groundtruth(p).shape == (0, 4)


def test_open_sequence_folder_detects_format(tmp_path):
    otb = make_otb(tmp_path / "a", 2)
    vot = make_vot(tmp_path / "b", 2, "1,2,3,4\n5,6,7,8\n")
    assert type(open_sequence_folder(otb)) is OTBSequence
    assert type(open_sequence_folder(vot)) is VOTSequence
    neither = tmp_path / "c"
    neither.mkdir()
    _write(neither / "0001.jpg", _image(0))
    with pytest.raises(SequenceError, match="neither an OTB"):
        open_sequence_folder(neither)
    with pytest.raises(SequenceError, match="does not exist"):
        open_sequence_folder(tmp_path / "missing")
    skip = open_sequence_folder(otb, on_bad_frame="skip", init_box="1,1,2,2")
    assert skip.on_bad_frame == "skip"
    np.testing.assert_array_equal(skip.init_box, [1, 1, 2, 2])


# --------------------------------------------------------------------------- video


def make_video(path: Path, n: int = 6) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    assert writer.isOpened()
    for i in range(n):
        writer.write(_image(i))
    writer.release()
    return path


def test_video_source_reads_all_frames(tmp_path):
    path = make_video(tmp_path / "clip.avi", 6)
    with VideoSource(path, init_box="2,3,10,12") as src:
        assert src.name == "clip"
        assert len(src) == 6
        assert src.groundtruth is None
        np.testing.assert_array_equal(src.init_box, [2, 3, 10, 12])
        frames = _frames(src)
        assert [f.index for f in frames] == list(range(6))
        for i, f in enumerate(frames):
            assert f.image.shape == (H, W, 3) and f.image.dtype == np.uint8
            assert f.gt is None
            # MJPG is lossy: the index is still readable from the blue channel
            assert abs(float(f.image[..., 0].mean()) - 10 * i) < 6
        assert len(_frames(src)) == 6  # iterable again
        assert src.warnings == []


def test_video_source_ends_early_with_warning(tmp_path):
    path = make_video(tmp_path / "clip.avi", 4)
    src = VideoSource(path)
    src._count = 7  # the container claims more frames than the decoder delivers
    frames = _frames(src)
    assert len(frames) == 4
    assert len(src.warnings) == 1 and "could not decode frame 4 of 7" in src.warnings[0]


def test_video_missing_file(tmp_path):
    with pytest.raises(SequenceError, match="does not exist"):
        VideoSource(tmp_path / "missing.avi", init_box="1,1,2,2")


@pytest.mark.parametrize("content", [b"", b"definitely not a video" * 50])
def test_video_unopenable(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(SequenceError) as info:
        VideoSource(path, init_box="1,1,2,2")
    assert str(path) in str(info.value)


def test_video_with_zero_frames(tmp_path):
    path = make_video(tmp_path / "empty.avi", 0)
    assert path.exists()
    with pytest.raises(SequenceError, match="empty video") as info:
        VideoSource(path, init_box="1,1,2,2")
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- glob / camera / parse_box


def test_image_glob_matches_natural_sorted(tmp_path):
    for i in (10, 2, 1):
        _write(tmp_path / f"f{i}.png", _image(i))
    _write(tmp_path / "other.jpg", _image(0))
    src = ImageGlobSource(str(tmp_path / "f*.png"), init_box=[1, 2, 3, 4])
    assert [Path(p).name for p in src.frame_paths] == ["f1.png", "f2.png", "f10.png"]
    assert len(src) == 3 and src.groundtruth is None
    frames = _frames(src)
    np.testing.assert_array_equal(frames[2].image, _image(10))
    assert all(f.gt is None for f in frames)
    np.testing.assert_array_equal(src.init_box, [1, 2, 3, 4])


def test_image_glob_no_match(tmp_path):
    with pytest.raises(SequenceError, match="no files match"):
        ImageGlobSource(str(tmp_path / "*.jpg"), init_box="1,1,2,2")


def test_camera_that_does_not_exist_is_a_clear_error():
    with pytest.raises(SequenceError, match="cannot open camera index 99"):
        CameraSource(99, init_box="1,1,2,2")
    with pytest.raises(SequenceError, match="camera index 98"):
        CameraSource("98")


def test_camera_bad_argument():
    with pytest.raises(SequenceError):
        CameraSource(1.5)


@pytest.mark.parametrize(
    "text, box",
    [
        ("10,20,30,40", [10, 20, 30, 40]),
        ("10 20 30 40", [10, 20, 30, 40]),
        (" 10, 20, 30.5, 40 ", [10, 20, 30.5, 40]),
        ("-5\t0\t1e1\t2", [-5, 0, 10, 2]),
        ("10,20,30,40,", [10, 20, 30, 40]),  # a trailing comma is harmless
        (".5,+1.,2E0,3", [0.5, 1, 2, 3]),
    ],
)
def test_parse_box_good(text, box):
    out = parse_box(text)
    assert out.dtype == np.float64 and out.shape == (4,)
    np.testing.assert_array_equal(out, box)


@pytest.mark.parametrize(
    "text",
    ["", "10,20,30", "10,20,30,40,50", "a,b,c,d", "10,20,0,40", "10,20,30,-1", "nan,1,2,3",
     "10,20,inf,4", None, (1, 2, 3, 4),
     "40,,40,31,41",  # an empty field: not four numbers with one dropped
     ",10,20,30,40", "1_0,20,30,40", "\u0664\u0660,20,30,40", "0x10,20,30,40"],  # float() takes _ and other scripts' digits
)
def test_parse_box_bad(text):
    with pytest.raises(TrackerInputError):
        parse_box(text)


def test_len_unknown_raises_typeerror():
    class Stream(SequenceSource):
        def _frames(self):
            yield Frame(0, np.zeros((2, 2, 3), np.uint8))

    s = Stream("s")
    with pytest.raises(TypeError):
        len(s)
    assert [f.index for f in s] == [0]


# -- found in review: links, gaps, permissions, impossible boxes ---------------------------------

def test_image_glob_through_a_folder_link_loop(tmp_path):
    import cv2

    a = tmp_path / "a"
    a.mkdir()
    cv2.imwrite(str(a / "1.jpg"), np.zeros((8, 8, 3), np.uint8))
    (a / "notes.txt").write_text("not a frame")
    (a / "loop").symlink_to(".")  # once: the same frame 41 times; with two loops, no end
    (a / "loop2").symlink_to(".")
    src = ImageGlobSource(str(tmp_path / "**" / "*"), init_box="1,1,2,2")
    assert len(src) == 1 and any("not images" in w for w in src.warnings)
    with pytest.raises(SequenceError, match="only 1 folder"):
        ImageGlobSource(str(tmp_path / "a"), init_box="1,1,2,2")


def test_missing_numbered_frame_keeps_ground_truth_aligned(tmp_path):
    import cv2

    img = tmp_path / "seq" / "img"
    img.mkdir(parents=True)
    for i in (1, 2, 4, 5):  # 0003 lost
        cv2.imwrite(str(img / f"{i:04d}.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "seq" / "groundtruth_rect.txt").write_text("".join(f"{i},1,2,2\n" for i in range(1, 6)))
    seq = open_sequence_folder(tmp_path / "seq")
    assert seq.groundtruth[:, 0].tolist() == [1, 2, 4, 5]  # by position it was 1, 2, 3, 4
    assert any("3 are missing" in w for w in seq.warnings)


def test_thinned_clip_with_one_row_per_frame_is_read_in_order(tmp_path):
    """Every other frame kept under its own number, with one row per kept frame: row k is
    frame k (matched by number, frame 0003 took row 2 and half the frames went unscored)."""
    import cv2

    img = tmp_path / "seq" / "img"
    img.mkdir(parents=True)
    for i in (1, 3, 5, 7):
        cv2.imwrite(str(img / f"{i:04d}.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "seq" / "groundtruth_rect.txt").write_text("".join(f"{i},1,2,2\n" for i in (1, 3, 5, 7)))
    seq = open_sequence_folder(tmp_path / "seq")
    assert seq.groundtruth[:, 0].tolist() == [1, 3, 5, 7]
    assert not seq.warnings


@pytest.mark.parametrize("name, n, first, last", [("David", 12, 5, 12), ("Diving", 9, 1, 6)])
def test_otb_partly_annotated_folders_are_cut_to_their_rows(tmp_path, monkeypatch, name, n, first, last):
    """OTB-100's David annotates frames 300-770 of 770 (Diving 1-215 of 231, ...): the sequence
    is those frames, as the OTB benchmark and the GOT-10k toolkit take it. Padding the rows at
    the end started David from frame 300's box on frame 1."""
    import cv2

    from runtime import sources

    monkeypatch.setitem(sources.OTB_ANNOTATED_FRAMES, name.lower(), (first, last))
    img = tmp_path / name / "img"
    img.mkdir(parents=True)
    for i in range(1, n + 1):
        cv2.imwrite(str(img / f"{i:04d}.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / name / "groundtruth_rect.txt").write_text("".join(f"{i},1,2,2\n" for i in range(first, last + 1)))
    seq = open_sequence_folder(tmp_path / name)
    assert [Path(p).stem for p in seq.frame_paths] == [f"{i:04d}" for i in range(first, last + 1)]
    assert seq.groundtruth[:, 0].tolist() == list(range(first, last + 1))
    assert seq.init_box[0] == first
    assert [w for w in seq.warnings if f"annotates frames {first}-{last} of {n}" in w]
    # a folder of that name whose rows do not fit the span is read as any other
    (tmp_path / name / "groundtruth_rect.txt").write_text("".join(f"{i},1,2,2\n" for i in range(1, n + 1)))
    assert len(open_sequence_folder(tmp_path / name)) == n


def test_negative_groundtruth_size_is_named(tmp_path):
    import cv2

    img = tmp_path / "seq" / "img"
    img.mkdir(parents=True)
    cv2.imwrite(str(img / "0001.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "seq" / "groundtruth_rect.txt").write_text("1,1,-3,2\n")
    with pytest.raises(SequenceError, match=r"groundtruth_rect.txt:1: negative width"):
        open_sequence_folder(tmp_path / "seq")


def test_groundtruth_that_is_a_folder_is_an_error_not_missing(tmp_path):
    import cv2

    img = tmp_path / "seq" / "img"
    img.mkdir(parents=True)
    cv2.imwrite(str(img / "0001.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "seq" / "groundtruth_rect.txt").mkdir()
    with pytest.raises(SequenceError, match="groundtruth_rect.txt"):
        open_sequence_folder(tmp_path / "seq")


def test_two_target_names_never_stand_for_another_folder(tmp_path, monkeypatch):
    """A real folder ``seq.1`` beside two-target ``seq`` would be scored as target 1 of seq
    (silently, against its own ground truth): refused. ``.`` is named by the folder itself."""
    import shutil

    from runtime.sources import target_sequences

    folder = _two_targets(tmp_path)
    monkeypatch.chdir(folder)
    assert target_sequences(".") == [str(tmp_path / "seq.1"), str(tmp_path / "seq.2")]
    shutil.copytree(folder, tmp_path / "seq.1")
    with pytest.raises(SequenceError, match=r"seq\.1 already exists beside it.*rename"):
        target_sequences(folder)


def test_an_output_may_not_overwrite_another_targets_ground_truth(tmp_path, capsys):
    from runtime import track

    folder = _two_targets(tmp_path)
    code = track.main(["--sequence", str(tmp_path / "seq.1"), "--out", str(folder / "groundtruth_rect.2.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "one of the input files" in err, err
    assert (folder / "groundtruth_rect.2.txt").read_text().startswith("11")


def test_glob_in_a_folder_whose_name_holds_glob_characters_says_how_to_escape(tmp_path):
    import cv2

    folder = tmp_path / "take[1]"
    folder.mkdir()
    cv2.imwrite(str(folder / "0001.png"), np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(SequenceError, match=r"glob characters .*take\[\[\]1\]"):
        ImageGlobSource(str(folder / "*.png"), init_box="1,1,5,5")
    assert len(ImageGlobSource(str(tmp_path / "take[[]1]" / "*.png"), init_box="1,1,5,5")) == 1


def test_one_frame_without_ground_truth_is_said_in_the_singular(tmp_path):
    from runtime.synthetic import make_sequence, write_otb

    seq = write_otb(make_sequence(n_frames=3, size=(64, 48), seed=0), tmp_path / "s")
    gt = seq / "groundtruth_rect.txt"
    gt.write_text("".join(gt.read_text().splitlines(True)[:2]))
    assert open_sequence_folder(seq).warnings == ["groundtruth_rect.txt has 2 rows for 3 frames; frame 2 has no "
                                                  "ground truth"]
