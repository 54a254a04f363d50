"""Visual question answering with a generative image-text model (BLIP-2): VQAv2, OK-VQA, GQA.

Protocol (LAVIS's BLIP-2 zero-shot evaluation, as ECoFLaP ran it): each question goes through
LAVIS's `blip_question` processor (lower-case; delete . ! " ( ) * # : ; ~; strip trailing spaces;
keep the first 50 words) into the prompt "Question: {} Short answer:", and
`adapter.generate(images, prompts, **generation)` answers a batch with beam search (num_beams 5,
max_new_tokens 10, min_length 1, length_penalty -1 by default). OK-VQA lemmatises the answers
before scoring (nouns and verbs -> lemma), as LAVIS's `apply_lemmatizer`.

VQA accuracy (VQAv2, OK-VQA): per question, for each of the n (10) ground-truth entries, drop that
one entry and count the other entries equal to the prediction, acc_i = min(1, matches / 3); the
question scores the mean over i (k matching entries: 0, .3, .6, .9, 1 for k = 0..4+). Reported as
100 * mean, overall and per answer type. Two normalisations, which give different numbers:
- `lavis` (default; what BLIP-2 and ECoFLaP report, LAVIS vqa_eval.py): the prediction always gets
  processPunctuation + processDigitArticle; the ground truth gets only processPunctuation, and
  only when its answers are not all identical.
- `official` (GT-Vision-Lab/VQA since 2021): ground truth and prediction both get processPunctuation
  + processDigitArticle, but only when the ground-truth answers are not all identical; otherwise
  the stripped strings are compared as they are.
GQA: exact match, 100 * mean. `normaliser: lavis` (default, for parity with ECoFLaP's numbers)
normalises only the prediction, as LAVIS's GQATask (and ECoFLaP's copy of it) does, so an answer
such as "t-shirt" can never be matched there; `both` normalises prediction and answer with
processPunctuation + processDigitArticle.
VQAv2 test-dev has no public answers: its eval writes the evaluation server's result file
`[{"question_id", "answer"}]` and reports only how many questions it answered.

A result set that does not answer every evaluated question is an error (a question answered twice
keeps its first answer, as LAVIS's de-duplication). `limit` evaluates and scores the first N
questions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from abc import abstractmethod
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import lemminflect
import torch
from PIL import Image

from ecoflap_exp.data.images import open_images
from ecoflap_exp.data.vqa import VQASample, check_images, dataset_info, read_gqa, read_vqa
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import Evaluation
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.blip_text import blip_question
from ecoflap_exp.models.capabilities import GeneratesFromImages
from ecoflap_exp.progress import track

log = logging.getLogger(__name__)

# ---- the VQA answer normalisation (identical in the official script and LAVIS) ----

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# the original pattern "(?!<=\d)(\.)(?!\d)" mistypes its lookbehind as a lookahead that always
# holds, so it removes every period not followed by a digit ("2.5" keeps its period)
PERIOD = re.compile(r"\.(?!\d)")
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
# the scripts' table as released, its oddities included ("somebody'd" -> "somebodyd"; the
# capitalised keys never match, the text being lower-cased first)
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Each listed mark is deleted when it touches a space somewhere in the text (or the text holds
    a digit,comma,digit group), else replaced by a space; then periods not before a digit go."""
    out = text
    delete_all = DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        out = out.replace(mark, "" if delete_all or mark + " " in text or " " + mark in text else " ")
    return PERIOD.sub("", out)


