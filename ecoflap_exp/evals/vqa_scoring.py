"""VQA and GQA scoring: the answer normalisation (identical in the official VQA script and LAVIS)
and the metrics.

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
- `evalai` (LLaVA's TextVQA evaluator, llava/eval/m4c_evaluator.py, and lmms-eval's): the EvalAI
  answer processor (`evalai_answer`) on the prediction and on every ground-truth answer, always.
- `evalai_official` (LLaVA's VQAv2: the upload holds EvalAI-processed predictions, the server scores
  them with the official evaluation): `official` applied to the processed prediction.
GQA: exact match, 100 * mean. `normaliser: lavis` (default, for parity with ECoFLaP's numbers)
normalises only the prediction, as LAVIS's GQATask (and ECoFLaP's copy of it) does, so an answer
such as "t-shirt" can never be matched there; `both` normalises prediction and answer with
processPunctuation + processDigitArticle; `llava` compares `prediction.rstrip('.').lower()` with
the answer as written (LLaVA's convert_gqa_for_eval.py, then GQA's eval.py).

A result set that does not answer every evaluated question is an error (a question answered twice
keeps its first answer, as LAVIS's de-duplication).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ecoflap_exp.data.vqa import VQASample
from ecoflap_exp.errors import UserError

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# the original pattern "(?!<=\d)(\.)(?!\d)" mistypes its lookbehind as a lookahead that always
# holds, so it removes every period not followed by a digit ("2.5" keeps its period); the scripts
# pass re.UNICODE (32) where sub() takes its count, so at most 32 go
PERIOD = re.compile(r"\.(?!\d)")
PERIODS_REMOVED = int(re.UNICODE)
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
    a digit,comma,digit group), else replaced by a space; then the first 32 periods not before a
    digit go."""
    out = text
    delete_all = DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        out = out.replace(mark, "" if delete_all or mark + " " in text or " " + mark in text else " ")
    return PERIOD.sub("", out, count=PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """Lower-case, number words -> digits, drop articles, restore contractions' apostrophes."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalise(text: str) -> str:
    return process_digit_article(process_punctuation(text))


def evalai_answer(text: str) -> str:
    """The EvalAI answer processor (LLaVA's m4c_evaluator.py, from mmf): lower-case, delete every ","
    and "?", split "'s" off its word, then the official steps (whitespace, punctuation, numbers,
    articles, contractions)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalise(clean(text))


NORMALISERS = ("lavis", "official", "evalai", "evalai_official")


def question_accuracy(prediction: str, answers: Sequence[str], normaliser: str = "lavis") -> float:
    """VQA accuracy of one prediction against its ground-truth entries (leave one entry out)."""
    if normaliser == "lavis":
        prediction = normalise(clean(prediction))
        truth = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    elif normaliser in ("official", "evalai_official"):
        prediction = clean(evalai_answer(prediction) if normaliser == "evalai_official" else prediction)
        truth = [clean(a) for a in answers]
        if len(set(truth)) > 1:
            truth = [normalise(a) for a in truth]
            prediction = normalise(prediction)
    elif normaliser == "evalai":
        prediction = evalai_answer(prediction)
        truth = [evalai_answer(a) for a in answers]
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


GQA_NORMALISERS = ("both", "lavis", "llava")


def gqa_match(prediction: str, answer: str, normaliser: str) -> bool:
    if normaliser == "llava":
        return prediction.rstrip(".").lower() == answer
    return normalise(prediction) == (answer if normaliser == "lavis" else normalise(answer))


def gqa_accuracy(samples: Sequence[VQASample], results: Sequence[dict], normaliser: str = "lavis") -> dict[str, float]:
    """100 * share of exact matches after normalisation (`both` sides, the prediction only: `lavis`,
    or LLaVA's trailing periods and case: `llava`)."""
    if normaliser not in GQA_NORMALISERS:
        raise UserError(f"normaliser={normaliser!r} is unknown for GQA; use one of {', '.join(GQA_NORMALISERS)}")
    answers = answers_by_question(samples, results)
    correct = [gqa_match(answers[s.question_id], s.answers[0], normaliser) for s in samples]
    return {"accuracy": 100.0 * sum(correct) / len(correct)}
