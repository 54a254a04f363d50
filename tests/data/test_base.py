"""calib.redraw (redraw_calibration): each further pass over the calibration data draws fresh training
views and prefix splits, as ECoFLaP's BLIP-2 script does by iterating its DataLoader anew for each
zeroth-order matrix (layer_single_base_pruner.compute_importance_scores_mezo: `for d in data_loader`
inside the loop over parameters) and for each tower it prunes (wanda_pruner.prepare_calibration_input_encoder)."""

import random
import zlib
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import ecoflap_exp.pruning.engine as engine_module
from ecoflap_exp.api import prune
from ecoflap_exp.data.caption_pairs import ImageCaptionCalibration
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.blip2 import Blip2Adapter, Blip2ITMAdapter
from ecoflap_exp.models.blip_text import blip_caption
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.runner import run
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer, perturb
from tests.fixtures import write_caption_pairs

ROOT = Path(__file__).resolve().parents[2]


def tiny() -> Blip2Adapter:
    return Blip2Adapter(arch="blip2_t5_tiny", init="random", tokenizer="bytes")


def source(tmp_path: Path, augment: str = "train") -> ImageCaptionCalibration:
    pairs = write_caption_pairs(tmp_path, count=8)
    return ImageCaptionCalibration(str(pairs["tsv"]), num_samples=8, batch_size=4, shuffle=False, augment=augment)


def texts(adapter: Blip2Adapter, batch: dict) -> list[tuple[str, str]]:
    """(prefix, target) per sample, decoded from the byte tokenizer's ids (3 + byte; EOS 1, pads 0)."""
    def decode(ids: torch.Tensor) -> str:
        return bytes(int(i) - 3 for i in ids if int(i) > 2).decode()
    return [(decode(p), decode(t.clamp(min=0))) for p, t in zip(batch["input_ids"], batch["labels"], strict=True)]