def process_digit_article(text: str) -> str:
    """Lower-case, number words -> digits, drop articles, restore contractions' apostrophes."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalise(text: str) -> str:
    return process_digit_article(process_punctuation(text))


NORMALISERS = ("lavis", "official")


def question_accuracy(prediction: str, answers: Sequence[str], normaliser: str = "lavis") -> float:
    """VQA accuracy of one prediction against its ground-truth entries (leave one entry out)."""
    if normaliser == "lavis":
        prediction = normalise(clean(prediction))
        truth = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    elif normaliser == "official":
        prediction = clean(prediction)
        truth = [clean(a) for a in answers]
        if len(set(truth)) > 1:
            truth = [normalise(a) for a in truth]
            prediction = normalise(prediction)
    else:
        raise UserError(f"normaliser={normaliser!r} is unknown; use one of {', '.join(NORMALISERS)}")
    hits = [a == prediction for a in truth]
    k = sum(hits)
    # dropping entry i leaves k - hits[i] matching entries among the others
    return sum(min(1.0, (k - hit) / 3) for hit in hits) / len(hits)


def answers_by_question(samples: Sequence[VQASample], results: Sequence[dict]) -> dict[Any, str]:
    """question id -> answer from result rows {"question_id", "answer"}, checked to answer every
    evaluated question and nothing else; a repeated question keeps its first answer."""
    answers: dict[Any, str] = {}
    for i, row in enumerate(results):
        if not isinstance(row, dict) or not isinstance(row.get("answer"), str) or "question_id" not in row:
            raise UserError(f"result {i} is {row!r}; a result row is {{'question_id': ..., 'answer': str}}")
        answers.setdefault(row["question_id"], row["answer"])
    wanted = {s.question_id for s in samples}
    missing = [s.question_id for s in samples if s.question_id not in answers]
    if missing:
        raise UserError(f"the results answer {len(wanted) - len(missing)} of {len(wanted)} questions (first "
                        f"unanswered: question_id {missing[0]}); every evaluated question needs an answer")
    extra = [q for q in answers if q not in wanted]
    if extra:
        raise UserError(f"the results answer {len(extra)} question(s) outside the evaluated set (first: question_id "
                        f"{extra[0]}); score results against the questions they answer")
    return answers


def type_key(answer_type: str) -> str:
    return "accuracy_" + re.sub(r"\W+", "_", answer_type).strip("_")


def vqa_accuracy(samples: Sequence[VQASample], results: Sequence[dict], normaliser: str = "lavis") -> dict[str, float]:
    """100 * mean VQA accuracy, and per answer type when every sample has one (official files)."""
    if any(not s.answers for s in samples):
        raise UserError("VQA accuracy needs ground-truth answers; this split has none (score it on the server)")
    answers = answers_by_question(samples, results)
    scores = [question_accuracy(answers[s.question_id], s.answers, normaliser) for s in samples]
    metrics = {"accuracy": 100.0 * sum(scores) / len(scores)}
    if all(s.answer_type for s in samples):
        for answer_type in sorted({s.answer_type for s in samples if s.answer_type}):
            typed = [score for s, score in zip(samples, scores, strict=True) if s.answer_type == answer_type]
            metrics[type_key(answer_type)] = 100.0 * sum(typed) / len(typed)
    return metrics


GQA_NORMALISERS = ("both", "lavis")


def gqa_accuracy(samples: Sequence[VQASample], results: Sequence[dict], normaliser: str = "lavis") -> dict[str, float]:
    """100 * share of exact matches after normalisation (`both` sides, or the prediction only: `lavis`)."""
    if normaliser not in GQA_NORMALISERS:
        raise UserError(f"normaliser={normaliser!r} is unknown for GQA; use one of {', '.join(GQA_NORMALISERS)}")
    answers = answers_by_question(samples, results)
    truth = [s.answers[0] if normaliser == "lavis" else normalise(s.answers[0]) for s in samples]
    correct = [normalise(answers[s.question_id]) == t for s, t in zip(samples, truth, strict=True)]
    return {"accuracy": 100.0 * sum(correct) / len(correct)}


# ---- OK-VQA lemmatisation ----

LEMMATISERS = ("auto", "spacy", "lemminflect", "none")


class SpacyLemmatiser:
    """LAVIS's: spaCy en_core_web_sm tags each token; NOUN and VERB tokens become their lemma, the
    others stay as written; tokens are re-joined with single spaces."""

    name = "spacy"

    def __init__(self) -> None:
        try:
            import spacy

            self.nlp = spacy.load("en_core_web_sm")
        except (ImportError, OSError) as err:
            raise UserError(f"lemmatiser=spacy needs spaCy with its en_core_web_sm model ({err}); install them "
                            f"(`pip install spacy` and `python -m spacy download en_core_web_sm`) or use "
                            f"lemmatiser=lemminflect") from None

    def __call__(self, answers: list[str]) -> list[str]:
        return [" ".join(t.lemma_ if t.pos_ in ("NOUN", "VERB") else t.text for t in doc)
                for doc in self.nlp.pipe(answers)]


class LemminflectLemmatiser:
    """Without a tagger: each whitespace-separated word (surrounding punctuation aside, looked up in
    lower case) becomes lemminflect's first NOUN lemma if the word can be a noun, else its first
    VERB lemma, and stays as written if it can be neither or can be an auxiliary (is, has, does,
    can: spaCy tags those AUX and keeps them). Differences from spaCy: no context, so a word that
    can be a noun keeps the noun reading ("running", "leaves" -> "leave") where spaCy may tag it a
    verb, and words are split on spaces only (spaCy splits "don't" into "do n't")."""

    name = "lemminflect"
    WORD = re.compile(r"^(\W*)(.*?)(\W*)$")

    def lemma(self, word: str) -> str:
        head, core, tail = self.WORD.match(word).groups()
        readings = lemminflect.getAllLemmas(core.lower()) if core else {}
        if "AUX" in readings:
            return word
        for pos in ("NOUN", "VERB"):
            if pos in readings:
                return head + readings[pos][0] + tail
        return word

    def __call__(self, answers: list[str]) -> list[str]:
        return [" ".join(self.lemma(w) for w in answer.split()) for answer in answers]


def make_lemmatiser(choice: str) -> SpacyLemmatiser | LemminflectLemmatiser | None:
    """`auto`: spaCy's en_core_web_sm when it loads (LAVIS parity), else lemminflect."""
    if choice not in LEMMATISERS:
        raise UserError(f"lemmatiser={choice!r} is unknown; use one of {', '.join(LEMMATISERS)}")
    if choice == "none":
        return None
    if choice == "lemminflect":
        return LemminflectLemmatiser()
    try:
        return SpacyLemmatiser()
    except UserError:
        if choice == "spacy":
            raise
        log.info("spaCy's en_core_web_sm is not installed: lemmatising answers with lemminflect")
        return LemminflectLemmatiser()


