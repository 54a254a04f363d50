"""VQA answer scoring: accuracy by matching annotators, the official, LAVIS, EvalAI and LLaVA
normalisers, GQA exact match."""

from pathlib import Path

import pytest

from ecoflap_exp.data.vqa import VQASample, read_vqa
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.vqa_scoring import (
    evalai_answer,
    gqa_accuracy,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    vqa_accuracy,
)
from tests.fixtures_vqa import write_vqa


def official_leave_one_out(prediction: str, answers: list[str]) -> float:
    """The official loop on answer dicts: drop the one entry equal to it (unique answer_id)."""
    entries = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]
    accs = []
    for entry in entries:
        others = [e for e in entries if e != entry]
        accs.append(min(1.0, sum(e["answer"] == prediction for e in others) / 3))
    return sum(accs) / len(accs)


# 4 x blue, 3 x green, 2 x red, 1 x white: every count of matching annotators, duplicates included
COLOURS = ["blue"] * 4 + ["green"] * 3 + ["red"] * 2 + ["white"]


@pytest.mark.parametrize("normaliser", ["lavis", "official"])
@pytest.mark.parametrize(("prediction", "expected"), [
    ("black", 0.0),   # k=0
    ("white", 0.3),   # k=1: 9 of 10 subsets hold it once -> 9 * (1/3) / 10
    ("red", 0.6),     # k=2: 2 * (1/3) + 8 * (2/3) over 10
    ("green", 0.9),   # k=3: 3 * (2/3) + 7 * 1 over 10 (removing all duplicates at once would give 0.7)
    ("blue", 1.0),    # k=4: every subset keeps >= 3
])
def test_vqa_accuracy_by_number_of_matching_annotators(prediction, expected, normaliser):
    assert question_accuracy(prediction, COLOURS, normaliser) == pytest.approx(expected)
    assert question_accuracy(prediction, COLOURS, normaliser) == pytest.approx(
        official_leave_one_out(prediction, COLOURS))


@pytest.mark.parametrize(("prediction", "answers", "lavis", "official"), [
    # all GT "2": LAVIS normalises the prediction "two" -> "2" (10 matches); the official script
    # leaves both raw when the GT is unanimous: "two" != "2"
    ("two", ["2"] * 10, 1.0, 0.0),
    # all GT "two": LAVIS turns the prediction into "2" but leaves the unanimous GT "two": 0 matches;
    # official compares raw "two" == "two"
    ("two", ["two"] * 10, 0.0, 1.0),
    # 2 x "2", 8 x "two": LAVIS gives the GT punctuation only (2 matches -> 0.6); official maps
    # every GT to "2" (10 matches)
    ("2", ["2"] * 2 + ["two"] * 8, 0.6, 1.0),
    # unanimous "yes": official compares the raw "Yes." (no match); LAVIS normalises it to "yes"
    ("Yes.", ["yes"] * 10, 1.0, 0.0),
    # mixed GT: both normalise the prediction: 9 matches
    ("Yes.", ["yes"] * 9 + ["no"], 1.0, 1.0),
    # LAVIS keeps the GT's articles: "the dog" never equals the prediction "The dog" -> "dog";
    # official strips them from both: 3 matches
    ("The dog", ["the dog"] * 3 + ["puppy"] * 7, 0.0, 0.9),
])
def test_lavis_and_official_normalisers(prediction, answers, lavis, official):
    assert question_accuracy(prediction, answers, "lavis") == pytest.approx(lavis)
    assert question_accuracy(prediction, answers, "official") == pytest.approx(official)


@pytest.mark.parametrize(("text", "expected"), [
    ("t-shirt", "t shirt"),          # mark not next to a space: replaced by a space
    ("yes - no", "yes  no"),         # mark next to a space: deleted
    ("hello, world!", "hello world "),  # "," touches a space: deleted; the final "!" touches none: a space
    ("1,000 (approx)", "1000 approx"),  # a digit,digit group deletes every mark
    ("2.5", "2.5"),                  # a period before a digit stays
    ("end.", "end"),
    ("it's", "it's"),                # apostrophes and colons are not touched
])
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Two Dogs", "2 dogs"), ("the cat", "cat"), ("none", "0"), ("dont know", "don't know"),
    ("an  apple  pie", "apple pie"), ("ten", "10"), ("eleven", "eleven"),
])
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    # outputs of LLaVA's EvalAIAnswerProcessor (llava/eval/m4c_evaluator.py, from mmf) on these inputs
    ("Dakota digital", "dakota digital"), ("No.", "no"), ("yes, it is", "yes it is"), ("100,000", "100000"),
    ("it's a test", "it 's test"), ("The cat's toy", "cat 's toy"), ("Whats up?", "what's up"),
    ("a", ""), ("The", ""), ("(a)", ""), ("A B C", "b c"), ("none", "0"), ("Ten", "10"), ("twenty", "twenty"),
    ("two dogs", "2 dogs"), ("Three.", "3"), ("x - y", "x y"), ("x-y z", "x y z"), ("e-mail", "e mail"),
    ("50/50", "50 50"), ("C++", "c"), ("8:00", "8:00"), ("#1", "#1"), ("50%", "50%"), ("DON'T", "don't"),
    ("Im", "im"), ("3 p.m.", "3 pm"), ("hello... world", "hello world"), ("e.g. the U.S.A.", "eg usa"),
    ("hello\tworld\n", "hello world"), ("  spaced  out  ", "spaced out"), ("wont", "won't"), ("1.5", "1.5"),
    ("$3.99.", "$3.99"), ("New York-City", "new york city"), ("under_score", "under score"),
])
def test_evalai_answer_processor(text, expected):
    assert evalai_answer(text) == expected


