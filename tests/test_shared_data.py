"""The OTB reader on the 23 real sequences in ../shared (skipped when the folder is absent).

Only the first and last frame of each sequence are decoded, to keep the check fast; the
frame count comes from ``len()`` / ``frame_paths``, which decode nothing.
"""
from pathlib import Path

import numpy as np
import pytest

from runtime.model import SHARED_SEQUENCES as SEQUENCES
from runtime.sources import OTBSequence, open_sequence_folder

FRAME_COUNTS = {
    "dtb_MountainBike6": 81, "dtb_Surfing06": 106, "uav_boat1": 301, "uav_building4": 263,
    "uav_building5": 161, "uav_car16_1": 139, "uav_car16_2": 527, "uav_group1_1": 445,
    "uav_group3_2": 421, "uav_person12_1": 201, "uav_truck2": 129, "uav_truck4_1": 193,
    "uav_truck4_2": 229, "uav_wakeboard10": 157, "uav_wakeboard5": 559, "uav_wakeboard7": 67,
    "uavdt_S0310": 118, "vot_basketball": 725, "vot_bolt1": 350, "vot_car1": 742,
    "vot_traffic": 191, "vot_zebrafish1": 400, "vottir_birds": 270,
}

pytestmark = [
    pytest.mark.shared,
    pytest.mark.skipif(not SEQUENCES.is_dir(), reason=f"shared sequences not found at {SEQUENCES}"),
]


def test_all_expected_sequences_present():
    present = {p.name for p in SEQUENCES.iterdir() if p.is_dir()}
    assert set(FRAME_COUNTS) <= present


@pytest.mark.parametrize("name", sorted(FRAME_COUNTS))
def test_sequence_reads_like_its_files(name):
    folder = SEQUENCES / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    seq = open_sequence_folder(folder)
    assert isinstance(seq, OTBSequence)
    images = sorted(p.name for p in (folder / "img").iterdir() if p.suffix.lower() == ".jpg")
    assert len(seq) == len(images) == FRAME_COUNTS[name]
    assert [Path(p).name for p in seq.frame_paths] == images
    assert seq.warnings == []

    expected = np.genfromtxt(folder / "groundtruth_rect.txt", delimiter=",", dtype=np.float64)
    expected = expected.reshape(-1, 4)
    assert expected.shape == (FRAME_COUNTS[name], 4)
    gt = seq.groundtruth
    np.testing.assert_array_equal(gt, expected)  # equal_nan: absent rows stay NaN
    np.testing.assert_array_equal(np.isnan(gt).any(axis=1), np.isnan(expected).any(axis=1))
    valid = np.isfinite(expected).all(axis=1) & (expected[:, 2] > 0) & (expected[:, 3] > 0)
    np.testing.assert_array_equal(seq.init_box, expected[np.argmax(valid)])

    first, last = seq.read_frame(0), seq.read_frame(-1)
    assert first.index == 0 and last.index == len(seq) - 1
    for frame in (first, last):
        assert frame.image.ndim == 3 and frame.image.shape[2] == 3 and frame.image.dtype == np.uint8
        assert 32 <= frame.image.shape[1] <= 640 and frame.image.shape[0] >= 32
    assert first.image.shape == last.image.shape
    np.testing.assert_array_equal(last.gt, expected[-1])


def test_absent_rows_survive_in_group3_2():
    folder = SEQUENCES / "uav_group3_2"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    gt = OTBSequence(folder).groundtruth
    assert np.isnan(gt).all(axis=1).sum() == 47
