"""NoCaps and COCO Karpathy readers on both released formats, and the problems they name."""

import json

import pytest

from ecoflap_exp.data.captioning import read_coco_karpathy, read_nocaps
from ecoflap_exp.errors import UserError
from tests.fixtures_captioning import (
    COCO,
    NOCAPS,
    write_coco_karpathy,
    write_nocaps,
)


def test_readers_on_both_nocaps_formats(tmp_path):
    files = write_nocaps(tmp_path)
    official = read_nocaps(str(files["official"]), str(files["image_root"]))
    assert [(i.image_id, i.path.name, i.domain, i.references) for i in official] == \
        [(k, f"{oid}.jpg", domain, refs) for k, (oid, domain, refs) in enumerate(NOCAPS)]
    assert all(i.path.is_file() for i in official)

    lavis = json.loads(files["lavis"].read_text())
    files["lavis"].write_text(json.dumps([lavis[3], lavis[0], lavis[3]]))  # a subset, one image twice
    listed = read_nocaps(str(files["official"]), str(files["lavis_image_root"]), str(files["lavis"]))
    assert [(i.image_id, i.domain, i.references) for i in listed] == \
        [(3, "near-domain", NOCAPS[3][2]), (0, "in-domain", NOCAPS[0][2])]
    assert listed[0].path == files["lavis_image_root"] / "val" / f"{NOCAPS[3][0]}.jpg"
    assert listed[0].path.is_file()

    with pytest.raises(UserError, match="LAVIS's nocaps_val.json.*no reference captions and no domains.*"
                                        "nocaps_val_4500_captions.json.*image_list"):
        read_nocaps(str(files["lavis"]), str(files["image_root"]))
    files["lavis"].write_text(json.dumps([{"image": "val/other.jpg", "img_id": 2}]))
    with pytest.raises(UserError, match="img_id 2 is 'val/other.jpg' but '0041a6c2a2f4e0c5.jpg'"):
        read_nocaps(str(files["official"]), str(files["lavis_image_root"]), str(files["lavis"]))


def test_readers_on_both_karpathy_formats(tmp_path):
    files = write_coco_karpathy(tmp_path)
    karpathy = read_coco_karpathy(str(files["karpathy"]), str(files["image_root"]))
    lavis = read_coco_karpathy(str(files["lavis"]), str(files["image_root"]))
    expected = [(cocoid, refs) for cocoid, split, refs in COCO if split == "test"]
    assert [(i.image_id, i.references) for i in karpathy] == expected
    assert [(i.image_id, i.path, i.references, i.domain) for i in lavis] == \
        [(i.image_id, i.path, i.references, None) for i in karpathy]
    assert karpathy[0].path == files["image_root"] / "val2014" / "COCO_val2014_000000391895.jpg"
    assert karpathy[0].path.is_file()
    assert [i.image_id for i in read_coco_karpathy(str(files["karpathy"]), str(files["image_root"]), "val")] == \
        [554625]


def write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("reader", "data", "message"),
    [
        ("nocaps", None, r"NoCaps val annotation file '.*missing.json' does not exist; download "
                         r"nocaps_val_4500_captions.json from https://nocaps.org/download"),
        ("coco", None, r"COCO Karpathy annotation file '.*missing.json' does not exist; use dataset_coco.json .*"
                       r"caption_datasets.zip"),
        ("nocaps", "{not json", r"is not valid JSON"),
        ("nocaps", {"images": [{"id": 0, "file_name": "a.jpg", "domain": "in-domain"}],
                    "annotations": [{"image_id": 0, "caption": "a cat"}, {"image_id": 0}]},
         r"annotations\[1\] needs a string 'caption'"),
        ("nocaps", {"images": [{"id": 0, "file_name": "a.jpg", "domain": "in-domain"}],
                    "annotations": [{"image_id": 7, "caption": "a cat"}]}, r"annotations\[0\] refers to image_id 7"),
        ("nocaps", {"images": [{"id": 0, "file_name": "a.jpg"}], "annotations": [{"image_id": 0, "caption": "a"}]},
         r"images\[0\] \(id 0\) has domain None, not one of in-domain, near-domain, out-domain"),
        ("nocaps", {"images": [{"id": 0, "file_name": "a.jpg", "domain": "in-domain"},
                               {"file_name": "b.jpg"}], "annotations": []},
         r"images\[1\] needs an integer 'id' and a string 'file_name'"),
        ("nocaps", {"images": [{"id": 0, "file_name": "a.jpg", "domain": "in-domain"}], "annotations": []},
         r"1 NoCaps val image\(s\) have no reference caption \(first id 0\)"),
        ("coco", [{"image": "val2014/COCO_val2014_000000000001.jpg", "caption": ["a"]}, {"image": "x.png"}],
         r"entry \[1\] needs 'image'"),
        ("coco", {"images": [{"split": "test", "filepath": "val2014", "filename": "a.jpg", "cocoid": 1,
                              "sentences": [{"tokens": ["a"]}]}]}, r"images\[0\] needs 'filename'.*'raw'"),
        ("coco", {"images": [{"split": "train", "filepath": "val2014", "filename": "a.jpg", "cocoid": 1,
                              "sentences": [{"raw": "a"}]}]}, r"no images with split == 'test'"),
        ("coco", {"annotations": []}, r"neither Karpathy's dataset_coco.json"),
    ],
)
def test_missing_and_malformed_files_name_the_problem(tmp_path, reader, data, message):
    path = str(tmp_path / "missing.json") if data is None else write(tmp_path / "file.json", data)
    read = read_nocaps if reader == "nocaps" else read_coco_karpathy
    with pytest.raises(UserError, match=message):
        read(path, str(tmp_path))
