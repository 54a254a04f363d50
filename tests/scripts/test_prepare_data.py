"""scripts/prepare_data.py on raw dirs holding the released files (tests/fixtures_*.py, packed into the
official archives where a release is one): the files land where the eval/calib configs read them, the
configured evals read them (check_data), missing files are named with their source and exit 1, and a
rerun places nothing and overwrites nothing."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ecoflap_exp.data.conversations import read_conversations
from ecoflap_exp.data.coop import read_coop_split
from ecoflap_exp.data.flickr import read_retrieval_set
from ecoflap_exp.data.text import read_documents
from tests.fixtures import LLAVA_ENTRIES, write_llava_conversations
from tests.fixtures_captioning import NOCAPS, write_nocaps
from tests.fixtures_coop import CLASSES, write_coop, write_imagenet_flat_val
from tests.fixtures_flickr import write_flickr30k
from tests.fixtures_text import WIKI_ROWS, write_wikitext
from tests.fixtures_vqa import GQA_TESTDEV, TEXTVQA_VAL, VQAV2_VAL, write_gqa, write_textvqa, write_vqa

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("prepare_data", ROOT / "scripts" / "prepare_data.py")
prepare_data = importlib.util.module_from_spec(SPEC)
sys.modules["prepare_data"] = prepare_data  # its dataclasses look their module up
SPEC.loader.exec_module(prepare_data)


def prepare(capsys, *args) -> tuple[int, str]:
    code = prepare_data.main([str(a) for a in args])
    return code, capsys.readouterr().out


def statuses(out: str, status: str) -> list[str]:
    """The paths of the report lines with this status."""
    return [line.split()[1] for line in out.splitlines() if line.split()[:1] == [status]]


def composed(data_root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", [f"paths.data_root={data_root}", "model=llama_tiny", "suite=none", *overrides])


def configured_eval(data_root: Path, name: str, *overrides: str):
    """The eval config `name` under data_root, instantiated, its data checked as a run checks it."""
    cfg = composed(data_root, f"+eval@evals.x={name}", *(f"evals.x.{o}" for o in overrides))
    evaluation = instantiate(cfg.evals.x)
    evaluation.check_data()
    return evaluation


def pack_zip(archive: Path, folder: Path, prefix: str) -> None:
    """Zip every file under folder as prefix/<path relative to folder>, then remove the folder."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
    shutil.rmtree(folder)


def pack_tar(archive: Path, folder: Path, prefix: str) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=prefix)
    shutil.rmtree(folder)


def test_table_paths_are_the_configured_paths(tmp_path):
    """Every path the table takes from a config key is exactly that config's value under the data root."""
    data_root = tmp_path / "data"
    keyed = [(item.at, item.rel) for dataset in prepare_data.DATASETS.values()
             for item in (*dataset.files, dataset.images) if item is not None and ":" in item.at]
    evals = sorted({config.split(":")[0].removeprefix("eval/") for config, _ in keyed if config.startswith("eval/")})
    evals_cfg = composed(data_root, *(f"+eval@evals.{name}={name}" for name in evals)).evals
    for config, rel in keyed:
        group_name, key = config.split(":")
        group, name = group_name.split("/")
        node = evals_cfg[name] if group == "eval" else composed(data_root, f"calib={name}").calib
        assert Path(node[key]) == data_root / rel, config
    assert len(keyed) >= 20  # every dataset but CoOp's (read from the data root itself) names its config keys