# ---- the protocol ----


def open_batch(paths: list[Path]) -> list[Image.Image]:
    """The batch's images, each file decoded once (VQAv2 asks several questions per image)."""
    unique = list(dict.fromkeys(paths))
    decoded = dict(zip(unique, (image for image, _ in open_images([(p, None) for p in unique], 0.0)), strict=True))
    return [decoded[p] for p in paths]


def write_json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(rows))
    partial.replace(path)


DEFAULT_GENERATION = {"num_beams": 5, "max_new_tokens": 10, "min_length": 1, "length_penalty": -1.0}


class GenerativeVQA(Evaluation):
    """Questions answered by `adapter.generate` with BLIP-2's VQA prompt and decoding.

    `info` holds what the run record should keep beside the float metrics (normaliser, lemmatiser,
    files written)."""

    needs = (GeneratesFromImages,)
    dataset: str

    def __init__(self, images: str, prompt: str = "Question: {} Short answer:", generation: dict | None = None,
                 batch_size: int = 16, limit: int | None = None, lemmatiser: str = "none", max_words: int = 50):
        if prompt.count("{}") != 1:
            raise UserError(f"prompt={prompt!r} must hold exactly one {{}} where the question goes")
        if batch_size < 1 or (limit is not None and limit < 1):
            raise UserError(f"batch_size={batch_size} and limit={limit} must be >= 1 (limit: null for all)")
        self.images = images
        self.prompt = prompt
        self.generation = dict(DEFAULT_GENERATION if generation is None else generation)
        self.batch_size = batch_size
        self.limit = limit
        self.lemmatiser = make_lemmatiser(lemmatiser)
        self.max_words = max_words
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
            prompts = [self.prompt.format(blip_question(s.question, self.max_words)) for s in batch]
            answers = adapter.generate(open_batch([s.image for s in batch]), prompts, **self.generation)
            if len(answers) != len(batch):
                raise UserError(f"{type(adapter).__name__}.generate gave {len(answers)} answers for {len(batch)} "
                                f"questions")
            if self.lemmatiser is not None:
                answers = self.lemmatiser(list(answers))
            results.extend({"question_id": s.question_id, "answer": a} for s, a in zip(batch, answers, strict=True))
        return results

    @cached_property
    def evaluated(self) -> list[VQASample]:
        """The evaluated questions (the first `limit`), their images checked to exist."""
        samples = self.samples()[: self.limit]
        if not samples:
            raise UserError(f"the {dataset_info(self.dataset).name} files hold no questions")
        check_images(samples, self.dataset, self.images)
        return samples

    def check_data(self) -> None:
        self.evaluated  # noqa: B018 - reads and checks the split once

    @torch.no_grad()
    def answered_split(self, adapter: GeneratesFromImages) -> tuple[list[VQASample], list[dict]]:
        """The evaluated questions and their result rows."""
        samples = self.evaluated
        if self.lemmatiser is not None:
            self.info["lemmatiser"] = self.lemmatiser.name
        return samples, self.answer(adapter, samples)

    def lemmatiser_metric(self) -> dict[str, float]:
        """1.0 when spaCy lemmatised (LAVIS parity), 0.0 for the lemminflect fallback."""
        if self.lemmatiser is None:
            return {}
        return {"lemmatiser_spacy": float(self.lemmatiser.name == "spacy")}


