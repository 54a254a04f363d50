"""The VQA protocols (VQAv2, OK-VQA, GQA, test-dev submission) with a stub adapter whose answers we
set, their configs, and a tiny BLIP-2 run through the runner."""

import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from ecoflap_exp.data.vqa import read_vqa
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.vqa import GQAAccuracy, VQAAccuracy, VQASubmission
from ecoflap_exp.evals.vqa_scoring import (
    vqa_accuracy,
)
from ecoflap_exp.models.blip_text import blip_question
from ecoflap_exp.runner import run
from tests.fixtures import write_caption_pairs
from tests.fixtures_vqa import VQAV2_TESTDEV, VQAV2_VAL, write_gqa, write_vqa, write_vqa_testdev
from tests.integration.test_run import config

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Question: {} Short answer:"


def test_missing_images_are_reported_before_generating(tmp_path):
    files = write_vqa(tmp_path)
    (files["images"] / "val2014" / "COCO_val2014_000000393225.jpg").unlink()
    stub = StubVQA({})
    evaluation = VQAAccuracy("vqav2", str(files["annotations"]), str(files["images"]), str(files["questions"]))
    with pytest.raises(UserError, match=r"2 of 4 VQAv2 images are missing \(first: .*COCO_val2014_000000393225.jpg\)"
                                        r"; put the COCO 2014 images"):
        evaluation.evaluate(stub)
    assert stub.calls == []


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
    assert record.achieved.overall == pytest.approx(0.5, abs=2e-3)
    metrics = record.metrics
    assert record.eval_info["vqav2"] == {"normaliser": "lavis", "result_file": str(output)}
    assert record.eval_info["okvqa"]["lemmatiser"] == "lemminflect"
    assert metrics["vqav2_testdev/answered"] == 3.0
    assert {"vqav2/accuracy", "vqav2/accuracy_yes_no", "vqav2/accuracy_number", "vqav2/accuracy_other",
            "okvqa/accuracy", "gqa/accuracy"} <= set(metrics)
    assert all(0.0 <= v <= 100.0 for k, v in metrics.items() if "accuracy" in k)
    # the recorded accuracy is the one the written answers score
    samples = read_vqa("vqav2", str(vqa_files["images"]), str(vqa_files["questions"]), str(vqa_files["annotations"]))
    assert vqa_accuracy(samples, json.loads(output.read_text()))["accuracy"] == pytest.approx(metrics["vqav2/accuracy"])
    submitted = (tmp_path / "results" / "vqav2_testdev").glob("v2_OpenEnded_mscoco_test-dev2015_*_results.json")
    assert len(json.loads(next(submitted).read_text())) == 3
