"""Tiny VQAv2, OK-VQA and GQA files in their released formats, laid out under a data root as
configs/eval/{vqav2,vqav2_testdev,okvqa,gqa}.yaml expect, each also as LAVIS's converted list.

    <root>/vqav2/v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json,
                 vqa_val_eval.json (LAVIS), v2_OpenEnded_mscoco_test-dev2015_questions.json,
                 vqa_test.json (LAVIS)
    <root>/okvqa/OpenEnded_mscoco_val2014_questions.json, mscoco_val2014_annotations.json,
                 okvqa_val_eval.json (LAVIS)
    <root>/coco/images/{val2014,test2015}/COCO_<split>_<image id:012d>.jpg
    <root>/gqa/testdev_balanced_questions.json (official dict), gqa/lavis/testdev_balanced_questions.json
    <root>/gqa/images/<imageId>.jpg
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image

#: VQAv2 val: (question_id, image_id, question, question_type, answer_type, 10 answers by answer_id)
VQAV2_VAL = [
    (262148000, 262148, "Where is he looking?", "none of the above", "other",
     ["down"] * 4 + ["at table"] * 3 + ["skateboard"] * 2 + ["table"]),
    (262148001, 262148, "How many dogs are there?", "how many", "number", ["2"] * 10),
    (393225000, 393225, "Is this a kitchen?", "is this a", "yes/no", ["yes"] * 9 + ["no"]),
    (393225001, 393225, "What color is the car?", "what color is the", "other",
     ["red"] * 2 + ["dark red"] * 5 + ["maroon"] * 3),
]

#: OK-VQA val: processed answers (what the evaluator compares), each of 5 annotators listed twice
OKVQA_VAL = [
    (5770000, 577, "What winter sport can you do on this?", "other", "other",
     ["ski"] * 6 + ["snowboard"] * 4),
    (4100001, 41, "What kind of animal is this?", "other", "other",
     ["dog"] * 4 + ["puppy"] * 2 + ["animal"] * 4),
]

#: VQAv2 test-dev: questions only
VQAV2_TESTDEV = [(1000, 1, "What is on the plate?"), (1001, 1, "Is it sunny?"), (2000, 2, "How many people?")]

#: GQA test-dev balanced: question id -> (imageId, question, answer, fullAnswer)
GQA_TESTDEV = {
    "201307251": ("n161313", "Is it overcast?", "no", "No, it is clear."),
    "201640614": ("n161313", "Who is wearing the dress?", "woman", "The woman is wearing a dress."),
    "202225914": ("n235859", "What is the piece of clothing?", "t-shirt", "The piece of clothing is a t-shirt."),
}

INFO = {"description": "This is v2.0 of the VQA dataset.", "url": "http://visualqa.org", "version": "2.0",
        "year": 2017, "contributor": "VQA Team", "date_created": "2017-04-26 17:07:13"}
LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0 License"}


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def coco_image(root: Path, split: str, image_id: int) -> str:
    """Writes the image; returns its path relative to <root>/coco/images."""
    name = f"{split}/COCO_{split}_{image_id:012d}.jpg"
    write_image(root / "coco" / "images" / name, image_id)
    return name


def write_vqa(root: Path, dataset: str = "vqav2") -> dict[str, Path]:
    """The official questions + annotations pair and LAVIS's list of the same questions."""
    rows = VQAV2_VAL if dataset == "vqav2" else OKVQA_VAL
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "v2_" if dataset == "vqav2" else ""
    questions, annotations, lavis = [], [], []
    for i, (qid, image_id, question, question_type, answer_type, answers) in enumerate(rows):
        image = coco_image(root, "val2014", image_id)
        questions.append({"image_id": image_id, "question": question, "question_id": qid})
        entries = [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)]
        if dataset == "okvqa":
            for entry in entries:
                entry["raw_answer"] = entry["answer"]
        if i == 0:
            entries.reverse()  # the reader orders answers by answer_id, not by position
        annotations.append({"question_type": question_type, "multiple_choice_answer": max(answers, key=answers.count),
                            "answers": entries, "image_id": image_id, "answer_type": answer_type,
                            "question_id": qid})
        lavis.append({"question_id": qid, "question": question, "image": image, "answer": answers,
                      "dataset": "vqa" if dataset == "vqav2" else "okvqa"})
    header = {"info": INFO, "license": LICENSE, "data_type": "mscoco", "data_subtype": "val2014"}
    paths = {"questions": folder / f"{prefix}OpenEnded_mscoco_val2014_questions.json",
             "annotations": folder / f"{prefix}mscoco_val2014_annotations.json",
             "lavis": folder / ("vqa_val_eval.json" if dataset == "vqav2" else "okvqa_val_eval.json"),
             "images": root / "coco" / "images"}
    paths["questions"].write_text(json.dumps({**header, "task_type": "Open-Ended", "questions": questions}))
    paths["annotations"].write_text(json.dumps({**header, "annotations": annotations}))
    paths["lavis"].write_text(json.dumps(lavis))
    return paths


