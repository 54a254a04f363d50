"""VQAv2 / OK-VQA / GQA: readers on the released formats, answer normalisation, VQA accuracy under
both normalisers, lemmatisation, and the BLIP-2 protocol with a stub adapter whose answers we set."""

import importlib.machinery
import json
import re
import sys
import types
from pathlib import Path

import pytest
from fixtures import write_caption_pairs
from fixtures_vqa import OKVQA_VAL, VQAV2_TESTDEV, VQAV2_VAL, write_gqa, write_vqa, write_vqa_testdev
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from test_run import config

from ecoflap_exp.data.vqa import VQASample, read_gqa, read_vqa
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.lemmatise import LemminflectLemmatiser, make_lemmatiser
from ecoflap_exp.evals.vqa import GQAAccuracy, VQAAccuracy, VQASubmission
from ecoflap_exp.evals.vqa_scoring import (
    evalai_answer,
    gqa_accuracy,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    vqa_accuracy,
)
from ecoflap_exp.models.blip_text import blip_question
from ecoflap_exp.runner import run

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Question: {} Short answer:"


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


def test_blip_question_processor():
    assert blip_question('What is "this" (thing)?!  ') == "what is this thing?"
    assert blip_question("Hi: A.B; c~d#e*f") == "hi ab cdef"
    assert blip_question(" ".join(["w"] * 60)) == " ".join(["w"] * 50)


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


@pytest.mark.parametrize(("answer", "expected"), [
    ("skiing", "ski"), ("dogs", "dog"), ("men", "man"), ("puppies.", "puppy."), ("teddy bears", "teddy bear"),
    ("is", "is"),            # AUX reading: kept, as spaCy keeps auxiliaries
    ("red", "red"), ("2", "2"), ("frisbee", "frisbee"),  # no noun/verb change, or unknown: kept
    ("running", "running"),  # a noun reading wins over the verb (spaCy, with context, might say "run")
    ("surfing board", "surf board"),
])
def test_lemminflect_lemmatiser(answer, expected):
    assert LemminflectLemmatiser()([answer]) == [expected]


def fake_spacy(monkeypatch, tagged):
    """A spacy module whose en_core_web_sm tags by a table: word -> (pos, lemma)."""
    token = types.SimpleNamespace

    def nlp_pipe(texts):
        return [[token(text=w, pos_=tagged[w][0], lemma_=tagged[w][1]) for w in t.split()] for t in texts]

    module = types.ModuleType("spacy")
    module.__spec__ = importlib.machinery.ModuleSpec("spacy", None)  # an installed module, to find_spec
    module.load = lambda name: types.SimpleNamespace(pipe=nlp_pipe) if name == "en_core_web_sm" else None
    monkeypatch.setitem(sys.modules, "spacy", module)


def test_spacy_lemmatiser_replaces_nouns_and_verbs_only(monkeypatch):
    """LAVIS's _lemmatize: `token.lemma_ if token.pos_ in ["NOUN", "VERB"] else token.text`, joined by spaces."""
    fake_spacy(monkeypatch, {"dogs": ("NOUN", "dog"), "running": ("VERB", "run"), "are": ("AUX", "be"),
                             "red": ("ADJ", "red"), "Leaves": ("NOUN", "leaf")})
    lemmatiser = make_lemmatiser("spacy")
    assert lemmatiser.name == "spacy"
    assert lemmatiser(["dogs are running", "red Leaves"]) == ["dog are run", "red leaf"]


def test_spacy_lemmatiser_never_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(UserError, match=r'lemmatiser=spacy .* needs spacy, which is not installed; pip install '
                                        r'"ecoflap_exp\[okvqa\]"'):
        make_lemmatiser("spacy")
    fake_spacy(monkeypatch, {})
    sys.modules["spacy"].load = lambda name: (_ for _ in ()).throw(OSError(f"[E050] Can't find model '{name}'"))
    with pytest.raises(UserError, match="needs spaCy's en_core_web_sm model .*E050.*lemmatiser=lemminflect"):
        make_lemmatiser("spacy")
    assert make_lemmatiser("lemminflect").name == "lemminflect"
    assert make_lemmatiser("none") is None
    with pytest.raises(UserError, match="lemmatiser='auto' is unknown"):
        make_lemmatiser("auto")


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


