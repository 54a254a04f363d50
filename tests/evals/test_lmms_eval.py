"""lmms-eval on the in-memory model, offline: POPE and MME as lmms-eval's own task configs read them,
from tiny local copies of lmms-lab/POPE and lmms-lab/MME in their own schema (DatasetDict.save_to_disk,
given as dataset_dirs). The metrics must equal the ones computed here from the answers the model gave."""

import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.lmms_eval import TASKS, LMMSEval, cut, decoding, metrics_of, resolved
from ecoflap_exp.runner import run
from tests.models.test_chat import make
from tests.test_preflight import checked

ROOT = Path(__file__).resolve().parents[2]
SHORT = "\nAnswer the question using a single word or phrase."
#: lmms-lab/POPE rows: (question, answer, the image's colour)
POPE = [("Is there a dog in the image?", "yes", (200, 0, 0)), ("Is there a cat in the image?", "no", (0, 200, 0)),
        ("Is there a car in the image?", "yes", (0, 0, 200)), ("Is there a bus in the image?", "no", (200, 200, 0)),
        ("Is there a man in the image?", "yes", (0, 200, 200)), ("Is there a cup in the image?", "yes", (90, 90, 90))]
#: lmms-lab/MME rows: (question_id, category, question, answer); each image is asked two questions
MME = [("existence/1.png", "existence", "Is there a dog in this image? Please answer yes or no.", "Yes"),
       ("existence/1.png", "existence", "Is there a cat in this image? Please answer yes or no.", "No"),
       ("existence/2.png", "existence", "Is there a car in this image? Please answer yes or no.", "Yes"),
       ("existence/2.png", "existence", "Is there a bus in this image? Please answer yes or no.", "No"),
       ("code_reasoning/1.png", "code_reasoning", "Is the output of the code 3? Please answer yes or no.", "Yes"),
       ("code_reasoning/1.png", "code_reasoning", "Is the output of the code 4? Please answer yes or no.", "No"),
       ("code_reasoning/2.png", "code_reasoning", "Is the output of the code 5? Please answer yes or no.", "Yes"),
       ("code_reasoning/2.png", "code_reasoning", "Is the output of the code 6? Please answer yes or no.", "No")]


def colour(index: int) -> tuple[int, int, int]:
    return (index * 30, 255 - index * 30, 60)


def save(folder: Path, split: str, rows: dict[str, list]) -> Path:
    """rows (string columns and an `image` column) as lmms-lab's datasets, saved as DatasetDict.save_to_disk does."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({k: datasets.Image() if k == "image" else datasets.Value("string") for k in rows})
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(folder))
    return folder


def write_pope(folder: Path) -> Path:
    return save(folder, "test", {"id": [str(i) for i in range(len(POPE))],
                                 "question_id": [str(i + 1) for i in range(len(POPE))],
                                 "question": [q for q, _, _ in POPE], "answer": [a for _, a, _ in POPE],
                                 "image_source": [f"COCO_val2014_{i:012d}" for i in range(len(POPE))],
                                 "image": [Image.new("RGB", (40, 48), c) for _, _, c in POPE],
                                 "category": ["adversarial"] * len(POPE)})


def write_mme(folder: Path) -> Path:
    return save(folder, "test", {"question_id": [q for q, _, _, _ in MME],
                                 "image": [Image.new("RGB", (40, 48), colour(i // 2)) for i in range(len(MME))],
                                 "question": [q for _, _, q, _ in MME], "answer": [a for _, _, _, a in MME],
                                 "category": [c for _, c, _, _ in MME]})


def pope_metrics(answers: list[str], truths: list[str]) -> dict[str, float]:
    """POPE's metrics as its paper defines them from yes/no answers (an answer neither yes nor no is wrong)."""
    pairs = [(a.lower().strip(), t) for a, t in zip(answers, truths, strict=True)]
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision, recall = (tp / (tp + fp) if tp + fp else 0), (tp / (tp + fn) if tp + fn else 0)
    return {"pope/pope_accuracy": sum(p == t for p, t in pairs) / len(pairs), "pope/pope_precision": precision,
            "pope/pope_recall": recall,
            "pope/pope_f1_score": 2 * precision * recall / (precision + recall) if precision + recall else 0,
            "pope/pope_yes_ratio": sum(t == "yes" for _, t in pairs) / len(pairs)}