def test_vqav2_from_the_official_zips_is_read_by_the_eval(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    files = write_vqa(raw, "vqav2")
    with zipfile.ZipFile(raw / "v2_Questions_Val_mscoco.zip", "w") as zf:
        zf.write(files["questions"], files["questions"].name)
    files["questions"].unlink()
    pack_zip(raw / "val2014.zip", raw / "coco" / "images" / "val2014", "val2014")

    code, out = prepare(capsys, "vqav2", raw, data)
    assert code == 0, out
    assert statuses(out, "placed") == [str(data / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json"),
                                       str(data / "vqav2" / "v2_mscoco_val2014_annotations.json")]
    assert "v2_Questions_Val_mscoco.zip:v2_OpenEnded_mscoco_val2014_questions.json" in out
    assert "2 needed, 0 found, 2 placed" in out  # VQAV2_VAL: 4 questions on 2 images, both in val2014.zip
    evaluation = configured_eval(data, "vqav2")
    assert [s.question_id for s in evaluation.evaluated] == [row[0] for row in VQAV2_VAL]
    assert all(s.image.is_file() and not s.image.is_symlink() for s in evaluation.evaluated)
    assert prepare(capsys, "--check", "vqav2", data)[0] == 0


def test_gqa_extracts_only_the_question_file_and_images_the_split_uses(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    files = write_gqa(raw)
    with zipfile.ZipFile(raw / "questions1.2.zip", "w") as zf:
        zf.write(files["official"], "testdev_balanced_questions.json")
        zf.writestr("val_balanced_questions.json", "{}")
    files["official"].unlink()
    shutil.rmtree(raw / "gqa" / "lavis")
    shutil.copy(files["images"] / "n161313.jpg", files["images"] / "n999999.jpg")  # an image test-dev does not use
    pack_zip(raw / "images.zip", files["images"], "images")

    code, out = prepare(capsys, "gqa", raw, data)
    assert code == 0, out
    assert sorted(p.name for p in (data / "gqa").iterdir()) == ["images", "testdev_balanced_questions.json"]
    assert sorted(p.name for p in (data / "gqa" / "images").iterdir()) == ["n161313.jpg", "n235859.jpg"]
    evaluation = configured_eval(data, "gqa")
    assert [s.question_id for s in evaluation.evaluated] == list(GQA_TESTDEV)


def test_textvqa_from_its_image_zip_and_the_llava_mixture_with_its_image_folders(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    files = write_textvqa(raw)
    pack_zip(raw / "train_val_images.zip", files["images"], "train_images")
    write_llava_conversations(raw / "downloads")
    code, out = prepare(capsys, "textvqa", raw, data)
    assert code == 0, out
    assert [s.question_id for s in configured_eval(data, "textvqa").evaluated] == [q for q, *_ in TEXTVQA_VAL]
    code, out = prepare(capsys, "llava_instruct", raw, data)
    assert code == 0, out
    cfg = composed(data, "model=llava_tiny", "calib=llava_instruct")
    assert [image for image, _ in read_conversations(cfg.calib.annotations, cfg.calib.image_root)] == [
        data / "llava" / image for image, _ in LLAVA_ENTRIES if image is not None]


def test_nocaps_linked_and_flickr30k_converted_from_karpathy(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    write_nocaps(raw)
    captions = [["a dark grey square", "nothing but grey"], ["a lighter grey square"]]
    flickr = write_flickr30k(raw, captions)
    shutil.rmtree(raw / "flickr30k" / "annotations")  # only Karpathy's release: converted to LAVIS's list
    shutil.move(flickr["karpathy_images"], raw / "flickr30k_images")  # the images as Kaggle names their folder

    code, out = prepare(capsys, "nocaps", raw, data, "--link")
    assert code == 0, out
    nocaps = configured_eval(data, "nocaps").evaluated
    assert [image.path.name for image in nocaps] == [f"{oid}.jpg" for oid, _, _ in NOCAPS]
    assert all(image.path.is_symlink() for image in nocaps)
    assert (data / "nocaps" / "nocaps_val_4500_captions.json").resolve() == \
        (raw / "nocaps" / "nocaps_val_4500_captions.json").resolve()

    code, out = prepare(capsys, "flickr30k", raw, data)
    assert code == 0, out
    assert "converted the 2 test images of Karpathy's split to LAVIS's list" in out
    retrieval = configured_eval(data, "flickr30k").evaluated
    karpathy = read_retrieval_set(str(flickr["karpathy"]), str(raw / "flickr30k_images"), "test")
    assert retrieval.captions == karpathy.captions == [c for caps in captions for c in caps]
    assert retrieval.image_of == karpathy.image_of == [0, 0, 1]
    assert [p.name for p in retrieval.images] == [p.name for p in karpathy.images]
    # the train and val images are not used by the test split, so not copied
    assert sorted(p.name for p in (data / "flickr30k" / "images" / "flickr30k-images").iterdir()) == \
        ["1000092795.jpg", "1000092796.jpg"]


@pytest.mark.parametrize("dataset", ["dtd", "fgvc_aircraft"])
def test_coop_datasets_from_their_release_tarballs(tmp_path, capsys, dataset):
    stage, raw, data = tmp_path / "stage", tmp_path / "raw", tmp_path / "data"
    raw.mkdir()
    expected = write_coop(stage, dataset)
    if dataset == "dtd":  # dtd-r1.0.1.tar.gz holds dtd/images/; the split file comes from CoOp's Google Drive
        shutil.move(stage / "dtd" / "split_zhou_DescribableTextures.json", raw)
        pack_tar(raw / "dtd-r1.0.1.tar.gz", stage / "dtd" / "images", "dtd/images")
    else:  # fgvc-aircraft-2013b.tar.gz holds the split lists and images under fgvc-aircraft-2013b/data/
        pack_tar(raw / "fgvc-aircraft-2013b.tar.gz", stage / "fgvc_aircraft", "fgvc-aircraft-2013b/data")

    code, out = prepare(capsys, dataset, raw, data)
    assert code == 0, out
    images = sum(len(expected[split]) for split in ("train", "val", "test"))  # 3 classes x (2 + 1 + 2)
    assert f"{images} needed, 0 found, {images} placed" in out
    evaluation = configured_eval(data, "coop", f"dataset={dataset}")
    stage_images = stage / prepare_data.COOP_DATASETS[dataset].dataset_dir
    data_images = data / prepare_data.COOP_DATASETS[dataset].dataset_dir
    for split in ("train", "test"):
        items = read_coop_split(dataset, str(data), split).items
        assert [(p.relative_to(data_images), y) for p, y in items] == \
            [(p.relative_to(stage_images), y) for p, y, _ in expected[split]]
    assert len(evaluation.evaluated[0]) == len(expected["test"])
    calib = instantiate(composed(data, "calib=coop_train", f"calib.dataset={dataset}").calib)
    assert all(path.is_file() for path, _ in calib.items())


def test_imagenet_flat_val_is_sorted_into_synset_folders(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    val, _, expected = write_imagenet_flat_val(raw)
    (raw / "classnames.txt").write_text("".join(f"{wnid} {name}\n" for name, wnid in CLASSES["imagenet"]))

    code, out = prepare(capsys, "imagenet", raw, data)
    assert code == 0, out
    assert "optional" in out and "imagenet/images/train" in out  # absent, named, not an error
    items = configured_eval(data, "coop", "dataset=imagenet").evaluated[0]
    assert sorted((p.name, y) for p, y in items) == sorted((p.name, y) for p, y in expected)
    code, out = prepare(capsys, "imagenet_top1", raw, data, "--link")
    assert code == 0, out
    assert all(p.is_symlink() for p in (data / "imagenet" / "val").rglob("*.JPEG"))
    configured_eval(data, "imagenet_top1")


def test_wikitext_zip_becomes_the_configured_parquet(tmp_path, capsys):
    stage, raw, data = tmp_path / "stage", tmp_path / "raw", tmp_path / "data"
    raw.mkdir()
    shutil.move(write_wikitext(stage)["zip"], raw)

    code, out = prepare(capsys, "wikitext2", raw, data)
    assert code == 0, out
    assert "converted 20 rows to parquet <- " in out and "wikitext-2-raw-v1.zip:wikitext-2-raw/wiki.test.raw" in out
    source = composed(data, "+eval@evals.x=wikitext2").evals.x.source
    assert read_documents(source) == WIKI_ROWS  # the HF rows, as the eval reads them


def test_missing_files_and_images_are_named_with_their_source(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    raw.mkdir()
    code, out = prepare(capsys, "vqav2", raw, data)
    assert code == 1
    assert statuses(out, "missing") == [str(data / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json"),
                                        str(data / "vqav2" / "v2_mscoco_val2014_annotations.json")]
    assert "get v2_Questions_Val_mscoco.zip from https://visualqa.org/download.html" in out
    assert "https://images.cocodataset.org/zips/val2014.zip" in out  # where the images come from, next

    write_vqa(raw, "vqav2")
    lost = raw / "coco" / "images" / "val2014" / "COCO_val2014_000000393225.jpg"
    lost.unlink()
    code, out = prepare(capsys, "vqav2", raw, data)
    assert code == 1
    assert statuses(out, "missing") == [str(data / "coco" / "images")]
    assert f"1 missing (first: {data / 'coco' / 'images' / 'val2014' / lost.name})" in out
    assert "get COCO 2014 val images: val2014.zip from https://images.cocodataset.org/zips/val2014.zip" in out


def test_rerun_places_nothing_and_user_files_are_kept(tmp_path, capsys):
    raw, data = tmp_path / "raw", tmp_path / "data"
    files = write_vqa(raw, "vqav2")
    mine = data / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(files["questions"].read_bytes() + b"\n")  # the user's own copy, not byte-identical
    assert prepare(capsys, "vqav2", raw, data)[0] == 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data.rglob("*") if p.is_file()}

    code, out = prepare(capsys, "vqav2", raw, data)
    assert code == 0
    assert statuses(out, "placed") == [] and len(statuses(out, "found")) == 2
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in data.rglob("*") if p.is_file()} == before
    assert mine.read_bytes() == files["questions"].read_bytes() + b"\n"


def test_a_file_the_reader_rejects_is_invalid(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "gqa").mkdir(parents=True)
    (data / "gqa" / "testdev_balanced_questions.json").write_text('{"201307251": {"question": "Is it overcast?"}}')
    code, out = prepare(capsys, "--check", "gqa", data)
    assert code == 1
    assert statuses(out, "invalid") == ["gqa"]
    assert "question 201307251 is malformed (no 'imageId')" in out  # read_gqa's own message


def test_cli_exit_status_and_list(tmp_path, capsys):
    script = [sys.executable, str(ROOT / "scripts" / "prepare_data.py")]
    env = {**os.environ, "ECOFLAP_DATA": str(tmp_path / "data")}  # the data root defaults to paths.data_root
    result = subprocess.run([*script, "--check", "c4"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert f"missing  {tmp_path / 'data' / 'c4' / 'c4-train.00000-of-01024.json.gz'}" in result.stdout
    assert f"optional {tmp_path / 'data' / 'c4' / 'c4-validation.00000-of-00008.json.gz'}" in result.stdout
    code, out = prepare(capsys, "--list")
    assert code == 0
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")] == \
        list(prepare_data.DATASETS)
    with pytest.raises(SystemExit) as usage:
        prepare_data.main(["nonsense", str(tmp_path)])
    assert usage.value.code == 2