def write_vqa_testdev(root: Path) -> dict[str, Path]:
    """VQAv2 test-dev questions (images in test2015/, as released) and LAVIS's vqa_test.json list."""
    folder = root / "vqav2"
    folder.mkdir(parents=True, exist_ok=True)
    questions = [{"image_id": image_id, "question": q, "question_id": qid} for qid, image_id, q in VQAV2_TESTDEV]
    lavis = [{"question_id": qid, "question": q, "image": coco_image(root, "test2015", image_id), "dataset": "vqa"}
             for qid, image_id, q in VQAV2_TESTDEV]
    paths = {"questions": folder / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
             "lavis": folder / "vqa_test.json", "images": root / "coco" / "images"}
    paths["questions"].write_text(json.dumps({"info": INFO, "license": LICENSE, "task_type": "Open-Ended",
                                              "data_type": "mscoco", "data_subtype": "test-dev2015",
                                              "questions": questions}))
    paths["lavis"].write_text(json.dumps(lavis))
    return paths


def write_gqa(root: Path) -> dict[str, Path]:
    """GQA's official question dict (questions1.2) and LAVIS's list of the same questions."""
    folder = root / "gqa"
    (folder / "lavis").mkdir(parents=True, exist_ok=True)
    official, lavis = {}, []
    for qid, (image, question, answer, full) in GQA_TESTDEV.items():
        write_image(folder / "images" / f"{image}.jpg", int(qid) % 1000)
        official[qid] = {"semantic": [{"operation": "select", "dependencies": [], "argument": "scene"}],
                         "entailed": [], "equivalent": [qid], "question": question, "imageId": image,
                         "isBalanced": True, "groups": {"global": None, "local": "12q-"},
                         "answer": answer, "semanticStr": "select: scene", "annotations": {
                             "answer": {}, "question": {}, "fullAnswer": {}}, "types": {
                             "detailed": "weatherVerify", "semantic": "global", "structural": "verify"},
                         "fullAnswer": full}
        lavis.append({"image": f"{image}.jpg", "question": question, "question_id": int(qid), "answer": answer,
                      "fullAnswer": full})
    paths = {"official": folder / "testdev_balanced_questions.json",
             "lavis": folder / "lavis" / "testdev_balanced_questions.json", "images": folder / "images"}
    paths["official"].write_text(json.dumps(official))
    paths["lavis"].write_text(json.dumps(lavis))
    return paths


#: TextVQA val entries in the release file's fields: (question_id, image_id, question, ten answers)
TEXTVQA_VAL = [
    (34602, "003a8ae2ef43b901", "what is the brand of this camera?",
     ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota", "dakota digital",
      "dakota digital", "dakota", "dakota"]),
    (34603, "0054c91397f2fe05", "what does the small white text spell?",
     ["copenhagen", "copenhagen", "copenhagen", "copenhagen", "copenhagen", "thursday", "copenhagen",
      "copenhagen", "copenhagen", "copenhagen"]),
    (34604, "005635e119b9f32f", "what kind of beer is this?",
     ["ale", "sublimely self-righteous ale", "stone", "self righteous", "stone", "stone", "ale", "ale",
      "stone ale", "sublimely self-righteous ale"]),
]


#: OCR tokens per image (the first is the first line of LLaVA's file as released)
TEXTVQA_OCR = {"003a8ae2ef43b901": ["DAKOTA", "DIGITAL", "Single-Use", "Camera", "Pire", "digitat"],
               "0054c91397f2fe05": ["COPENHAGEN"], "005635e119b9f32f": []}


def write_textvqa(root: Path) -> dict[str, Path]:
    """TextVQA_0.5.1_val.json and its images under train_images/<image_id>.jpg."""
    folder = root / "textvqa"
    data = []
    for i, (qid, image, question, answers) in enumerate(TEXTVQA_VAL):
        write_image(folder / "train_images" / f"{image}.jpg", 500 + i)
        data.append({"question": question, "image_id": image, "image_classes": ["Camera"],
                     "flickr_original_url": "", "flickr_300k_url": "", "image_width": 1024, "image_height": 664,
                     "answers": answers, "question_tokens": question.split(), "question_id": qid, "set_name": "val"})
    path = folder / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
                                "data": data}))
    # LLaVA's question file: question_id is the image id, the text the capitalised question, its OCR
    # tokens joined by ", " (none: the label and its space stay) and the short-answer suffix
    ocr = folder / "llava_textvqa_val_v051_ocr.jsonl"
    ocr.write_text("".join(json.dumps({"question_id": image, "image": f"{image}.jpg", "text": f"{question.capitalize()}"
                                       f"\nReference OCR token: {', '.join(TEXTVQA_OCR[image])}\nAnswer the question "
                                       "using a single word or phrase.", "category": "default"}) + "\n"
                           for _, image, question, _ in reversed(TEXTVQA_VAL)))
    return {"annotations": path, "images": folder / "train_images", "ocr": ocr}
