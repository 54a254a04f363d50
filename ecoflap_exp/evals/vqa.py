"""Visual question answering with a generative image-text model (BLIP-2, LLaVA, Qwen2-VL): VQAv2,
OK-VQA, GQA, TextVQA.

Protocol (LAVIS's BLIP-2 zero-shot evaluation, as ECoFLaP ran it): each question goes through
LAVIS's `blip_question` processor (lower-case; delete . ! " ( ) * # : ; ~; strip trailing spaces;
keep the first 50 words) into the prompt "Question: {} Short answer:", and
`adapter.generate(images, prompts, **generation)` answers a batch with beam search (num_beams 5,
max_new_tokens 10, min_length 1, length_penalty -1 by default). OK-VQA lemmatises the answers
before scoring (evals.lemmatise), as LAVIS's `apply_lemmatizer`; the answers are scored by
evals.vqa_scoring. VQAv2 test-dev has no public answers: its eval writes the evaluation server's
result file `[{"question_id", "answer"}]` and reports only how many questions it answered.
`limit` evaluates and scores the first N questions. Chat models (LLaVA-1.5, Qwen2-VL) take the
question as written (`clean_question: false`) in LLaVA-1.5's prompt "{question}\nAnswer the question
using a single word or phrase." (lmms-eval's default for both), greedy, up to 128 new tokens
(suite llava_vqa), scored as LLaVA scores them (vqa_scoring: `evalai`, `evalai_official`, GQA's
`llava`); TextVQA has ten answers per question, its images by image_id, and with `ocr` (LLaVA's
question file) each question carries its OCR tokens as LLaVA-1.5 is prompted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ecoflap_exp.data.images import decode_images
from ecoflap_exp.data.vqa import VQASample, check_images, dataset_info, read_gqa, read_textvqa, read_vqa
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import ReadsSplit
from ecoflap_exp.evals.lemmatise import make_lemmatiser
from ecoflap_exp.evals.vqa_scoring import (
    GQA_NORMALISERS,
    NORMALISERS,
    answers_by_question,
    evalai_answer,
    gqa_accuracy,
    vqa_accuracy,
)
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.blip_text import blip_question
from ecoflap_exp.models.capabilities import GeneratesFromImages
from ecoflap_exp.options import Count
from ecoflap_exp.progress import track

log = logging.getLogger(__name__)

def open_batch(paths: list[Path]) -> list[Image.Image]:
    """The batch's images, each file decoded once (VQAv2 asks several questions per image)."""
    unique = list(dict.fromkeys(paths))
    decoded = dict(zip(unique, (image for image, _ in decode_images([(p, None) for p in unique], 0.0)), strict=True))
    return [decoded[p] for p in paths]


def write_json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(rows))
    partial.replace(path)


DEFAULT_GENERATION = {"num_beams": 5, "max_new_tokens": 10, "min_length": 1, "length_penalty": -1.0}


class GenerativeVQA(ReadsSplit):
    """Questions answered by `adapter.generate` with BLIP-2's VQA prompt and decoding.

    `info` holds what the run record should keep beside the float metrics (normaliser, lemmatiser,
    files written)."""

    needs = (GeneratesFromImages,)
    dataset: str

    def __init__(self, images: str, prompt: str = "Question: {} Short answer:", generation: dict | None = None,
                 batch_size: Count = 16, limit: Count | None = None, lemmatiser: str = "none", max_words: Count = 50,
                 clean_question: bool = True):
        if prompt.count("{}") != 1:
            raise UserError(f"prompt={prompt!r} must hold exactly one {{}} where the question goes")
        self.images = images
        self.prompt = prompt
        self.generation = dict(DEFAULT_GENERATION if generation is None else generation)
        self.batch_size = batch_size
        self.limit = limit
        self.lemmatiser = make_lemmatiser(lemmatiser)
        self.max_words = max_words
        self.clean_question = clean_question
        self.info: dict[str, str] = {}

    @abstractmethod
    def samples(self) -> list[VQASample]:
        """Every question of the split, in file order."""

    def answer(self, adapter: GeneratesFromImages, samples: list[VQASample]) -> list[dict]:
        """Result rows {"question_id", "answer"}, the answers lemmatised if configured."""
        results = []
        starts = range(0, len(samples), self.batch_size)
        for i in track(starts, f"{dataset_info(self.dataset).name} answers", total=len(starts)):
            batch = samples[i : i + self.batch_size]
            prompts = [self.prompt.format(self.question_text(s.question)) for s in batch]
            answers = adapter.generate(open_batch([s.image for s in batch]), prompts, **self.generation)
            if len(answers) != len(batch):
                raise UserError(f"{type(adapter).__name__}.generate gave {len(answers)} answers for {len(batch)} "
                                f"questions")
            if self.lemmatiser is not None:
                answers = self.lemmatiser(list(answers))
            results.extend({"question_id": s.question_id, "answer": a} for s, a in zip(batch, answers, strict=True))
        return results

    def question_text(self, question: str) -> str:
        """LAVIS's blip_question, or the question as the dataset writes it (LLaVA's protocol)."""
        return blip_question(question, self.max_words) if self.clean_question else question

    def read(self) -> list[VQASample]:
        """The evaluated questions (the first `limit`), their images checked to exist."""
        samples = self.samples()[: self.limit]
        if not samples:
            raise UserError(f"the {dataset_info(self.dataset).name} files hold no questions")
        check_images(samples, self.dataset, self.images)
        return samples


    @torch.no_grad()
    def answered_split(self, adapter: GeneratesFromImages) -> tuple[list[VQASample], list[dict]]:
        """The evaluated questions and their result rows."""
        samples = self.evaluated
        if self.lemmatiser is not None:
            self.info["lemmatiser"] = self.lemmatiser.name
        return samples, self.answer(adapter, samples)


