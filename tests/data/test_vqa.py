"""VQAv2 / OK-VQA / GQA readers on the released formats (official and LAVIS layouts), and the
problems they name."""

import json
import re
from pathlib import Path

import pytest

from ecoflap_exp.data.vqa import VQASample, read_gqa, read_vqa
from ecoflap_exp.errors import UserError
from tests.fixtures_vqa import OKVQA_VAL, VQAV2_VAL, write_gqa, write_vqa, write_vqa_testdev


def without_types(samples):
    return [VQASample(s.question_id, s.question, s.image, s.answers) for s in samples]


@pytest.mark.parametrize(("dataset", "rows"), [("vqav2", VQAV2_VAL), ("okvqa", OKVQA_VAL)])
def test_official_pair_and_lavis_list_give_the_same_samples(tmp_path, dataset, rows):
    files = write_vqa(tmp_path, dataset)
    official = read_vqa(dataset, str(files["images"]), str(files["questions"]), str(files["annotations"]))
    lavis = read_vqa(dataset, str(files["images"]), annotations=str(files["lavis"]))
    assert [s.question_id for s in official] == [r[0] for r in rows]
    assert [s.answers for s in official] == [tuple(r[5]) for r in rows]  # by answer_id (q0 stored reversed)
    assert [s.answer_type for s in official] == [r[4] for r in rows]
    assert [s.image.name for s in official] == [f"COCO_val2014_{r[1]:012d}.jpg" for r in rows]
    assert all(s.image.is_file() for s in official)
    assert without_types(official) == lavis
    assert all(s.answer_type is None for s in lavis)


def test_gqa_official_dict_and_lavis_list_give_the_same_samples(tmp_path):
    files = write_gqa(tmp_path)
    official = read_gqa(str(files["official"]), str(files["images"]))
    assert official == read_gqa(str(files["lavis"]), str(files["images"]))
    assert [(s.question_id, s.answers, s.image.name) for s in official] == [
        ("201307251", ("no",), "n161313.jpg"), ("201640614", ("woman",), "n161313.jpg"),
        ("202225914", ("t-shirt",), "n235859.jpg")]


def test_testdev_questions_use_the_test2015_images(tmp_path):
    files = write_vqa_testdev(tmp_path)
    official = read_vqa("vqav2", str(files["images"]), questions=str(files["questions"]), with_answers=False)
    assert official == read_vqa("vqav2", str(files["images"]), questions=str(files["lavis"]), with_answers=False)
    assert [s.image.relative_to(files["images"]).as_posix() for s in official][0] == \
        "test2015/COCO_test2015_000000000001.jpg"
    assert all(s.image.is_file() and s.answers == () for s in official)


def rewrite(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("file", "change", "message"), [
    ("annotations", lambda d: d["annotations"][2]["answers"][4].pop("answer_id"),
     r"annotation of question_id 393225000 is malformed \(no 'answer_id'\)"),
    ("annotations", lambda d: d["annotations"][3]["answers"][1].update(answer_id=1),
     r"question_id 393225001 is malformed \(answer_id 1 appears twice\)"),
    ("annotations", lambda d: d["annotations"][1].update(image_id=5),
     r"question_id 262148001 is malformed \(image_id 5 differs"),
    ("annotations", lambda d: d["annotations"].pop(1), "question_id 262148001 of .* has no annotation"),
    ("questions", lambda d: d["questions"][2].pop("question"), r"question 2 \(question_id 393225000\) is malformed"),
    ("lavis", lambda d: d[1].pop("image"), r"entry 1 \(question_id 262148001\) is malformed \(no 'image'\)"),
    ("lavis", lambda d: d[0].update(answer="yes"), r"entry 0 \(question_id 262148000\) is malformed"),
])
def test_malformed_entries_are_named(tmp_path, file, change, message):
    files = write_vqa(tmp_path)
    rewrite(files[file], change)
    with pytest.raises(UserError, match=message):
        if file == "lavis":
            read_vqa("vqav2", str(files["images"]), annotations=str(files["lavis"]))
        else:
            read_vqa("vqav2", str(files["images"]), str(files["questions"]), str(files["annotations"]))


def test_gqa_malformed_entry_and_duplicates(tmp_path):
    files = write_gqa(tmp_path)
    rewrite(files["official"], lambda d: d["201640614"].pop("imageId"))
    with pytest.raises(UserError, match=r"question 201640614 is malformed \(no 'imageId'\)"):
        read_gqa(str(files["official"]), str(files["images"]))
    rewrite(files["lavis"], lambda d: d.append({**d[0], "answer": "yes"}))
    with pytest.raises(UserError, match="question_id 201307251 is listed twice with different content"):
        read_gqa(str(files["lavis"]), str(files["images"]))


@pytest.mark.parametrize(("dataset", "where"), [("vqav2", "visualqa.org"), ("okvqa", "okvqa.allenai.org")])
def test_missing_files_name_the_file_dataset_and_source(tmp_path, dataset, where):
    name = {"vqav2": "VQAv2", "okvqa": "OK-VQA"}[dataset]
    with pytest.raises(UserError, match=re.escape(f"{name} annotations file '{tmp_path}/nope.json' does not exist; "
                                                  f"get it from https://{where}")):
        read_vqa(dataset, str(tmp_path), str(tmp_path / "q.json"), str(tmp_path / "nope.json"))
    files = write_vqa(tmp_path, dataset)
    with pytest.raises(UserError, match=f"{name} questions file .*q.json' does not exist"):
        read_vqa(dataset, str(files["images"]), str(tmp_path / "q.json"), str(files["annotations"]))
    with pytest.raises(UserError, match="need the matching questions file"):
        read_vqa(dataset, str(files["images"]), None, str(files["annotations"]))
    with pytest.raises(UserError, match="GQA questions file .* does not exist; get it from https://cs.stanford.edu"):
        read_gqa(str(tmp_path / "testdev_balanced_questions.json"), str(tmp_path))
