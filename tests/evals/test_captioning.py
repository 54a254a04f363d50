"""Captioning: the caption protocol, CIDEr per domain, SPICE skip.

Most tests stand in for the Java PTB tokenizer with a whitespace split of text that is already
lower-case and unpunctuated (what PTB returns for it); a few run the real tokenizer (~0.2 s JVM)."""

import json
import logging
import math
import shutil
import subprocess
from collections import Counter

import pytest
from hydra.utils import instantiate
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from ecoflap_exp.errors import UserError
from ecoflap_exp.evals import captioning
from ecoflap_exp.evals.captioning import CocoCaptioning, NoCapsCaptioning, cider, score_captions
from ecoflap_exp.runner import run
from tests.fixtures import write_caption_pairs
from tests.fixtures_captioning import (
    COCO,
    COCO_PREDICTIONS,
    NOCAPS,
    NOCAPS_PREDICTIONS,
    write_coco_karpathy,
    write_nocaps,
)
from tests.integration.test_run import config

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs java")


class StubCaptioner:
    """Says by_width[image width] for each image and records every call."""

    def __init__(self, by_width: dict[int, str]):
        self.by_width = by_width
        self.calls: list[tuple[int, list[str], dict]] = []

    def generate(self, images, prompts, **generation):
        self.calls.append((len(images), list(prompts), generation))
        return [self.by_width[image.width] for image in images]


def nocaps_stub() -> StubCaptioner:
    return StubCaptioner({20 + k: caption for k, caption in enumerate(NOCAPS_PREDICTIONS)})


def coco_stub() -> StubCaptioner:
    return StubCaptioner({20 + k: COCO_PREDICTIONS[cocoid] for k, (cocoid, split, _) in enumerate(COCO)
                          if split == "test"})