def mme_scores(answers: list[str], rows: list[tuple[str, str, str, str]]) -> dict[str, float]:
    """MME's scores: per category, the mean over images of accuracy + accuracy+ (both questions right), in
    percent; perception and cognition each the sum over its categories, reported where any is present."""
    right: dict[str, dict[str, list[bool]]] = {}
    for answer, (qid, category, _, truth) in zip(answers, rows, strict=True):
        right.setdefault(category, {}).setdefault(qid, []).append(answer.lower().strip(" .") == truth.lower())
    per_category = {c: sum(100 * sum(r) / len(r) + 100 * all(r) for r in by_image.values()) / len(by_image)
                    for c, by_image in right.items()}
    groups = {"mme/mme_perception_score": "existence", "mme/mme_cognition_score": "code_reasoning"}
    return {metric: per_category[category] for metric, category in groups.items() if category in per_category}


class Scripted:
    """A GeneratesFromImages model that answers each prompt as scripted, and records what it was given."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.seen: list[tuple[tuple[int, ...], str, dict]] = []

    def generate(self, images, prompts, **settings):
        self.seen += [(image.getpixel((0, 0)), prompt, settings) for image, prompt in zip(images, prompts, strict=True)]
        return [self.answers[prompt] for prompt in prompts]


def test_metrics_are_those_of_the_answers_given_to_each_document(tmp_path):
    pytest.importorskip("lmms_eval")
    dirs = {"pope": str(write_pope(tmp_path / "pope")), "mme": str(write_mme(tmp_path / "mme"))}
    pope_answers = ["Yes", "yes", "No", "No", "Maybe", " YES\n\nbecause it is there"]
    mme_answers = ["Yes", "No", "No", "No", "yes.", "Maybe", "No", "Yes"]
    model = Scripted({**{q + SHORT: a for (q, _, _), a in zip(POPE, pope_answers, strict=True)},
                      **{q.replace(" Please answer yes or no.", "") + SHORT: a
                         for (_, _, q, _), a in zip(MME, mme_answers, strict=True)}})
    ev = LMMSEval(["pope", "mme"], dataset_dirs=dirs, batch_size=4, include_defaults=False, bootstrap_iters=0)
    metrics = ev.evaluate(model)
    # the last POPE answer is cut at the task's stop string ("\n\n", lmms-eval's default) before scoring
    expected = {**pope_metrics([cut(a, ["\n\n"]) for a in pope_answers], [a for _, a, _ in POPE]),
                **mme_scores(mme_answers, MME)}
    assert metrics == pytest.approx(expected)
    assert 0 < metrics["pope/pope_precision"] < 1 and 0 < metrics["mme/mme_cognition_score"] < 200
    # each document's own image went with its own question, in batches of at most four of one task
    assert sorted((c, p) for c, p, _ in model.seen if p.startswith("Is there a") and "this" not in p) == sorted(
        (c, q + SHORT) for q, _, c in POPE)
    assert {(c, p.removesuffix(SHORT)) for c, p, _ in model.seen if p.startswith("Is the output")} == {
        (colour(i // 2), q.replace(" Please answer yes or no.", "")) for i, (_, _, q, _) in enumerate(MME) if i >= 4}
    assert {str(s) for _, _, s in model.seen} == {str({"max_new_tokens": 128, "num_beams": 1}),
                                                  str({"max_new_tokens": 16, "num_beams": 1})}
    full = ev.info["results"]
    assert full["results"]["pope"]["pope_accuracy,none"] == metrics["pope/pope_accuracy"]
    assert full["configs"]["mme"]["dataset_path"] == dirs["mme"] and full["configs"]["pope"]["test_split"] == "test"
    assert full["n-samples"] == {"pope": {"original": 6, "effective": 6}, "mme": {"original": 8, "effective": 8}}
    assert "samples" not in full


def test_the_tiny_llava_answers_through_its_own_generation(tmp_path):
    """The chat VLM's own `generate` (its processor and chat template) answers every request; `limit`
    documents per task, gen_kwargs over the task's own."""
    pytest.importorskip("lmms_eval")
    adapter = make("llava_tiny")
    calls = []
    generate = adapter.generate

    def spy(images, prompts, **settings):
        answers = generate(images, prompts, **settings)
        calls.append((images, prompts, settings, answers))
        return answers

    adapter.generate = spy
    dirs = {"pope": str(write_pope(tmp_path / "pope")), "mme": str(write_mme(tmp_path / "mme"))}
    ev = LMMSEval(["pope", "mme"], dataset_dirs=dirs, limit=4, batch_size=3, gen_kwargs={"max_new_tokens": 2},
                  include_defaults=False, bootstrap_iters=0)
    metrics = ev.evaluate(adapter)
    prompts = [p for _, ps, _, _ in calls for p in ps]
    answers = dict(zip(prompts, [a for *_, answers in calls for a in answers], strict=True))
    assert sorted(prompts) == sorted([q + SHORT for q, _, _ in POPE[:4]] +
                                     [q.replace(" Please answer yes or no.", "") + SHORT for _, _, q, _ in MME[:4]])
    assert [len(images) for images, *_ in calls] == [3, 1, 3, 1]
    assert all(s == {"max_new_tokens": 2, "num_beams": 1} for _, _, s, _ in calls)
    given = {p: image.getpixel((0, 0)) for images, ps, _, _ in calls for image, p in zip(images, ps, strict=True)}
    assert given == {**{q + SHORT: c for q, _, c in POPE[:4]},
                     **{q.replace(" Please answer yes or no.", "") + SHORT: colour(i // 2)
                        for i, (_, _, q, _) in enumerate(MME[:4])}}
    assert metrics == pytest.approx({
        **pope_metrics([cut(answers[q + SHORT], ["\n\n"]) for q, _, _ in POPE[:4]], [a for _, a, _ in POPE[:4]]),
        **mme_scores([cut(answers[q.replace(" Please answer yes or no.", "") + SHORT], ["\n\n"])
                      for _, _, q, _ in MME[:4]], MME[:4]),
    })
    assert ev.info["results"]["n-samples"]["mme"] == {"original": 8, "effective": 4}


def test_decoding_settings_and_stop_strings():
    assert decoding("textvqa_val", {"until": ["ASSISTANT:"], "do_sample": False}) == ({"max_new_tokens": 128},
                                                                                      ["ASSISTANT:"])
    assert decoding("mme", {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "until": "\n"}) == (
        {"max_new_tokens": 16, "num_beams": 1}, ["\n"])
    with pytest.raises(UserError, match=r"task x samples its answers .*gen_kwargs=\{temperature: 0"):
        decoding("x", {"temperature": 0.7})
    assert cut("Yes ASSISTANT: no\n\nmore", ["ASSISTANT:", "\n\n"]) == "Yes"
    assert cut(" No ", []) == "No"


def test_only_the_metrics_stderrs_are_flattened():
    results = {"pope": {"alias": "pope", "pope_accuracy,none": 0.5, "pope_accuracy_stderr,none": "N/A",
                        "pope_accuracy_stderr_clt,none": 0.2, "pope_accuracy_stderr_clustered,none": "N/A"},
               "textvqa_val": {"exact_match,none": 0.25, "exact_match_stderr,none": 0.1, "submission,none": None}}
    assert metrics_of(results) == {"pope/pope_accuracy": 0.5, "textvqa_val/exact_match": 0.25,
                                   "textvqa_val/exact_match_stderr": 0.1}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_builtin_task_config_is_one_lmms_eval_takes(task):
    """Each function the table names exists in the installed task code, and lmms-eval's TaskConfig takes it."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.task import TaskConfig

    config = TaskConfig(**resolved(TASKS[task]), task=task)
    assert callable(config.doc_to_visual) and callable(config.doc_to_text)
    assert all(isinstance(m["aggregation"], str) or callable(m["aggregation"]) for m in config.metric_list)


def test_a_missing_dataset_stops_the_run_before_any_model_loads(tmp_path):
    pytest.importorskip("lmms_eval")
    pope = write_pope(tmp_path / "pope")
    cfg = [f"paths.root={tmp_path}", "device=cpu", "model=llava_tiny", "+eval@evals.lmms_eval=lmms_eval",
           "evals.lmms_eval.tasks=[pope,mme]", "evals.lmms_eval.include_defaults=false"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        absent = compose("config", [*cfg, f"evals.lmms_eval.dataset_dirs={{pope: {pope}, mme: {tmp_path}/absent}}"])
    with pytest.raises(UserError, match=r"dataset_dirs.mme=.*absent is not a folder written by DatasetDict.save_to_"
                                        r"disk; .*datasets.load_dataset\('lmms-lab/MME'\).save_to_disk"):
        checked(absent)


def write_task(folder: Path, name: str, dataset: str, output_type: str = "generate_until") -> Path:
    """A task YAML of one's own (include_path) on POPE-shaped documents."""
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n{dataset}\ntest_split: test\noutput_type: {output_type}\n"
        "doc_to_visual: !function lmms_eval.tasks.pope.utils.pope_doc_to_visual\ndoc_to_text: question\n"
        "doc_to_target: answer\n")
    return folder


