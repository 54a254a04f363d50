"""Readers for the VQA family (VQAv2, OK-VQA, GQA) in their released formats.

Each reader returns `VQASample`s (question id, question, image path, ground-truth answers) and
tells the format from the file's content, not its name:
- VQAv2 / OK-VQA, official (visualqa.org, okvqa.allenai.org): a questions JSON
  `{"data_subtype", "questions": [{"image_id", "question", "question_id"}]}` and an annotations
  JSON `{"annotations": [{"question_id", "image_id", "answer_type", "answers": [{"answer",
  "answer_id", ...}] (10 entries)}]}`, joined on question_id; the image is
  `<images>/<split>/COCO_<split>_<image_id:012d>.jpg` with split = the questions file's
  data_subtype (test-dev2015 questions use the test2015 images; val2014 when the field is absent).
- VQAv2 / OK-VQA, LAVIS's converted list (vqa_val_eval.json, okvqa_val_eval.json, vqa_test.json):
  `[{"question_id", "question", "image": "val2014/COCO_val2014_....jpg", "answer": [10 strings]}]`,
  image relative to `<images>`. It carries no answer types.
- GQA, official (questions1.2/testdev_balanced_questions.json): an object keyed by question id ->
  `{"imageId", "question", "answer", "fullAnswer", ...}`; the image is `<images>/<imageId>.jpg`.
- GQA, LAVIS's list (same file name): `[{"question_id", "question", "image": "n161313.jpg", "answer"}]`.
- TextVQA (textvqa.org): `{"data": [{"question_id", "question", "image_id", "answers": [10 strings]}]}`,
  the image `<images>/<image_id>.jpg`; with LLaVA's question file (llava_textvqa_val_v051_ocr.jsonl,
  lines `{"question_id": <image_id>, "text": "<Question>\nReference OCR token: <a, b>\n<suffix>"}`),
  each question becomes that file's first two lines, matched on (image_id, lower-cased question)
  as LLaVA's eval_textvqa.py matches them.
Answers keep their order (by answer_id in the official files, by position in LAVIS's lists), so
the leave-one-annotator-out metric removes exactly one entry. A question id listed twice with the
same content is kept once; with different content it is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecoflap_exp.data.files import check_images_exist, read_json_file, read_jsonl_file
from ecoflap_exp.errors import UserError


@dataclass(frozen=True)
class Dataset:
    name: str
    files: str  # where to get the question/annotation files
    images: str  # where to get the images


DATASETS = {
    "vqav2": Dataset(
        "VQAv2",
        "https://visualqa.org/download.html (v2_OpenEnded_mscoco_<split>_questions.json and "
        "v2_mscoco_<split>_annotations.json), or LAVIS's converted list vqa_val_eval.json "
        "(https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/vqav2/vqa_val_eval.json)",
        "the COCO 2014 images (val2014/, test2015/) from https://cocodataset.org/#download",
    ),
    "okvqa": Dataset(
        "OK-VQA",
        "https://okvqa.allenai.org/download.html (OpenEnded_mscoco_val2014_questions.json and "
        "mscoco_val2014_annotations.json), or LAVIS's converted list "
        "(https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/okvqa/okvqa_val_eval.json)",
        "the COCO 2014 images (val2014/) from https://cocodataset.org/#download",
    ),
    "gqa": Dataset(
        "GQA",
        "https://cs.stanford.edu/people/dorarad/gqa/download.html (questions1.2: "
        "testdev_balanced_questions.json), or LAVIS's converted list "
        "(https://storage.googleapis.com/sfr-vision-language-research/LAVIS/datasets/gqa/testdev_balanced_questions.json)",
        "images.zip from https://cs.stanford.edu/people/dorarad/gqa/download.html",
    ),
    "textvqa": Dataset(
        "TextVQA",
        "https://textvqa.org/dataset/ (TextVQA_0.5.1_val.json: questions with their 10 answers each)",
        "train_val_images.zip from https://textvqa.org/dataset/ (the val questions' images are in train_images/)",
    ),
}
#: where LLaVA-1.5's TextVQA question file (with the OCR tokens its reported number uses) comes from
LLAVA_OCR_FILE = ("LLaVA's eval.zip (haotian-liu/LLaVA docs/Evaluation.md): "
                  "playground/data/eval/textvqa/llava_textvqa_val_v051_ocr.jsonl")
LLAVA_OCR_LINE = '{"question_id": "<image_id>", "text": "<Question>\\nReference OCR token: <tokens>\\n<suffix>"}'


#: question files whose images live in another COCO folder
COCO_IMAGE_SPLIT = {"test-dev2015": "test2015"}


@dataclass(frozen=True)
class VQASample:
    question_id: int | str
    question: str
    image: Path
    answers: tuple[str, ...] = ()  # ground truth; empty for a split without public answers
    answer_type: str | None = None  # "yes/no", "number", "other" (official VQA annotations only)


def dataset_info(dataset: str) -> Dataset:
    if dataset not in DATASETS:
        raise UserError(f"dataset={dataset!r} is unknown; use one of {', '.join(DATASETS)}")
    return DATASETS[dataset]


def load_json(path: str, dataset: str, role: str) -> Any:
    info = dataset_info(dataset)
    return read_json_file(path, f"{info.name} {role} file", f"get it from {info.files}, and point the eval's "
                          f"`{role}` option (or paths.data_root) at it")


def malformed(path: str, entry: str, problem: str, expected: str) -> UserError:
    return UserError(f"{path}: {entry} is malformed ({problem}); expected {expected}")


def field(entry: Any, key: str, kind: type | tuple[type, ...], path: str, where: str, expected: str) -> Any:
    """entry[key], checked to exist and to be of `kind`; otherwise an error naming the entry."""
    if not isinstance(entry, dict) or key not in entry:
        raise malformed(path, where, f"no {key!r}", expected)
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise malformed(path, where, f"{key!r} is {value!r}", expected)
    return value


def dedup(samples: list[VQASample], path: str) -> list[VQASample]:
    kept: dict[int | str, VQASample] = {}
    for sample in samples:
        first = kept.setdefault(sample.question_id, sample)
        if first != sample:
            raise UserError(f"{path}: question_id {sample.question_id} is listed twice with different content; "
                            f"fix the file")
    return list(kept.values())


OFFICIAL_QUESTION = '{"question_id": int, "image_id": int, "question": str}'
OFFICIAL_ANNOTATION = ('{"question_id": int, "image_id": int, "answer_type": str, "answers": '
                       '[{"answer": str, "answer_id": int}, ...]}')
LAVIS_ENTRY = '{"question_id": int, "question": str, "image": "val2014/COCO_val2014_....jpg", "answer": [str, ...]}'


def official_answers(annotation: dict, path: str, where: str) -> tuple[str, ...]:
    answers = field(annotation, "answers", list, path, where, OFFICIAL_ANNOTATION)
    if not answers:
        raise malformed(path, where, "no answers", OFFICIAL_ANNOTATION)
    by_id: dict[int, str] = {}
    for answer in answers:
        answer_id = field(answer, "answer_id", int, path, where, OFFICIAL_ANNOTATION)
        if answer_id in by_id:
            raise malformed(path, where, f"answer_id {answer_id} appears twice", OFFICIAL_ANNOTATION)
        by_id[answer_id] = field(answer, "answer", str, path, where, OFFICIAL_ANNOTATION)
    return tuple(by_id[i] for i in sorted(by_id))


def question_fields(entry: Any, path: str, label: str, expected: str) -> tuple[int, str, str]:
    """(question_id, how messages name the entry, question text) of one question entry."""
    qid = field(entry, "question_id", int, path, label, expected)
    where = f"{label} (question_id {qid})"
    return qid, where, field(entry, "question", str, path, where, expected)


def read_official_vqa(questions: dict, questions_path: str, annotations: dict | None, annotations_path: str | None,
                      images: Path) -> list[VQASample]:
    subtype = questions.get("data_subtype", "val2014")
    folder = COCO_IMAGE_SPLIT.get(subtype, subtype)
    by_question: dict[int, dict] = {}
    if annotations is not None:
        assert annotations_path is not None
        entries = field(annotations, "annotations", list, annotations_path, "the file", '{"annotations": [...]}')
        for i, annotation in enumerate(entries):
            qid = field(annotation, "question_id", int, annotations_path, f"annotation {i}", OFFICIAL_ANNOTATION)
            by_question[qid] = annotation
    samples = []
    entries = field(questions, "questions", list, questions_path, "the file", '{"questions": [...]}')
    for i, question in enumerate(entries):
        qid, where, text = question_fields(question, questions_path, f"question {i}", OFFICIAL_QUESTION)
        image_id = field(question, "image_id", int, questions_path, where, OFFICIAL_QUESTION)
        answers: tuple[str, ...] = ()
        answer_type = None
        if annotations is not None:
            assert annotations_path is not None
            if qid not in by_question:
                raise UserError(f"question_id {qid} of {questions_path} has no annotation in {annotations_path}; "
                                f"the questions and annotations files must be of the same split")
            annotation = by_question.pop(qid)
            where = f"the annotation of question_id {qid}"
            if field(annotation, "image_id", int, annotations_path, where, OFFICIAL_ANNOTATION) != image_id:
                raise malformed(annotations_path, where, f"image_id {annotation['image_id']} differs from the "
                                f"questions file's {image_id}", "the same image_id in both files")
            answers = official_answers(annotation, annotations_path, where)
            answer_type = annotation.get("answer_type")
        samples.append(VQASample(qid, text, images / folder / f"COCO_{folder}_{image_id:012d}.jpg", answers,
                                 answer_type))
    if by_question:
        extra = next(iter(by_question))
        raise UserError(f"{annotations_path} annotates {len(by_question)} question(s) absent from {questions_path} "
                        f"(first: question_id {extra}); the two files must be of the same split")
    return samples


def read_lavis_vqa(entries: list, path: str, images: Path, with_answers: bool) -> list[VQASample]:
    samples = []
    for i, entry in enumerate(entries):
        qid, where, text = question_fields(entry, path, f"entry {i}", LAVIS_ENTRY)
        image = field(entry, "image", str, path, where, LAVIS_ENTRY)
        answers: tuple[str, ...] = ()
        if with_answers:
            answers = tuple(field(entry, "answer", list, path, where, LAVIS_ENTRY))
            if not answers or not all(isinstance(a, str) for a in answers):
                raise malformed(path, where, f"'answer' is {list(answers)!r}", LAVIS_ENTRY)
        samples.append(VQASample(qid, text, images / image, answers))
    return samples


def read_vqa(dataset: str, images: str, questions: str | None = None, annotations: str | None = None,
             with_answers: bool = True) -> list[VQASample]:
    """VQAv2 or OK-VQA samples from the official questions (+ annotations) pair, or from LAVIS's
    list given as `annotations` (or as `questions` for a split without answers)."""
    info = dataset_info(dataset)
    root = Path(images).expanduser()
    if annotations is None and questions is None:
        raise UserError(f"{info.name}: give `annotations` (and `questions` for the official files); get them from "
                        f"{info.files}")
    if with_answers and annotations is None:
        raise UserError(f"{info.name}: scoring needs `annotations` (the official annotations JSON or LAVIS's "
                        f"list with answers); get it from {info.files}")
    if annotations is not None:
        data = load_json(annotations, dataset, "annotations")
        if isinstance(data, list):  # LAVIS's list holds the questions too
            return dedup(read_lavis_vqa(data, annotations, root, with_answers), annotations)
        if not isinstance(data, dict) or "annotations" not in data:
            raise UserError(f"{annotations} is neither an official {info.name} annotations file "
                            f'({{"annotations": [...]}}) nor LAVIS\'s list ([{LAVIS_ENTRY}, ...])')
        if questions is None:
            raise UserError(f"{info.name}: the official annotations {annotations} need the matching questions file "
                            f"(set the eval's `questions`); get it from {info.files}")
        question_data = load_json(questions, dataset, "questions")
        if not isinstance(question_data, dict) or "questions" not in question_data:
            raise UserError(f"{questions} is not an official {info.name} questions file "
                            f'({{"data_subtype", "questions": [...]}})')
        return dedup(read_official_vqa(question_data, questions, data, annotations, root), questions)
    assert questions is not None
    data = load_json(questions, dataset, "questions")
    if isinstance(data, list):
        return dedup(read_lavis_vqa(data, questions, root, with_answers=False), questions)
    if not isinstance(data, dict) or "questions" not in data:
        raise UserError(f"{questions} is neither an official {info.name} questions file "
                        f'({{"data_subtype", "questions": [...]}}) nor LAVIS\'s list')
    return dedup(read_official_vqa(data, questions, None, None, root), questions)


TEXTVQA_ENTRY = '{"question_id": int, "question": str, "image_id": str, "answers": [str, ...]}'


def read_llava_ocr(path: str) -> dict[tuple[str, str], str]:
    """LLaVA's TextVQA questions with their OCR tokens: (image_id, lower-cased question) -> the
    question and its "Reference OCR token: ..." line, as LLaVA-1.5 is prompted."""
    rows = read_jsonl_file(path, "LLaVA TextVQA question file", f"get it from {LLAVA_OCR_FILE}")
    questions = {}
    for i, row in enumerate(rows):
        where = f"line {i + 1}"
        text = field(row, "text", str, path, where, LLAVA_OCR_LINE)
        lines = text.split("\n")
        if len(lines) != 3 or not lines[1].startswith("Reference OCR token:"):
            raise malformed(path, where, "its text is not question, OCR tokens and suffix on three lines",
                            LLAVA_OCR_LINE)
        questions[(field(row, "question_id", str, path, where, LLAVA_OCR_LINE), lines[0].lower())] = (
            "\n".join(lines[:2]))
    return questions


def read_textvqa(annotations: str, images: str, ocr: str | None = None) -> list[VQASample]:
    """TextVQA samples from its release file ({"dataset_name": "textvqa", "data": [...]}), each
    with its 10 answers; the image is <images>/<image_id>.jpg. `ocr`: LLaVA's question file, whose
    question and OCR-token lines replace each question."""
    root = Path(images).expanduser()
    prompted = read_llava_ocr(ocr) if ocr else None
    data = load_json(annotations, "textvqa", "annotations")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise UserError(f'{annotations} is not a TextVQA release file ({{"dataset_name": "textvqa", "data": '
                        f"[{TEXTVQA_ENTRY}, ...]}})")
    samples = []
    for i, entry in enumerate(data["data"]):
        qid = field(entry, "question_id", int, annotations, f"entry {i}", TEXTVQA_ENTRY)
        where = f"entry {i} (question_id {qid})"
        answers = field(entry, "answers", list, annotations, where, TEXTVQA_ENTRY)
        if not answers or not all(isinstance(a, str) for a in answers):
            raise malformed(annotations, where, f"'answers' is {answers!r}", TEXTVQA_ENTRY)
        image = field(entry, "image_id", str, annotations, where, TEXTVQA_ENTRY)
        question = field(entry, "question", str, annotations, where, TEXTVQA_ENTRY)
        if prompted is not None:
            if (image, question.lower()) not in prompted:
                raise UserError(f"{ocr} has no line for TextVQA question {qid} ({question!r}, image {image}); is it "
                                f"the question file of this split ({LLAVA_OCR_FILE})?")
            question = prompted[image, question.lower()]
        samples.append(VQASample(qid, question, root / f"{image}.jpg", tuple(answers)))
    return dedup(samples, annotations)


GQA_OFFICIAL = '{"<question id>": {"imageId": str, "question": str, "answer": str, ...}}'
GQA_LAVIS = '[{"question_id": ..., "question": str, "image": "<imageId>.jpg", "answer": str}]'


def read_gqa(questions: str, images: str) -> list[VQASample]:
    """GQA samples (one answer each) from the official question dict or LAVIS's list; question ids
    are kept as strings, as the official file's keys."""
    root = Path(images).expanduser()
    data = load_json(questions, "gqa", "questions")
    samples = []
    if isinstance(data, dict):
        for qid, entry in data.items():
            where = f"question {qid}"
            image = field(entry, "imageId", str, questions, where, GQA_OFFICIAL)
            samples.append(VQASample(str(qid), field(entry, "question", str, questions, where, GQA_OFFICIAL),
                                     root / f"{image}.jpg", (field(entry, "answer", str, questions, where,
                                                                   GQA_OFFICIAL),)))
    elif isinstance(data, list):
        for i, entry in enumerate(data):
            qid = field(entry, "question_id", (int, str), questions, f"entry {i}", GQA_LAVIS)
            where = f"entry {i} (question_id {qid})"
            samples.append(VQASample(str(qid), field(entry, "question", str, questions, where, GQA_LAVIS),
                                     root / field(entry, "image", str, questions, where, GQA_LAVIS),
                                     (field(entry, "answer", str, questions, where, GQA_LAVIS),)))
    else:
        raise UserError(f"{questions} is neither GQA's official question file ({GQA_OFFICIAL}) nor LAVIS's list "
                        f"({GQA_LAVIS})")
    return dedup(samples, questions)


def check_images(samples: list[VQASample], dataset: str, images: str) -> None:
    info = dataset_info(dataset)
    check_images_exist([s.image for s in samples], f"{info.name} images",
                       f"put {info.images} under the eval's `images` root {images!r}")
