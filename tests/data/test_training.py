"""Training splits: Karpathy and BLIP caption files, and the missing images they name."""

import json

import pytest

from ecoflap_exp.data.training import ImageCaptionSplit
from ecoflap_exp.errors import UserError


def test_training_splits_read_karpathy_and_blip_files_and_name_missing_images(tmp_path):
    from tests.fixtures_captioning import COCO, write_coco_karpathy

    files = write_coco_karpathy(tmp_path)
    split = ImageCaptionSplit(str(files["karpathy"]), str(files["image_root"]), splits=["train", "val"])
    samples = split.samples()
    expected = [ref for _, s, refs in COCO if s in ("train", "val") for ref in refs]
    assert [samples[i][1] for i in range(len(samples))] == expected
    assert samples[0][0].size == (22, 24) and split.pairs()[0][0].parent.name == "train2014"
    blip = tmp_path / "coco_karpathy_train.json"  # BLIP's list: one caption per entry
    blip.write_text(json.dumps([{"image": "train2014/COCO_train2014_000000184613.jpg", "caption": c,
                                 "image_id": "coco_184613"} for c in COCO[2][2]]))
    assert [c for _, c in ImageCaptionSplit(str(blip), str(files["image_root"])).pairs()] == COCO[2][2]
    (files["image_root"] / "val2014" / "COCO_val2014_000000554625.jpg").unlink()
    with pytest.raises(UserError, match="1 training image.*missing, first .*554625"):
        split.samples()
    with pytest.raises(UserError, match=r"finetune.train.splits=\[trian\] is not valid \(item 0\): input should be "
                                        r"'train', 'restval', 'val' or 'test'"):
        ImageCaptionSplit(str(blip), splits=["trian"])