def test_a_dataset_neither_local_nor_cached_names_its_task_and_the_fix(tmp_path, monkeypatch):
    pytest.importorskip("lmms_eval")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # lmms-eval retries a download 5 times, 2 s apart
    tasks = write_task(tmp_path / "tasks", "absent", "dataset_path: ecoflap-tests/no-such-dataset")
    with pytest.raises(UserError, match=r"dataset of task absent could not be loaded from ecoflap-tests/no-such-"
                                        r"dataset \(HF hub or cache\) .*HF_HUB_OFFLINE=0 .*"
                                        r"dataset_dirs.absent=<folder>"):
        LMMSEval(["absent"], include_path=str(tasks), include_defaults=False).check_data()


def test_clear_messages(tmp_path, monkeypatch):
    pytest.importorskip("lmms_eval")
    with pytest.raises(UserError, match="unknown task no_such_task; known without lmms-eval's task files: mme, pope"):
        LMMSEval(["no_such_task"], include_defaults=False).check_data()
    with pytest.raises(UserError, match="dataset_dirs names gqa, not among tasks"):
        LMMSEval(["pope"], dataset_dirs={"gqa": "/data/gqa"})
    # a task of one's own (include_path) that scores by log-likelihood is refused by name when it runs
    tasks = write_task(tmp_path / "tasks", "pope_ll", f"dataset_path: {write_pope(tmp_path / 'pope')}\n"
                       "dataset_kwargs: {load_from_disk: true}", output_type="loglikelihood")
    with pytest.raises(UserError, match="task pope_ll scores answers by log-likelihood"):
        LMMSEval(["pope_ll"], include_path=str(tasks), include_defaults=False, bootstrap_iters=0).evaluate(
            Scripted({}))
    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # as if not installed: the config fails to build
    with pytest.raises(UserError, match=r'pip install -e "\.\[lmms_eval\]"'):
        LMMSEval(["pope"])


