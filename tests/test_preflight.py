"""preflight: validate (the config's own values and the rules tying them) and preflight (what the
built plugins allow) stop a bad run before any model loads: wrong choices, contradicting N:M and
sparsity, sample counts, capabilities, checkpoints, calibration files."""

import pytest
from PIL import Image

from ecoflap_exp.errors import UserError
from ecoflap_exp.plugins import Plugins
from ecoflap_exp.preflight import preflight, validate
from tests.fixtures import write_caption_pairs
from tests.integration.test_reliability import config


def checked(cfg):
    """What run() checks before any model loads."""
    target = validate(cfg)
    preflight(cfg, target, Plugins.build(cfg))


#: every enumerated option of every plugin, with a wrong value, and the allowed values' message
WRONG_CHOICES = [
    (["scorer=zeroth", "scorer.granularity=blok"], "scorer.granularity='blok' is unknown; use one of block, matrix"),
    (["scorer=zeroth", "scorer.aggregate=mean"], "scorer.aggregate='mean' is unknown; use one of sum, avg"),
    (["scorer=first", "scorer.granularity=blok"], "scorer.granularity='blok' is unknown"),
    (["scorer=first", "scorer.aggregate=mean"], "scorer.aggregate='mean' is unknown"),
    (["scorer=id", "scorer.granularity=blok"], "scorer.granularity='blok' is unknown"),
    (["scorer=id", "scorer.estimator=levina"], "scorer.estimator='levina' is unknown; use one of"),
    (["scorer=id", "scorer.representation=max"], "scorer.representation='max' is unknown; use one of"),
    (["scorer=id_zeroth", "scorer.normalise=max"], "scorer.normalise='max' is unknown; use one of none, tower_mean"),
    (["allocation=waterfill", "allocation.scope=tower"], "allocation.scope='tower' is unknown; use one of"),
    (["allocation=global", "allocation.base_score=snip"], "allocation.base_score='snip' is unknown; use one of"),
    (["pruner=wanda", "pruner.group=col"], "pruner.group='col' is unknown; use one of"),
    (["pruner=wanda", "pruner.count=approx"], "pruner.count='approx' is unknown; use one of"),
    (["pruner=magnitude", "pruner.group=col"], "pruner.group='col' is unknown; use one of"),
    (["pruner=sparsegpt", "pruner.count=approx"], "pruner.count='approx' is unknown; use one of"),
    (["model=clip_tiny", "calib=image_folder", "calib.augment=flip"], "calib.augment='flip' is unknown; use one of"),
    (["calib=coop_train", "calib.dataset=mnist"], "CoOp dataset 'mnist' is unknown; use one of"),
    (["model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "device=tpu"], "device='tpu' is unknown"),
]


@pytest.mark.parametrize(("overrides", "message"), WRONG_CHOICES, ids=lambda v: " ".join(v) if isinstance(v, list)
                         else None)
def test_every_enumerated_option_fails_before_any_model_loads(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checked(config(tmp_path, *overrides))


def test_nm_sets_the_sparsity_and_a_different_explicit_one_is_an_error(tmp_path):
    assert validate(config(tmp_path, "nm=1:4")).sparsity == 0.75
    assert validate(config(tmp_path, "nm=2:4", "sparsity=0.5")).sparsity == 0.5
    with pytest.raises(UserError, match="nm=2:4 fixes the sparsity at 0.5, but sparsity=0.3"):
        validate(config(tmp_path, "nm=2:4", "sparsity=0.3"))


@pytest.mark.parametrize(("count", "message"), [(0, "scorer.num_samples=0 is not valid: input should be greater than "
                                                    "or equal to 1"),
                                                (1, "scorer.num_samples=1 is not a whole number"),
                                                (12, r"scorer.num_samples=12 is not a whole number .*batch_size=8")])
def test_a_scorer_sample_count_below_or_between_batches_is_refused(tmp_path, count, message):
    with pytest.raises(UserError, match=message):
        checked(config(tmp_path, "scorer=zeroth", f"scorer.num_samples={count}"))
    with pytest.raises(UserError, match=message.replace("scorer.", "scorer.factors.0.", 1)):
        checked(config(tmp_path, "scorer=id_zeroth", f"scorer.factors.0.num_samples={count}"))


def test_capabilities_are_checked_before_the_data_and_checkpoints_before_any_model_loads(tmp_path):
    with pytest.raises(UserError, match="evals.vqav2 .* needs a model with GeneratesFromImages"):
        checked(config(tmp_path, "suite=blip2_paper", "evals.okvqa.lemmatiser=lemminflect"))  # not the VQAv2 files

    with pytest.raises(UserError, match="checkpoint 'Salesforce/blip2-flan-t5-xl-coco' is not in the local Hugging "
                                        "Face cache and HF_HUB_OFFLINE=1"):  # NoCaps' companion, before any VQA file
        checked(config(tmp_path, "model=blip2_t5_tiny", "suite=blip2_paper", "evals.okvqa.lemmatiser=lemminflect"))
    with pytest.raises(UserError, match="model checkpoint path '/nowhere/model' does not exist"):
        checked(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text",
                       "model.init=pretrained", "model.checkpoint=/nowhere/model"))


def caption_calib(tmp_path, tsv_text: bytes | None = None, *overrides):
    pairs = write_caption_pairs(tmp_path / "data", count=8)
    if tsv_text is not None:
        pairs["tsv"].write_bytes(tsv_text)
    return config(tmp_path, "calib=cc3m", f"calib.annotations={pairs['tsv']}", "calib.num_samples=8",
                  "calib.batch_size=4", *overrides)


def test_calibration_files_are_read_and_checked_before_any_model_loads(tmp_path, monkeypatch):
    """Issue 27 item 2: each problem is found by the checks run() makes before loading (validate +
    preflight), so a BLIP-2-sized run never loads for minutes to stop at its data."""
    header = b"image\tcaption\n"
    bad = [(tmp_path / "a", None, ["calib.annotations=/no/such/cc3m.tsv"], "caption file '/no/such/cc3m.tsv' does "
                                                                           "not exist"),
           (tmp_path / "b", header, [], r"holds a header and no image-caption rows"),
           (tmp_path / "c", b"file\ttext\nimages/00000.jpg\ta cat\n", [], r"lacks the 'image' and 'caption' columns"),
           (tmp_path / "d", header + "images/00000.jpg\tun caf\xe9\n".encode("latin-1"), [],
            r"pairs.tsv is not UTF-8 \(byte 0xe9 .*Latin-1.*re-save it as UTF-8"),
           (tmp_path / "e", header + b"images/missing.jpg\ta cat\n" * 8, [], "images tried fail to decode")]
    for root, text, overrides, message in bad:
        with pytest.raises(UserError, match=message):
            checked(caption_calib(root, text, *overrides))
    # a truncated image
    root = tmp_path / "f"
    cfg = caption_calib(root, None, "calib.max_bad_fraction=0")
    (root / "data" / "images" / "00003.jpg").write_bytes((root / "data" / "images" / "00003.jpg").read_bytes()[:100])
    with pytest.raises(UserError, match="1 of 4 images tried fail to decode .*00003.jpg"):
        checked(cfg)
    # an image over PIL's decompression-bomb limit is a bad image, not a traceback
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UserError, match="images tried fail to decode .*decompression bomb"):
        checked(caption_calib(tmp_path / "g", None, "calib.max_bad_fraction=0"))