class VQAAccuracy(GenerativeVQA):
    """VQAv2 or OK-VQA VQA accuracy (see the module docstring); `output` optionally keeps the
    result file [{"question_id", "answer"}]."""

    def __init__(self, dataset: str, annotations: str, images: str, questions: str | None = None,
                 normaliser: str = "lavis", output: str | None = None, **protocol: Any):
        if normaliser not in NORMALISERS:
            raise UserError(f"normaliser={normaliser!r} is unknown; use one of {', '.join(NORMALISERS)}")
        if dataset not in ("vqav2", "okvqa"):
            raise UserError(f"dataset={dataset!r}: VQA accuracy is for vqav2 or okvqa (GQA has GQAAccuracy)")
        self.dataset = dataset
        super().__init__(images, **protocol)
        self.annotations = annotations
        self.questions = questions
        self.normaliser = normaliser
        self.output = output

    def samples(self) -> list[VQASample]:
        return read_vqa(self.dataset, self.images, self.questions, self.annotations)

    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        samples, results = self.answered_split(adapter)
        self.info["normaliser"] = self.normaliser
        if self.output:
            write_json(Path(self.output).expanduser(), results)
            self.info["result_file"] = str(Path(self.output).expanduser())
        return vqa_accuracy(samples, results, self.normaliser) | self.lemmatiser_metric()


class VQASubmission(GenerativeVQA):
    """A split without public answers (VQAv2 test-dev): writes the evaluation server's result file
    [{"question_id", "answer"}] into `output_dir` as <questions file stem>_<digest>_results.json
    (digest of its content, so reruns with the same answers reuse the name) and reports only
    `answered`, the number of questions answered: the accuracy comes from the server (EvalAI)."""

    def __init__(self, questions: str, images: str, output_dir: str, dataset: str = "vqav2", **protocol: Any):
        dataset_info(dataset)
        self.dataset = dataset
        super().__init__(images, **protocol)
        self.questions = questions
        self.output_dir = output_dir

    def samples(self) -> list[VQASample]:
        return read_vqa(self.dataset, self.images, questions=self.questions, with_answers=False)

    def result_file(self, results: list[dict]) -> Path:
        digest = hashlib.sha1(json.dumps(results).encode()).hexdigest()[:10]
        stem = Path(self.questions).stem.removesuffix("_questions")
        return Path(self.output_dir).expanduser() / f"{stem}_{digest}_results.json"

    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        samples, results = self.answered_split(adapter)
        answers_by_question(samples, results)
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
        return gqa_accuracy(samples, results, self.normaliser) | self.lemmatiser_metric()
