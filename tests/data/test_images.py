"""Image calibration sources: an ImageFolder (missing folder, corrupt images) and seeded synthetic images."""

import pytest
import torch

from ecoflap_exp.data.images import ImageFolderCalibration, SyntheticImageCalibration
from ecoflap_exp.errors import UserError
from tests.models.test_vit import hf_vit


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(UserError, match="no/such/imagenet"):
        ImageFolderCalibration(str(tmp_path / "no/such/imagenet"), num_samples=4, batch_size=4).batches(hf_vit())


def test_corrupt_images_are_skipped_and_counted(images, caplog):
    (images / "n00000000" / "broken.png").write_bytes(b"not a png at all")
    adapter = hf_vit()
    source = ImageFolderCalibration(str(images), num_samples=13, batch_size=1, shuffle=False, max_bad_fraction=0.1)
    with pytest.raises(UserError, match="gave 12 samples"):  # 13 files, one undecodable
        source.batches(adapter)
    assert "broken.png" in caplog.text
    # the broken file (first in class 0) is skipped and the next image taken in its place
    batches = ImageFolderCalibration(str(images), num_samples=12, batch_size=12, shuffle=False,
                                     max_bad_fraction=0.1).batches(adapter)
    assert batches[0]["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    strict = ImageFolderCalibration(str(images), num_samples=12, batch_size=4, shuffle=False, max_bad_fraction=0)
    with pytest.raises(UserError, match="fail to decode"):
        strict.batches(adapter)


def test_synthetic_images_are_seeded():
    adapter = hf_vit()
    a = SyntheticImageCalibration(32, 3, num_samples=4, batch_size=2, seed=1).batches(adapter)
    b = SyntheticImageCalibration(32, 3, num_samples=4, batch_size=2, seed=1).batches(adapter)
    assert torch.equal(a[1]["pixel_values"], b[1]["pixel_values"])
