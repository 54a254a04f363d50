"""Image-caption calibration sources: img2dataset webdataset shards, COCO captions, LAVIS JSON, and
scripts/prepare_cc3m.py on img2dataset's output layouts."""

import importlib.util
import io
import json
import logging
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from ecoflap_exp.data.caption_pairs import ImageCaptionCalibration, read_pairs
from ecoflap_exp.errors import UserError
from ecoflap_exp.runner import run
from tests.fixtures_text import add_member, jpeg_bytes, write_img2dataset_files, write_webdataset

ROOT = Path(__file__).resolve().parents[2]
SHARDS = [["a dog on a beach", "a red bus", "two cups of tea"], ["a snowy hill", "a bowl of rice"]]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def calib(source, n, **kwargs) -> ImageCaptionCalibration:
    return ImageCaptionCalibration(str(source), num_samples=n, batch_size=1, **kwargs)


def test_shards_give_the_pairs_in_shard_then_member_order(tmp_path):
    shards = write_webdataset(tmp_path / "cc3m", SHARDS)
    samples = calib(tmp_path / "cc3m", 4).samples(None)
    assert [c for _, c in samples] == ["a dog on a beach", "a red bus", "two cups of tea", "a snowy hill"]
    # the 4th sample is shard 1's first image (seed 100 in the fixture), decoded unchanged
    assert np.array_equal(np.asarray(samples[3][0]), pixels(jpeg_bytes(seed=100)))
    by_glob = calib(tmp_path / "cc3m" / "*.tar", 5).samples(None)
    one_shard = calib(shards[1], 2).samples(None)
    assert [c for _, c in by_glob][3:] == [c for _, c in one_shard] == SHARDS[1]


def test_caption_from_the_json_member_when_there_is_no_txt(tmp_path):
    write_webdataset(tmp_path, [["a cat", "a kite"]], json_only=frozenset({"000000001"}))
    assert [c for _, c in calib(tmp_path, 2).samples(None)] == ["a cat", "a kite"]


def test_undecodable_image_is_skipped_and_counted(tmp_path, caplog):
    write_webdataset(tmp_path, SHARDS, broken=frozenset({"000000001"}))
    with caplog.at_level(logging.WARNING):
        samples = calib(tmp_path, 4, max_bad_fraction=0.2).samples(None)
    # the broken 2nd sample is skipped and the 5th taken instead
    assert [c for _, c in samples] == ["a dog on a beach", "two cups of tea", "a snowy hill", "a bowl of rice"]
    assert "00000.tar:000000001.jpg" in caplog.text and "skipped 1 of 5 images" in caplog.text
    # 1 bad of 4 + 1 tried: more than 0.1 * 5
    with pytest.raises(UserError, match=r"1 of 2 images tried fail to decode \(first: .*00000.tar:000000001.jpg"):
        calib(tmp_path, 4, max_bad_fraction=0.1).samples(None)


def test_bad_members_are_named(tmp_path):
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        add_member(tar, "000000000.jpg", jpeg_bytes(0))
        add_member(tar, "000000000.txt", b"fine")
        add_member(tar, "000000001.jpg", jpeg_bytes(1))
        add_member(tar, "000000001.json", json.dumps({"url": "u", "status": "success"}).encode())
    with pytest.raises(UserError, match=r"00000.tar:000000001.json: no 'caption' string"):
        calib(shard, 2).samples(None)
    assert [c for _, c in calib(shard, 1).samples(None)] == ["fine"]  # reading stops before the bad sample
    with tarfile.open(shard, "w") as tar:
        add_member(tar, "000000000.txt", b"an orphan caption")
    with pytest.raises(UserError, match="sample '000000000' has no image member"):
        calib(shard, 1).samples(None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no webdataset .tar shards"):
        calib(tmp_path / "empty", 1).samples(None)
    with pytest.raises(UserError, match="shuffle=true needs an annotation file"):
        calib(shard, 1, shuffle=True).samples(None)


def write_coco(root: Path) -> Path:
    """COCO 2017 layout: annotations/captions_train2017.json and train2017/<12-digit id>.jpg."""
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = [{"license": 3, "file_name": f"{i:012d}.jpg", "coco_url": "", "height": 24, "width": 24,
               "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": i} for i in (9, 25, 30)]
    for i, image in enumerate(images):
        (root / "train2017" / image["file_name"]).write_bytes(jpeg_bytes(seed=i))
    annotations = [{"image_id": 25, "id": 48, "caption": "A giraffe eating food from a tree."},
                   {"image_id": 9, "id": 67, "caption": "A plate of food with broccoli."},
                   {"image_id": 25, "id": 126, "caption": "A giraffe near a tall tree."},
                   {"image_id": 30, "id": 140, "caption": "A vase of white flowers."}]
    path = root / "annotations" / "captions_train2017.json"
    path.write_text(json.dumps({"info": {"year": 2017}, "licenses": [], "images": images, "annotations": annotations}))
    return path


def test_coco_captions_config_reads_annotation_order(tmp_path):
    write_coco(tmp_path / "data" / "coco")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", [f"paths.data_root={tmp_path / 'data'}", "calib=coco_captions",
                                 "calib.num_samples=3", "calib.batch_size=1"])
    samples = instantiate(cfg.calib).samples(None)
    assert [c for _, c in samples] == ["A giraffe eating food from a tree.", "A plate of food with broccoli.",
                                       "A giraffe near a tall tree."]
    # image 25 is the 2nd file written (seed 1)
    assert np.array_equal(np.asarray(samples[0][0]), pixels(jpeg_bytes(seed=1)))