def simple_tokens(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


@pytest.fixture
def no_java(monkeypatch):
    """PTB tokenisation replaced by simple_tokens (equal to PTB's output on the fixture captions,
    which hold no punctuation other than a final full stop)."""
    monkeypatch.setattr(captioning, "ptb_tokenize",
                        lambda captions: {k: [simple_tokens(c) for c in v] for k, v in captions.items()})


def cider_d(references: dict[int, list[str]], predictions: dict[int, str], n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D x100 written from its definition (Vedantam et al.; evals.md 3.2): tf-idf n-gram
    vectors with idf = log(#images) - log(max(1, df)), clipped cosine per order times a Gaussian
    length penalty, mean over orders and references, x10, mean over images."""
    def grams(text: str) -> Counter:
        words = text.split()
        return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))

    df = Counter(g for refs in references.values() for g in set().union(*(grams(r) for r in refs)))
    log_images = math.log(len(references))

    def vectors(text: str) -> list[dict]:
        counts = grams(text)
        return [{g: tf * (log_images - math.log(max(1, df[g]))) for g, tf in counts.items() if len(g) == k}
                for k in range(1, n + 1)]

    per_image = []
    for image, hypothesis in predictions.items():
        vh = vectors(hypothesis)
        per_ref = []
        for ref in references[image]:
            vr = vectors(ref)
            penalty = math.exp(-((len(hypothesis.split()) - len(ref.split())) ** 2) / (2 * sigma**2))
            orders = []
            for h, r in zip(vh, vr, strict=True):
                dot = sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in h.items())
                norms = math.sqrt(sum(w * w for w in h.values())) * math.sqrt(sum(w * w for w in r.values()))
                orders.append((dot / norms if norms else 0.0) * penalty)
            per_ref.append(sum(orders) / n)
        per_image.append(10 * sum(per_ref) / len(per_ref))
    return 100 * sum(per_image) / len(per_image)


def fixture_sets() -> tuple[dict[int, list[str]], dict[int, str], dict[int, str]]:
    refs = {k: [simple_tokens(r) for r in rs] for k, (_, _, rs) in enumerate(NOCAPS)}
    return refs, dict(enumerate(NOCAPS_PREDICTIONS)), {k: domain for k, (_, domain, _) in enumerate(NOCAPS)}


def test_cider_equals_pycocoevalcap_and_the_definition():
    refs, preds, _ = fixture_sets()
    direct, _ = Cider().compute_score(refs, {k: [p] for k, p in preds.items()})
    assert cider(refs, preds) == pytest.approx(100 * direct)
    assert cider(refs, preds) == pytest.approx(cider_d(refs, preds))
    assert 0 < cider(refs, preds) < 1000
    # hand-worked: hypothesis = its only reference and no n-gram shared between the two images: the
    # clipped cosine of every order is 1, the penalty exp(0) = 1, so each image scores 10 -> 1000;
    # with 3 words there is no 4-gram: (1 + 1 + 1 + 0) / 4 * 10 -> 750
    assert cider({1: ["a big red bus"], 2: ["two small green apples"]},
                 {1: "a big red bus", 2: "two small green apples"}) == pytest.approx(1000.0)
    assert cider({1: ["a red bus"], 2: ["two green apples"]}, {1: "a red bus", 2: "two green apples"}) == \
        pytest.approx(750.0)


def test_each_domain_is_scored_as_its_own_set(no_java):
    # domain A: both images "a dog", domain B: both "a cat"; every caption equals its reference.
    # Over all 4 images "a" is in every image (idf 0) but "dog" / "a dog" in half (idf log 2):
    # unigram and bigram cosines are 1, 3- and 4-grams do not exist -> 10 * (1 + 1) / 4 = 5 -> 500.
    # Within domain A "a", "dog" and "a dog" are in both of its images: idf 0 everywhere -> 0.
    refs = {1: ["a dog"], 2: ["a dog"], 3: ["a cat"], 4: ["a cat"]}
    preds = {1: "a dog", 2: "a dog", 3: "a cat", 4: "a cat"}
    domains = {1: "in-domain", 2: "in-domain", 3: "out-domain", 4: "out-domain"}
    metrics = score_captions(refs, preds, domains, spice=False)
    assert metrics == {"cider": 500.0, "cider_in_domain": 0.0, "cider_out_domain": 0.0, "spice_skipped": 1.0}
    _, per_image = Cider().compute_score(refs, {k: [p] for k, p in preds.items()})
    assert per_image[:2].mean() * 100 == pytest.approx(500.0)  # overall run restricted to domain A: not 0

    refs, preds, domains = fixture_sets()
    metrics = score_captions(refs, preds, domains, spice=False)
    assert metrics["cider"] == pytest.approx(cider_d(refs, preds))
    for domain in ("in-domain", "near-domain", "out-domain"):
        ids = [k for k in refs if domains[k] == domain]
        own_set = cider_d({k: refs[k] for k in ids}, {k: preds[k] for k in ids})
        assert metrics[f"cider_{domain.replace('-', '_')}"] == pytest.approx(own_set)


def test_missing_images_and_uncovered_predictions(tmp_path, no_java):
    files = write_nocaps(tmp_path)
    (files["image_root"] / f"{NOCAPS[4][0]}.jpg").unlink()
    evaluation = NoCapsCaptioning(str(files["official"]), str(files["image_root"]))
    with pytest.raises(UserError, match=r"1 of 6 NoCaps val images under image_root .* are missing \(first: .*"
                                        r"0076fb2a1a6f6bf8.jpg\); download nocaps_val_4500_captions.json"):
        evaluation.evaluate(nocaps_stub())
    with pytest.raises(UserError, match="1 image\\(s\\) have no caption, 1 caption\\(s\\) have no image"):
        score_captions({1: ["a"], 2: ["b"]}, {1: "a", 3: "c"})


def test_duplicated_entries_are_captioned_once(tmp_path, no_java):
    files = write_coco_karpathy(tmp_path)
    entries = json.loads(files["lavis"].read_text())
    once = CocoCaptioning(str(files["lavis"]), str(files["image_root"]), spice=False, batch_size=8)
    stub = coco_stub()
    expected = once.evaluate(stub)
    files["lavis"].write_text(json.dumps(entries + [entries[1]]))  # the same image twice, as a merged eval gives
    twice = CocoCaptioning(str(files["lavis"]), str(files["image_root"]), spice=False, batch_size=8)
    stub_twice = coco_stub()
    metrics = twice.evaluate(stub_twice)
    assert [n for n, _, _ in stub_twice.calls] == [3]  # three images, one caption each
    # the repeated entry's references count twice for that image (a caption-per-entry file repeats them)
    refs = {cocoid: [simple_tokens(r) for r in rs] for cocoid, split, rs in COCO if split == "test"}
    refs[522418] = refs[522418] * 2
    assert metrics["cider"] == pytest.approx(cider_d(refs, {k: simple_tokens(v) for k, v in COCO_PREDICTIONS.items()}))
    assert expected["cider"] == pytest.approx(cider_d({k: r[:2] for k, r in refs.items()}, dict(COCO_PREDICTIONS)))


@needs_java
def test_nocaps_eval_equals_pycocoevalcap_called_directly(tmp_path, monkeypatch, caplog):
    files = write_nocaps(tmp_path)
    monkeypatch.setattr(captioning, "spice_unavailable_reason", lambda: "its jars are missing (mocked)")
    stub = nocaps_stub()
    with caplog.at_level(logging.WARNING):
        metrics = NoCapsCaptioning(str(files["official"]), str(files["image_root"]), batch_size=4).evaluate(stub)
    pinned = {"num_beams": 5, "max_new_tokens": 30, "min_length": 8, "length_penalty": 1.0, "repetition_penalty": 1.0}
    assert stub.calls == [(4, ["a photo of"] * 4, pinned), (2, ["a photo of"] * 2, pinned)]

    data = json.loads(files["official"].read_text())
    gts = {img["id"]: [a for a in data["annotations"] if a["image_id"] == img["id"]] for img in data["images"]}
    res = {k: [{"image_id": k, "caption": c}] for k, c in enumerate(NOCAPS_PREDICTIONS)}
    gts, res = PTBTokenizer().tokenize(gts), PTBTokenizer().tokenize(res)  # as COCOEvalCap.evaluate does

    def direct(ids):
        return 100 * Cider().compute_score({k: gts[k] for k in ids}, {k: res[k] for k in ids})[0]

    expected = {"cider": direct(range(6)), "cider_in_domain": direct([0, 1]), "cider_near_domain": direct([2, 3]),
                "cider_out_domain": direct([4, 5]), "spice_skipped": 1.0}
    assert metrics == pytest.approx(expected)
    assert expected["cider_in_domain"] != pytest.approx(100 * Cider().compute_score(gts, res)[1][:2].mean())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "SPICE skipped: its jars are missing (mocked)" in warnings[0].getMessage()


@needs_java
def test_ptb_tokenizer_keeps_each_caption_on_its_image():
    # pycocoevalcap reads one caption per line: a raw "\r" or U+2028 would shift later captions
    captions = {1: ["A dog\r running."], 2: ["x\u2028y", ""], 3: ["It's the man's hat (red)!"]}
    assert captioning.ptb_tokenize(captions) == {1: ["a dog running"], 2: ["x y", ""],
                                                 3: ["it 's the man 's hat -lrb- red -rrb-"]}


def test_spice_jar_check(tmp_path, monkeypatch):
    monkeypatch.setattr(captioning, "pycocoevalcap_dir", lambda: tmp_path)
    (tmp_path / "spice" / "lib").mkdir(parents=True)
    assert "stanford-corenlp-3.6.0.jar, stanford-corenlp-3.6.0-models.jar" in captioning.spice_unavailable_reason()
    for jar in captioning.SPICE_JARS:
        (tmp_path / "spice" / "lib" / jar).write_bytes(b"")
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert captioning.spice_unavailable_reason() is None
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "`java` is not on PATH" in captioning.spice_unavailable_reason()


def test_spice_skipped_once_or_averaged_per_domain(no_java, monkeypatch, caplog):
    refs, preds, domains = fixture_sets()
    monkeypatch.setattr(captioning, "spice_unavailable_reason", lambda: "no jars (mocked)")
    with caplog.at_level(logging.WARNING):
        skipped = score_captions(refs, preds, domains, dataset="NoCaps val")
    assert {k: v for k, v in skipped.items() if k.startswith("spice")} == {"spice_skipped": 1.0}
    assert [r.getMessage() for r in caplog.records] == [
        "NoCaps val: SPICE skipped: no jars (mocked). The result records spice_skipped=1.0 and no SPICE numbers."]

    # SPICE has no corpus statistics: one run, each domain the mean of its images' F-scores
    monkeypatch.setattr(captioning, "spice_unavailable_reason", lambda: None)
    per_image = {0: 0.1, 1: 0.3, 2: 0.2, 3: 0.2, 4: 0.0, 5: 0.5}
    calls = []
    monkeypatch.setattr(captioning, "spice_per_image", lambda r, p: calls.append(p) or per_image)
    metrics = score_captions(refs, preds, domains)
    assert calls == [preds]  # one run over all images
    assert {k: v for k, v in metrics.items() if k.startswith("spice")} == pytest.approx(
        {"spice": 100 * 1.3 / 6, "spice_in_domain": 20.0, "spice_near_domain": 20.0, "spice_out_domain": 25.0})

    def jvm_fails(r, p):
        raise subprocess.CalledProcessError(1, ["java", "-jar", "spice-1.0.jar"])

    monkeypatch.setattr(captioning, "spice_per_image", jvm_fails)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        failed = score_captions(refs, preds, domains)
    assert failed["spice_skipped"] == 1.0 and "spice" not in failed
    assert len(caplog.records) == 1 and "Java run failed" in caplog.records[0].getMessage()


def test_java_missing_or_package_not_writable(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="`java` is not on PATH: install a Java runtime .*default-jre-headless"):
        captioning.ptb_tokenize({1: ["a"]})
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(captioning.os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match="package folder .*tokenizer, which is not writable"):
        captioning.ptb_tokenize({1: ["a"]})


@pytest.mark.parametrize(("name", "cls", "annotations"),
                         [("nocaps", NoCapsCaptioning, "nocaps/nocaps_val_4500_captions.json"),
                          ("coco_caption", CocoCaptioning, "coco/annotations/dataset_coco.json")])
def test_eval_configs_pin_the_blip2_caption_protocol(tmp_path, name, cls, annotations):
    cfg = config(tmp_path, "suite=none", f"+eval@evals.{name}={name}")
    evaluation = instantiate(cfg.evals[name])
    assert type(evaluation) is cls
    assert evaluation.annotations == f"{tmp_path}/data/{annotations}"
    assert evaluation.prompt == "a photo of" and evaluation.spice is True and evaluation.limit is None
    assert evaluation.generation == {"num_beams": 5, "max_new_tokens": 30, "min_length": 8, "length_penalty": 1.0,
                                     "repetition_penalty": 1.0}


@pytest.mark.slow
@needs_java
def test_tiny_blip2_run_scores_nocaps(tmp_path):
    write_nocaps(tmp_path / "data")
    pairs = write_caption_pairs(tmp_path / "data" / "cc3m", count=8)
    record = run(config(tmp_path, "model=blip2_t5_tiny", "calib=cc3m", f"calib.annotations={pairs['tsv']}",
                        "calib.num_samples=4", "calib.batch_size=2", "suite=none", "+eval@evals.nocaps=nocaps",
                        "evals.nocaps.spice=false", "evals.nocaps.batch_size=3",
                        "evals.nocaps.generation.num_beams=2", "evals.nocaps.generation.max_new_tokens=6",
                        "evals.nocaps.generation.min_length=2", "sparsity=0.5"))
    metrics = record.metrics
    assert set(metrics) == {"nocaps/cider", "nocaps/cider_in_domain", "nocaps/cider_near_domain",
                            "nocaps/cider_out_domain", "nocaps/spice_skipped"}
    assert all(math.isfinite(v) and v >= 0 for v in metrics.values())