def test_missing_images_are_reported_before_generating(tmp_path):
    files = write_vqa(tmp_path)
    (files["images"] / "val2014" / "COCO_val2014_000000393225.jpg").unlink()
    stub = StubVQA({})
    evaluation = VQAAccuracy("vqav2", str(files["annotations"]), str(files["images"]), str(files["questions"]))
    with pytest.raises(UserError, match=r"2 of 4 VQAv2 images are missing \(first: .*COCO_val2014_000000393225.jpg\)"
                                        r"; put the COCO 2014 images"):
        evaluation.evaluate(stub)
    assert stub.calls == []


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


class StubVQA:
    """Answers each prompt from a table; records what the eval handed it."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.calls: list[tuple[int, dict]] = []

    def generate(self, images, prompts, **generation):
        assert all(isinstance(i, Image.Image) and i.mode == "RGB" and i.size == (32, 24) for i in images)
        self.calls.append((len(prompts), generation))
        return [self.answers[p] for p in prompts]


# VQAv2 fixture answers and their hand-worked scores (see fixtures_vqa.VQAV2_VAL):
VQAV2_ANSWERS = {
    PROMPT.format("where is he looking?"): "at table",    # 3 of 10 GT -> 0.9 (both)
    PROMPT.format("how many dogs are there?"): "two",     # GT all "2": lavis 1.0, official 0.0
    PROMPT.format("is this a kitchen?"): "Yes.",          # 9 x "yes" -> 1.0 (both)
    PROMPT.format("what color is the car?"): "red",       # 2 x "red" -> 0.6 (both)
}


def test_protocol_with_a_stub_gives_the_hand_worked_accuracy(tmp_path):
    files = write_vqa(tmp_path)
    stub = StubVQA(VQAV2_ANSWERS)
    output = tmp_path / "out" / "val_results.json"
    lavis = VQAAccuracy("vqav2", str(files["annotations"]), str(files["images"]), str(files["questions"]),
                        batch_size=3, output=str(output)).evaluate(stub)
    # (0.9 + 1.0 + 1.0 + 0.6) / 4 = 87.5; other: (0.9 + 0.6) / 2; number 1.0; yes/no 1.0
    assert lavis == pytest.approx({"accuracy": 87.5, "accuracy_other": 75.0, "accuracy_number": 100.0,
                                   "accuracy_yes_no": 100.0})
    assert stub.calls == [(3, {"num_beams": 5, "max_new_tokens": 10, "min_length": 1, "length_penalty": -1.0}),
                          (1, {"num_beams": 5, "max_new_tokens": 10, "min_length": 1, "length_penalty": -1.0})]
    assert json.loads(output.read_text()) == [{"question_id": r[0], "answer": VQAV2_ANSWERS[PROMPT.format(
        blip_question(r[2]))]} for r in VQAV2_VAL]
    official = VQAAccuracy("vqav2", str(files["annotations"]), str(files["images"]), str(files["questions"]),
                           normaliser="official").evaluate(stub)
    # (0.9 + 0.0 + 1.0 + 0.6) / 4 = 62.5
    assert official == pytest.approx({"accuracy": 62.5, "accuracy_other": 75.0, "accuracy_number": 0.0,
                                      "accuracy_yes_no": 100.0})
    from_list = VQAAccuracy("vqav2", str(files["lavis"]), str(files["images"])).evaluate(stub)
    assert from_list == pytest.approx({"accuracy": 87.5})  # LAVIS's list has no answer types
    # limit: the first two questions, scored on their own: (0.9 + 1.0) / 2
    limited = VQAAccuracy("vqav2", str(files["annotations"]), str(files["images"]), str(files["questions"]),
                          limit=2, generation={"num_beams": 1}).evaluate(stub)
    assert limited == pytest.approx({"accuracy": 95.0, "accuracy_other": 90.0, "accuracy_number": 100.0})
    assert stub.calls[-1] == (2, {"num_beams": 1})


def test_okvqa_lemmatises_before_scoring(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)
    files = write_vqa(tmp_path, "okvqa")
    stub = StubVQA({PROMPT.format("what winter sport can you do on this?"): "skiing",
                    PROMPT.format("what kind of animal is this?"): "puppies"})
    args = ("okvqa", str(files["annotations"]), str(files["images"]), str(files["questions"]))
    # "skiing" -> "ski" (6 of 10 GT: 1.0), "puppies" -> "puppy" (2 of 10: 0.6): 80.0
    lemmatised = VQAAccuracy(*args, lemmatiser="lemminflect")
    assert lemmatised.evaluate(stub) == pytest.approx({"accuracy": 80.0, "accuracy_other": 80.0})
    assert lemmatised.info["lemmatiser"] == "lemminflect"
    assert VQAAccuracy(*args).evaluate(stub) == pytest.approx({"accuracy": 0.0, "accuracy_other": 0.0})


def test_gqa_protocol_with_a_stub(tmp_path):
    files = write_gqa(tmp_path)
    stub = StubVQA({PROMPT.format("is it overcast?"): "No", PROMPT.format("who is wearing the dress?"): "the woman",
                    PROMPT.format("what is the piece of clothing?"): "t-shirt"})
    output = tmp_path / "gqa_predictions.json"
    # all three match once both sides are normalised; LAVIS's one-sided cleanup (the default, as
    # ECoFLaP's numbers) misses "t-shirt": 2 of 3
    assert GQAAccuracy(str(files["official"]), str(files["images"]), normaliser="both",
                       output=str(output)).evaluate(stub) == pytest.approx({"accuracy": 100.0})
    assert json.loads(output.read_text())[2] == {"questionId": "202225914", "prediction": "t-shirt"}
    assert GQAAccuracy(str(files["lavis"]), str(files["images"])).evaluate(stub) == pytest.approx({"accuracy": 200 / 3})


def test_testdev_writes_the_server_file_and_reports_no_accuracy(tmp_path):
    files = write_vqa_testdev(tmp_path)
    stub = StubVQA({PROMPT.format("what is on the plate?"): "pizza", PROMPT.format("is it sunny?"): "yes",
                    PROMPT.format("how many people?"): "2"})
    evaluation = VQASubmission(str(files["questions"]), str(files["images"]), str(tmp_path / "submit"))
    assert evaluation.evaluate(stub) == {"answered": 3.0}
    written = Path(evaluation.info["result_file"])
    assert written.parent == tmp_path / "submit" and written.name.startswith("v2_OpenEnded_mscoco_test-dev2015_")
    assert json.loads(written.read_text()) == [{"question_id": 1000, "answer": "pizza"},
                                               {"question_id": 1001, "answer": "yes"},
                                               {"question_id": 2000, "answer": "2"}]
    from_list = VQASubmission(str(files["lavis"]), str(files["images"]), str(tmp_path / "submit"))
    assert from_list.evaluate(stub) == {"answered": float(len(VQAV2_TESTDEV))}
    assert json.loads(Path(from_list.info["result_file"]).read_text()) == json.loads(written.read_text())
    # LLaVA uploads its answers through the EvalAI processor (scripts/convert_vqav2_for_submission.py)
    loud = StubVQA({PROMPT.format("what is on the plate?"): "A Pizza.", PROMPT.format("is it sunny?"): "Yes",
                    PROMPT.format("how many people?"): "two"})
    processed = VQASubmission(str(files["questions"]), str(files["images"]), str(tmp_path / "llava"), answers="evalai")
    processed.evaluate(loud)
    assert json.loads(Path(processed.info["result_file"]).read_text()) == [
        {"question_id": 1000, "answer": "pizza"}, {"question_id": 1001, "answer": "yes"},
        {"question_id": 2000, "answer": "2"}]
    with pytest.raises(UserError, match="answers='lower' is unknown"):
        VQASubmission(str(files["questions"]), str(files["images"]), str(tmp_path), answers="lower")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"normaliser": "strict"}, "normaliser='strict' is unknown"),
    ({"prompt": "Question: Short answer:"}, "must hold exactly one {}"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"lemmatiser": "stem"}, "lemmatiser='stem' is unknown"),
])
def test_bad_options_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        VQAAccuracy("vqav2", str(tmp_path / "a.json"), str(tmp_path), **kwargs)


def test_eval_configs_read_the_fixture_layout(tmp_path):
    write_vqa(tmp_path, "vqav2")
    write_vqa(tmp_path, "okvqa")
    write_vqa_testdev(tmp_path)
    write_gqa(tmp_path)
    evals = ["vqav2", "vqav2_testdev", "okvqa", "gqa"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", [f"paths.root={tmp_path}", f"paths.data_root={tmp_path}", "suite=none",
                                 *[f"+eval@evals.{name}={name}" for name in evals]])
    assert cfg.evals.okvqa.lemmatiser == "spacy"  # LAVIS's
    cfg.evals.okvqa.lemmatiser = "lemminflect"  # no spaCy model here
    built = {name: instantiate(cfg.evals[name]) for name in evals}
    answers = {**VQAV2_ANSWERS, PROMPT.format("what winter sport can you do on this?"): "skiing",
               PROMPT.format("what kind of animal is this?"): "dogs", PROMPT.format("is it overcast?"): "no",
               PROMPT.format("who is wearing the dress?"): "woman", PROMPT.format("what is the piece of clothing?"):
               "shirt", PROMPT.format("what is on the plate?"): "pizza", PROMPT.format("is it sunny?"): "yes",
               PROMPT.format("how many people?"): "2"}
    stub = StubVQA(answers)
    assert built["vqav2"].evaluate(stub)["accuracy"] == pytest.approx(87.5)
    assert built["vqav2_testdev"].evaluate(stub) == {"answered": 3.0}
    # "skiing" -> "ski" (1.0), "dogs" -> "dog" (4 of 10: 1.0)
    assert built["okvqa"].evaluate(stub)["accuracy"] == pytest.approx(100.0)
    assert built["gqa"].evaluate(stub) == pytest.approx({"accuracy": 200 / 3})  # "shirt" != "t shirt"
    assert stub.calls[0][1] == {"num_beams": 5, "max_new_tokens": 10, "min_length": 1, "length_penalty": -1.0}


@pytest.mark.slow
def test_vqa_evals_through_the_runner_on_tiny_blip2(tmp_path):
    vqa_files = write_vqa(tmp_path / "data", "vqav2")
    write_vqa(tmp_path / "data", "okvqa")
    write_vqa_testdev(tmp_path / "data")
    write_gqa(tmp_path / "data")
    pairs = write_caption_pairs(tmp_path / "pairs", count=8)
    evals = ["vqav2", "vqav2_testdev", "okvqa", "gqa"]
    output = tmp_path / "vqav2_results.json"
    record = run(config(tmp_path, "model=blip2_t5_tiny", "calib=cc3m", f"calib.annotations={pairs['tsv']}",
                        "calib.num_samples=8", "calib.batch_size=4", "suite=none", "sparsity=0.5",
                        *[f"+eval@evals.{name}={name}" for name in evals], f"evals.vqav2.output={output}",
                        "evals.okvqa.lemmatiser=lemminflect",
                        *[f"evals.{name}.batch_size=4" for name in evals],
                        *[f"evals.{name}.generation.num_beams=1" for name in evals[1:]]))  # vqav2 keeps beam 5
    assert record["achieved"]["overall"] == pytest.approx(0.5, abs=2e-3)
    metrics = record["metrics"]
    assert record["eval_info"]["vqav2"] == {"normaliser": "lavis", "result_file": str(output)}
    assert record["eval_info"]["okvqa"]["lemmatiser"] == "lemminflect"
    assert metrics["vqav2_testdev/answered"] == 3.0
    assert {"vqav2/accuracy", "vqav2/accuracy_yes_no", "vqav2/accuracy_number", "vqav2/accuracy_other",
            "okvqa/accuracy", "gqa/accuracy"} <= set(metrics)
    assert all(0.0 <= v <= 100.0 for k, v in metrics.items() if "accuracy" in k)
    # the recorded accuracy is the one the written answers score
    samples = read_vqa("vqav2", str(vqa_files["images"]), str(vqa_files["questions"]), str(vqa_files["annotations"]))
    assert vqa_accuracy(samples, json.loads(output.read_text()))["accuracy"] == pytest.approx(metrics["vqav2/accuracy"])
    submitted = (tmp_path / "results" / "vqav2_testdev").glob("v2_OpenEnded_mscoco_test-dev2015_*_results.json")
    assert len(json.loads(next(submitted).read_text())) == 3