def test_each_pass_draws_fresh_views_and_splits_seeded_by_its_key(tmp_path):
    adapter = tiny()
    calib = source(tmp_path)
    first = calib.batches(adapter)
    redraw = calib.redrawing(adapter)
    a, again, b = redraw("zeroth/x", None), redraw("zeroth/x", None), redraw("prune/vision", None)
    assert calib.identity["redrawn_passes"] == 3
    for x, y in zip(a, again, strict=True):  # the same key draws the same views and splits
        assert torch.equal(x["pixel_values"], y["pixel_values"]) and texts(adapter, x) == texts(adapter, y)
    for other in (first, b):  # another pass draws other views and other cut points of the same captions
        assert not torch.equal(a[0]["pixel_values"], other[0]["pixel_values"])
        assert [t for x in a for t in texts(adapter, x)] != [t for x in other for t in texts(adapter, x)]
    captions = [blip_caption(c) for _, c in calib.samples(adapter, 8)]
    for drawn in (first, a, b):
        assert ["".join(t) for x in drawn for t in texts(adapter, x)] == captions
    # a pass's seed is crc32("<calib.seed>/<key>"), for the images' transform and the prefix splits alike
    seed = zlib.crc32(b"0/zeroth/x")
    adapter.split_rng = random.Random(seed)
    samples = calib.samples(adapter, 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expected = [adapter.collate(samples[i : i + 4], augment=True) for i in (0, 4)]
    for x, y in zip(a, expected, strict=True):
        assert torch.equal(x["pixel_values"], y["pixel_values"]) and texts(adapter, x) == texts(adapter, y)


def test_nothing_to_redraw_in_the_eval_view_of_a_model_that_draws_nothing(tmp_path):
    itm = Blip2ITMAdapter(arch="blip2_itm_tiny", init="random", tokenizer="bytes")
    assert source(tmp_path, augment="eval").redrawing(itm) is None
    assert source(tmp_path / "t", augment="train").redrawing(itm) is not None
    assert source(tmp_path / "g", augment="eval").redrawing(tiny()) is not None  # the prefix splits still differ


def mezo_with_a_reiterated_loader(adapter, loader, eps, seed):
    """ECoFLaP's compute_importance_scores_mezo (one noise per batch, MEZO-GradOnly): for each
    parameter, the loader is iterated anew; per batch the loss at W + eps z and W - eps z, then W
    restored; the parameter's score is the sum of |l1 - l2| / (2 eps). z drawn as our scorer draws
    it (the reference seeds numpy at random, so no stream can match it)."""
    scores = {}
    for index, m in enumerate(adapter.matrices()):
        original = m.weight.detach().clone()
        total = 0.0
        for b, batch in enumerate(loader(m.name)):
            z_seed = seed * 1_000_003 + index * 1009 + b
            perturb(m.weight, original, z_seed, eps)
            loss1 = adapter.loss(batch).item()
            perturb(m.weight, original, z_seed, -eps)
            loss2 = adapter.loss(batch).item()
            m.weight.copy_(original)
            total += abs(loss1 - loss2) / (2 * eps)
        scores[m.name] = total
    return scores


@torch.no_grad()
def test_zeroth_order_redraw_is_the_official_per_matrix_loop(tmp_path):
    adapter = tiny()
    adapter.model.eval()
    calib = source(tmp_path)
    batches = calib.batches(adapter)
    ours = ZerothOrderScorer(num_samples=8, granularity="matrix", seed=2).scores(adapter, batches, batches,
                                                                               calib.redrawing(adapter))
    reference_draws = source(tmp_path / "again").redrawing(adapter)
    reference = mezo_with_a_reiterated_loader(adapter, lambda name: reference_draws(f"zeroth/{name}", 8), 1e-3, 2)
    per_matrix = {m.name: ours[m.name] for m in adapter.matrices()}
    assert per_matrix == pytest.approx(reference, rel=1e-5)
    # with the first draw for every matrix (no redraw) the estimates differ
    fixed = ZerothOrderScorer(num_samples=8, granularity="matrix", seed=2).scores(adapter, batches)
    assert fixed != pytest.approx(ours, rel=1e-3)


def test_the_engine_walks_each_tower_from_its_own_draw(tmp_path, monkeypatch):
    adapter = tiny()
    calib = source(tmp_path)
    batches = calib.batches(adapter)
    walked = {}
    real_walk = engine_module.walk_tower

    def spy(adapter, tower, seen, *args, **kwargs):
        walked[tower.name] = seen
        return real_walk(adapter, tower, seen, *args, **kwargs)

    monkeypatch.setattr(engine_module, "walk_tower", spy)
    plan = {b.name: 0.5 for b in adapter.blocks()}
    SequentialEngine(adapter, WandaPruner(), plan).run(batches, calib.redrawing(adapter))
    expected = source(tmp_path / "again").redrawing(tiny())
    assert list(walked) == [t.name for t in adapter.towers()] == ["vision", "encoder", "decoder"]
    for name, seen in walked.items():
        drawn = expected(f"prune/{name}", None)
        assert all(torch.equal(x["pixel_values"], y["pixel_values"]) and texts(adapter, x) == texts(adapter, y)
                   for x, y in zip(seen, drawn, strict=True)), name
    assert not torch.equal(walked["vision"][0]["pixel_values"], walked["encoder"][0]["pixel_values"])


def test_api_redraws_a_calibration_source_only(tmp_path):
    adapter = tiny()
    with pytest.raises(UserError, match="redraw=True"):
        prune(adapter, [("image", "caption")], redraw=True)
    calib = source(tmp_path)
    report = prune(adapter, calib, scorer="zeroth", sparsity=0.5, redraw=True, overrides=["scorer.num_samples=8"])
    assert report.scorer_info["redrawn_per_matrix"] is True
    assert calib.identity["redrawn_passes"] == len(list(adapter.matrices())) + len(adapter.towers())


def test_run_records_the_passes_drawn(tmp_path):
    """Digits image-caption pairs in the eval view: BLIP-2's prefix splits are still drawn per pass;
    one pass per zeroth-order matrix and one per pruned tower."""
    overrides = ["model=blip2_t5_tiny", "scorer=zeroth", "scorer.num_samples=8", "calib.num_samples=8",
                 "calib.batch_size=4", "sparsity=0.5", "redraw_calibration=true", "device=cpu",
                 f"paths.root={tmp_path}"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides)
    adapter = tiny()
    record = run(cfg)
    passes = len(list(adapter.matrices())) + len(adapter.towers())
    assert record.calibration.redrawn_passes == passes
    assert record.scorer_info["redrawn_per_matrix"] is True
    assert record.achieved.overall == pytest.approx(0.5, abs=1e-3)