class VQAAccuracy(GenerativeVQA):
    """VQAv2, OK-VQA or TextVQA VQA accuracy (see the module docstring); `output` optionally keeps the
    result file [{"question_id", "answer"}]; `ocr` (TextVQA only): LLaVA's question file with the
    OCR tokens."""

    def __init__(self, dataset: str, annotations: str, images: str, questions: str | None = None,
                 normaliser: str = "lavis", output: str | None = None, ocr: str | None = None, **protocol: Any):
        if normaliser not in NORMALISERS:
            raise UserError(f"normaliser={normaliser!r} is unknown; use one of {', '.join(NORMALISERS)}")
        if dataset not in ("vqav2", "okvqa", "textvqa"):
            raise UserError(f"dataset={dataset!r}: VQA accuracy is for vqav2, okvqa or textvqa (GQA has GQAAccuracy)")
        if ocr and dataset != "textvqa":
            raise UserError(f"ocr={ocr!r} is TextVQA's (LLaVA's question file with OCR tokens); leave it null for "
                            f"{dataset}")
        self.dataset = dataset
        super().__init__(images, **protocol)
        self.annotations = annotations
        self.questions = questions
        self.normaliser = normaliser
        self.output = output
        self.ocr = ocr

    def samples(self) -> list[VQASample]:
        if self.dataset == "textvqa":
            return read_textvqa(self.annotations, self.images, self.ocr)
        return read_vqa(self.dataset, self.images, self.questions, self.annotations)

    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        samples, results = self.answered_split(adapter)
        self.info["normaliser"] = self.normaliser
        if self.ocr:
            self.info["ocr"] = self.ocr
        if self.output:
            write_json(Path(self.output).expanduser(), results)
            self.info["result_file"] = str(Path(self.output).expanduser())
        return vqa_accuracy(samples, results, self.normaliser)


class VQASubmission(GenerativeVQA):
    """A split without public answers (VQAv2 test-dev): writes the evaluation server's result file
    [{"question_id", "answer"}] into `output_dir` as <questions file stem>_<digest>_results.json
    (digest of its content, so reruns with the same answers reuse the name) and reports only
    `answered`, the number of questions answered: the accuracy comes from the server (EvalAI).
    `answers: evalai` uploads them through the EvalAI answer processor, as LLaVA's
    convert_vqav2_for_submission.py does; `raw` as generated (LAVIS)."""

    ANSWERS = ("raw", "evalai")

    def __init__(self, questions: str, images: str, output_dir: str, dataset: str = "vqav2", answers: str = "raw",
                 **protocol: Any):
        dataset_info(dataset)
        if answers not in self.ANSWERS:
            raise UserError(f"answers={answers!r} is unknown; use one of {', '.join(self.ANSWERS)}")
        self.dataset = dataset
        super().__init__(images, **protocol)
        self.questions = questions
        self.output_dir = output_dir
        self.processed = answers == "evalai"

    def samples(self) -> list[VQASample]:
        return read_vqa(self.dataset, self.images, questions=self.questions, with_answers=False)

    def result_file(self, results: list[dict]) -> Path:
        digest = hashlib.sha1(json.dumps(results).encode()).hexdigest()[:10]
        stem = Path(self.questions).stem.removesuffix("_questions")
        return Path(self.output_dir).expanduser() / f"{stem}_{digest}_results.json"

    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        samples, results = self.answered_split(adapter)
        answers_by_question(samples, results)
        if self.processed:
            results = [{**row, "answer": evalai_answer(row["answer"])} for row in results]
        path = self.result_file(results)
        write_json(path, results)
        self.info["result_file"] = str(path)
        partial = f" (a subset: limit={self.limit}; the server expects every question)" if self.limit else ""
        log.info("wrote the %s result file for the evaluation server: %s%s", dataset_info(self.dataset).name,
                 path, partial)
        return {"answered": float(len(results))}


class GQAAccuracy(GenerativeVQA):
    """GQA exact-match accuracy (test-dev balanced); `output` optionally keeps the predictions in the
    official GQA eval's format [{"questionId", "prediction"}]."""

    dataset = "gqa"

    def __init__(self, questions: str, images: str, normaliser: str = "lavis", output: str | None = None,
                 **protocol: Any):
        if normaliser not in GQA_NORMALISERS:
            raise UserError(f"normaliser={normaliser!r} is unknown for GQA; use one of {', '.join(GQA_NORMALISERS)}")
        super().__init__(images, **protocol)
        self.questions = questions
        self.normaliser = normaliser
        self.output = output

    def samples(self) -> list[VQASample]:
        return read_gqa(self.questions, self.images)

    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        samples, results = self.answered_split(adapter)
        self.info["normaliser"] = self.normaliser
        if self.output:
            write_json(Path(self.output).expanduser(),
                       [{"questionId": r["question_id"], "prediction": r["answer"]} for r in results])
            self.info["result_file"] = str(Path(self.output).expanduser())
        return gqa_accuracy(samples, results, self.normaliser)