@pytest.mark.slow
def test_lmms_eval_in_a_run(tmp_path):
    pytest.importorskip("lmms_eval")
    pope = write_pope(tmp_path / "pope")
    overrides = [f"paths.root={tmp_path}", "device=cpu", "model=llava_tiny", "sparsity=0.5",
                 "+eval@evals.lmms_eval=lmms_eval", "evals.lmms_eval.tasks=[pope]",
                 f"evals.lmms_eval.dataset_dirs={{pope: {pope}}}", "evals.lmms_eval.limit=2",
                 "evals.lmms_eval.gen_kwargs={max_new_tokens: 2}", "evals.lmms_eval.include_defaults=false",
                 "evals.lmms_eval.bootstrap_iters=0"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        record = run(compose("config", overrides))
    assert set(record.metrics) == {f"lmms_eval/pope/pope_{m}" for m in
                                   ("accuracy", "precision", "recall", "f1_score", "yes_ratio")}
    full = record.eval_info["lmms_eval"]["results"]  # lmms-eval's own JSON beside the flattened metrics
    assert full["results"]["pope"]["pope_accuracy,none"] == record.metrics["lmms_eval/pope/pope_accuracy"]
    assert full["n-samples"]["pope"]["effective"] == 2 and full["configs"]["pope"]["dataset_path"] == str(pope)
