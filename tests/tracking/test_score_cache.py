"""Block scores are computed once per sweep: the other sparsity points reuse them (and the weight
sketches of global ranking); a changed calibration seed, model or scorer setting misses the cache;
force=true recomputes. A reused point's plan is the one a fresh computation gives."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ecoflap_exp.runner import run

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model=llama_tiny", "calib=shipped_text", "suite=none", "model.arch_overrides={num_hidden_layers: 2}"]


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", [f"paths.root={tmp_path}", "device=cpu", *TINY, *overrides])


def test_a_sweep_scores_once_and_a_new_seed_or_setting_misses(tmp_path):
    zeroth = ["scorer=zeroth", "scorer.num_samples=16"]
    first = run(config(tmp_path, *zeroth, "sparsity=0.5"))
    second = run(config(tmp_path, *zeroth, "sparsity=0.6"))
    assert (first.scores_reused, second.scores_reused) == (False, True)
    assert second.scores == first.scores and second.scorer_info == first.scorer_info
    fresh = run(config(tmp_path, *zeroth, "sparsity=0.6", "force=true"))
    assert fresh.scores_reused is False and fresh.plan == second.plan
    assert fresh.achieved.masks_sha1 == second.achieved.masks_sha1
    other_seed = run(config(tmp_path, *zeroth, "sparsity=0.6", "seed=1"))
    assert other_seed.scores_reused is False and other_seed.scores != first.scores
    other_eps = run(config(tmp_path, *zeroth, "sparsity=0.6", "scorer.eps=0.01"))
    assert other_eps.scores_reused is False
    assert len(list((tmp_path / "results" / "scores").glob("*.json"))) == 3  # seed 0, seed 1, eps 0.01


def test_global_ranking_reuses_its_weight_sketches(tmp_path):
    ranking = ["allocation=global", "allocation.use_id=false"]
    first = run(config(tmp_path, *ranking, "sparsity=0.5"))
    second = run(config(tmp_path, *ranking, "sparsity=0.7"))
    fresh = run(config(tmp_path, *ranking, "sparsity=0.7", "force=true"))
    assert (first.scores_reused, second.scores_reused, fresh.scores_reused) == (False, True, False)
    assert second.plan == fresh.plan
    assert second.achieved.overall == pytest.approx(0.7, abs=1e-4)


def test_uniform_scores_are_not_cached(tmp_path):
    assert run(config(tmp_path, "sparsity=0.5")).scores_reused is False
    assert run(config(tmp_path, "sparsity=0.6")).scores_reused is False
    assert not (tmp_path / "results" / "scores").exists()