def test_json_entries_with_missing_fields_are_named(tmp_path):
    path = write_coco(tmp_path)
    data = json.loads(path.read_text())
    del data["annotations"][1]["caption"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"annotations\[1\] needs 'image_id' and a 'caption'"):
        read_pairs(str(path))
    data["annotations"][1] = {"image_id": 7, "id": 1, "caption": "x"}
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"annotations\[1\] has image_id 7"):
        read_pairs(str(path))
    lavis = tmp_path / "cc3m.json"
    lavis.write_text(json.dumps([{"image": "a.jpg", "caption": "one"}, {"image": "b.jpg", "caption": ["two", "3"]}]))
    assert read_pairs(str(lavis)) == [(tmp_path / "a.jpg", "one"), (tmp_path / "b.jpg", "two"),
                                      (tmp_path / "b.jpg", "3")]
    lavis.write_text(json.dumps([{"image": "a.jpg", "caption": "one"}, {"caption": "no image"}]))
    with pytest.raises(UserError, match=r"entry \[1\] needs 'image' and 'caption'"):
        read_pairs(str(lavis))


def load_script():
    spec = importlib.util.spec_from_file_location("prepare_cc3m", ROOT / "scripts" / "prepare_cc3m.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(capsys, monkeypatch, *args) -> tuple[int, str, str]:
    """Run the script's command line in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["prepare_cc3m.py", *map(str, args)])
    try:
        load_script().main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_prepare_cc3m_from_img2dataset_files(tmp_path, capsys, monkeypatch):
    source = write_img2dataset_files(tmp_path / "dl", ["a dog", None, "a cat"], failed=2)
    (source / "00000" / "000000002.txt").unlink()  # the caption is still in the .json
    code, out, err = prepare(capsys, monkeypatch, source, "--out", tmp_path / "cc3m")
    assert code == 0, err
    assert "3 image-caption pairs" in out and "2 rows of the metadata parquet failed" in out
    pairs = read_pairs(str(tmp_path / "cc3m" / "cc3m.tsv"))
    assert [c for _, c in pairs] == ["a dog", "parquet caption 1", "a cat"]
    assert [p.resolve() for p, _ in pairs] == [(source / "00000" / f"00000000{i}.jpg").resolve() for i in range(3)]
    (source / "00000" / "000000001.jpg").unlink()
    code, out, _ = prepare(capsys, monkeypatch, source, "--out", tmp_path / "cc3m")
    assert code == 0 and "1 downloads marked successful have no image file: 000000001" in out


def test_prepare_cc3m_from_shards_matches_reading_the_shards(tmp_path, capsys, monkeypatch):
    write_webdataset(tmp_path / "dl", SHARDS)
    code, _, err = prepare(capsys, monkeypatch, tmp_path / "dl", "--out", tmp_path / "cc3m", "--limit", 4)
    assert code == 0, err
    from_tsv = calib(tmp_path / "cc3m" / "cc3m.tsv", 4).samples(None)
    from_shards = calib(tmp_path / "dl", 4).samples(None)
    assert [c for _, c in from_tsv] == [c for _, c in from_shards]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(from_tsv, from_shards,
                                                                                         strict=True))
    code, _, err = prepare(capsys, monkeypatch, tmp_path / "nothing")
    assert code == 2 and "is not a folder" in err


@pytest.mark.slow
def test_blip2_run_calibrates_on_webdataset_shards(tmp_path):
    write_webdataset(tmp_path / "data" / "cc3m", [[f"caption {i}" for i in range(5)], ["more", "and more", "end"]])
    overrides = [f"paths.root={tmp_path}", f"paths.data_root={tmp_path / 'data'}", "device=cpu",
                 "model=blip2_t5_tiny", "calib=cc3m", f"calib.annotations={tmp_path / 'data' / 'cc3m'}",
                 "calib.num_samples=8", "calib.batch_size=4", "suite=none", "sparsity=0.5"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        record = run(compose("config", overrides))
    assert record.achieved.overall == pytest.approx(0.5, abs=1e-3)


def test_one_image_decoder_one_policy(tmp_path):
    """Order kept across the decoding threads; `count` stops at the first N good images; bad files
    are skipped and counted up to max_bad_fraction, and an eval (fraction 0) stops at the first."""
    from PIL import Image

    from ecoflap_exp.data.images import decode_images

    paths = []
    for i in range(20):
        path = tmp_path / f"{i:02d}.png"
        if i in (3, 11):
            path.write_bytes(b"not an image")
        else:
            Image.new("RGB", (4, 4), (i, 0, 0)).save(path)
        paths.append(path)
    items = [(p, i) for i, p in enumerate(paths)]
    got = decode_images(items, max_bad_fraction=0.2)
    assert [label for _, label in got] == [i for i in range(20) if i not in (3, 11)]
    assert [image.getpixel((0, 0))[0] for image, _ in got] == [label for _, label in got]
    assert [label for _, label in decode_images(items, 0.5, count=5)] == [0, 1, 2, 4, 5]
    with pytest.raises(UserError, match=r"1 of 4 images tried fail to decode \(first: .*03.png"):
        decode_images(items, 0.0)
    with pytest.raises(UserError, match="2 of 20 images tried fail to decode"):
        decode_images(items, 0.05)