def test_evalai_processor_removes_at_most_32_periods():
    """re.UNICODE (32) is passed where Pattern.sub takes its count, in both LLaVA's and the official script."""
    letters = "abcdefghijklmnopqrstuvwxyzabcdefghij"
    assert evalai_answer("".join(c.upper() + "." for c in letters)) == "abcdefghijklmnopqrstuvwxyzabcdefg.h.i.j."


@pytest.mark.parametrize(("prediction", "answers", "scores"), [
    # a capitalised "Yes" against ten "yes": the official script compares the raw strings when the ten
    # agree (0); LLaVA processes every answer (1.0), and its upload is processed before the server's scoring
    ("Yes", ["yes"] * 10, {"official": 0.0, "evalai": 1.0, "evalai_official": 1.0}),
    # "two" against ten "2": only evalai maps the human answers too... they are digits already; the
    # prediction becomes "2" through EvalAI's processor
    ("two", ["2"] * 10, {"official": 0.0, "evalai": 1.0, "evalai_official": 1.0}),
    # human answers written "Two" (unanimous): evalai processes them to "2" like the prediction; the
    # official script compares "2" with the raw "Two"
    ("2", ["Two"] * 10, {"official": 0.0, "evalai": 1.0, "evalai_official": 0.0}),
    # "'s" is split off by EvalAI's processor on both sides; the official one keeps "man's"
    ("man's", ["man's"] * 3 + ["woman"] * 7, {"official": 0.9, "evalai": 0.9, "evalai_official": 0.0}),
])
def test_llavas_normalisers(prediction, answers, scores):
    for normaliser, expected in scores.items():
        assert question_accuracy(prediction, answers, normaliser) == pytest.approx(expected), normaliser


def test_gqa_as_llava_scores_it():
    """convert_gqa_for_eval.py: prediction.rstrip('.').lower(); GQA's eval.py: == the answer as written."""
    pairs = [("Yes.", "yes"), ("T-shirt", "t-shirt"), ("the woman", "woman"), ("Red..", "red"), ("blue ", "blue")]
    samples = gqa_samples(*pairs)
    results = [{"question_id": str(i), "answer": p} for i, (p, _) in enumerate(pairs)]
    assert gqa_accuracy(samples, results, "llava") == pytest.approx({"accuracy": 60.0})


def gqa_samples(*pairs):
    return [VQASample(str(i), "q", Path("x.jpg"), (answer,)) for i, (_, answer) in enumerate(pairs)]


def test_gqa_exact_match_after_cleanup():
    pairs = [("No", "no"), ("the woman", "woman"), ("T-shirt", "t-shirt"), ("2", "two"), ("blue", "red")]
    samples = gqa_samples(*pairs)
    results = [{"question_id": str(i), "answer": p} for i, (p, _) in enumerate(pairs)]
    # both sides normalised: the first four match ("t shirt" == "t shirt", "2" == "2"), "blue" != "red"
    assert gqa_accuracy(samples, results, "both") == pytest.approx({"accuracy": 80.0})
    # LAVIS: raw GT "t-shirt" and "two" can't equal a normalised prediction: 2 of 5
    assert gqa_accuracy(samples, results, "lavis") == pytest.approx({"accuracy": 40.0})


def test_results_must_answer_every_question_and_nothing_else(tmp_path):
    files = write_vqa(tmp_path)
    samples = read_vqa("vqav2", str(files["images"]), str(files["questions"]), str(files["annotations"]))
    results = [{"question_id": s.question_id, "answer": "yes"} for s in samples]
    with pytest.raises(UserError, match="answer 3 of 4 questions .*first unanswered: question_id 262148001"):
        vqa_accuracy(samples, results[:1] + results[2:])
    with pytest.raises(UserError, match="outside the evaluated set .*question_id 7"):
        vqa_accuracy(samples, results + [{"question_id": 7, "answer": "no"}])
    with pytest.raises(UserError, match="result 0 is"):
        vqa_accuracy(samples, [{"question_id": 262148000}])
    # a repeated question keeps its first answer: "yes" on the kitchen question scores 1.0 (9 of 10
    # GT) and 0 elsewhere -> 100 * 1.0 / 4 = 25.0; the later "no" (1 of 10: 0.3 -> 7.5) is ignored
    assert vqa_accuracy(samples, results + [{"question_id": 393225000, "answer": "no"}])["accuracy"] == \
        pytest.approx(25.0)
