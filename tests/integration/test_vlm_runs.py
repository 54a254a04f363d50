"""Vision-language models end to end through the runner: every scorer x pruner on tiny BLIP-2 (the
paper's model), every scorer and every pruner on tiny BLIP-2 OPT, BLIP-2 ITM, open_clip and HF
CLIP; the achieved sparsity equals the plan per tower; a pruned ViT carried into the ITM model
(from a saved run; into an evaluation's companion: tests/evals/test_base.py); data checked before pruning."""

import json
from collections import defaultdict

import pytest

from ecoflap_exp.errors import UserError
from ecoflap_exp.runner import run
from ecoflap_exp.tracking.store import run_id
from tests.fixtures import write_caption_pairs
from tests.integration.test_run import config

SCORERS = ["uniform", "zeroth", "first", "id", "id_zeroth", "id_first", "owl"]
PRUNERS = ["wanda", "sparsegpt", "magnitude"]
OTHER_MODELS = ["blip2_opt_tiny", "blip2_itm_tiny", "clip_tiny", "hf_clip_tiny"]
CASES = ([("blip2_t5_tiny", s, p) for s in SCORERS for p in PRUNERS]
         + [(m, s, "wanda") for m in OTHER_MODELS for s in SCORERS]
         + [(m, "uniform", p) for m in OTHER_MODELS for p in PRUNERS[1:]])


#: zeroth-order scoring reads 32 samples by default: here the 8 pairs there are
ZEROTH_ON_THE_8_PAIRS = {"zeroth": ["scorer.num_samples=8"], "id_zeroth": ["scorer.factors.0.num_samples=8"]}


def caption_run(tmp_path, *overrides):
    files = write_caption_pairs(tmp_path / "pairs", count=8)
    return run(config(tmp_path, "calib=cc3m", f"calib.annotations={files['tsv']}", "calib.num_samples=8",
                      "calib.batch_size=4", "suite=none", *overrides))


def tower_sparsity(record):
    """Per tower: (planned, achieved) fraction of zeros, weighted by block size."""
    planned, achieved, size = defaultdict(float), defaultdict(float), defaultdict(int)
    for m in record.matrices:
        n = m.rows * m.cols
        planned[m.tower] += m.planned_sparsity * n
        achieved[m.tower] += record.achieved.per_matrix[m.name] * n
        size[m.tower] += n
    return {t: (planned[t] / size[t], achieved[t] / size[t]) for t in size}


@pytest.mark.slow
@pytest.mark.parametrize(("model", "scorer", "pruner"), CASES)
def test_every_scorer_and_pruner_reaches_the_plan_per_tower(tmp_path, model, scorer, pruner):
    record = caption_run(tmp_path, f"model={model}", f"scorer={scorer}", f"pruner={pruner}", "sparsity=0.5",
                         *ZEROTH_ON_THE_8_PAIRS.get(scorer, []))
    per_tower = tower_sparsity(record)
    towers = {"blip2_t5_tiny": {"vision", "encoder", "decoder"}, "blip2_opt_tiny": {"vision", "decoder"},
              "blip2_itm_tiny": {"vision"}}.get(model, {"vision", "text"})
    assert set(per_tower) == towers
    for tower, (planned, achieved) in per_tower.items():
        assert achieved == pytest.approx(planned, abs=2e-3), tower
    assert record.achieved.overall == pytest.approx(0.5, abs=2e-3)
    if scorer != "uniform":
        assert len(set(record.plan.values())) > 1  # the scores moved sparsity between blocks
    # the official per-tower choices, as the record states them
    blip2 = model.startswith("blip2")
    assert record.config["calib"]["augment"] == ("train" if blip2 else "eval")
    if pruner == "wanda":
        assert record.comparison_groups["wanda"] == {t: "matrix" if t == "vision" and blip2 else "row" for t in towers}
    if scorer == "zeroth":
        assert record.scorer_info == {"zero_estimates": 0, "matrices": len(record.matrices)}


@pytest.mark.slow
def test_pruned_vit_of_a_blip2_run_carried_into_the_retrieval_model(tmp_path):
    pruned = caption_run(tmp_path, "model=blip2_t5_tiny", "sparsity=0.5", "save_model=true")
    record_path = tmp_path / "results" / "runs" / f"{pruned.id}.json"
    carried = caption_run(tmp_path, "model=blip2_itm_tiny", f"model.vision_from={record_path}", "sparsity=0")
    vision = {k: v for k, v in pruned.achieved.per_matrix.items() if k.startswith("vision_model.")}
    assert carried.achieved.per_matrix == pytest.approx(vision)
    assert carried.achieved.overall == pytest.approx(0.5, abs=2e-3)
    unsaved = caption_run(tmp_path, "model=blip2_t5_tiny", "sparsity=0.3")
    path = tmp_path / "results" / "runs" / f"{unsaved.id}.json"
    assert not json.loads(path.read_text()).get("saved_model")
    with pytest.raises(UserError, match="has no saved model; rerun that run with save_model=true"):
        caption_run(tmp_path, "model=blip2_itm_tiny", f"model.vision_from={path}", "sparsity=0")


@pytest.mark.slow
def test_prune_towers_limits_pruning_to_the_named_towers(tmp_path):
    record = caption_run(tmp_path, "model=clip_tiny", "model.prune_towers=[text]", "scorer=zeroth", "sparsity=0.5",
                         *ZEROTH_ON_THE_8_PAIRS["zeroth"])
    assert set(tower_sparsity(record)) == {"text"}
    assert all(name.startswith("transformer.") for name in record.plan)
    with pytest.raises(UserError, match=r"prune_towers=\['image'\] must name some of OpenCLIPAdapter's towers"):
        caption_run(tmp_path, "model=clip_tiny", "model.prune_towers=[image]")


@pytest.mark.slow
def test_missing_benchmark_data_stops_the_run_before_the_model_loads(tmp_path):
    # the full-size BLIP-2 at random init: building it would take minutes, the data check comes first
    with pytest.raises(UserError, match="nocaps_val_4500_captions.json"):
        caption_run(tmp_path, "model=blip2_t5", "model.init=random", "model.tokenizer=bytes",
                    "+eval@evals.nocaps=nocaps")


def test_a_dense_run_does_not_depend_on_the_towers_it_would_prune():
    base = {"model": {"arch": "clip_tiny", "prune_towers": None}, "sparsity": 0, "scorer": {}}
    vision = {**base, "model": {"arch": "clip_tiny", "prune_towers": ["vision"]}}
    assert run_id(base) == run_id(vision)
    assert run_id({**base, "sparsity": 0.5}) != run_id({**vision, "sparsity": 0.5})


@pytest.mark.slow
def test_id_asymmetry_records_give_per_tower_tables_and_the_id_figure(tmp_path):
    """The ID paper's methods on tiny BLIP-2: per-matrix IDs of more samples than the pruner's,
    one global threshold (no per-matrix ceiling), and from the records alone each tower's sparsity
    and mean ID in the table and the per-matrix ID figure."""
    from ecoflap_exp.results.tables import write_tables

    files = write_caption_pairs(tmp_path / "pairs", count=100, numbered=True)
    common = ["calib=cc3m", f"calib.annotations={files['tsv']}", "calib.num_samples=8", "calib.batch_size=4",
              "suite=none", "model=blip2_t5_tiny", "experiment_name=id_asymmetry", "sparsity=0.5"]
    runs = {}
    for method in ("id_paper", "id_ecoflap"):
        for towers in ("[vision]", "[vision,encoder,decoder]"):
            runs[method, towers] = run(config(tmp_path, *common, f"+experiment/method={method}",
                                              "scorer.num_samples=100", f"model.prune_towers={towers}"))
    full = runs["id_paper", "[vision,encoder,decoder]"]
    ids = full.scorer_info["intrinsic_dim"]
    assert list(ids) == [m.name for m in full.matrices]  # one ID per prunable matrix, in model order
    assert full.method == "id-global-magnitude+magnitude" and full.target.max_sparsity == 1.0
    assert full.scorer_info == runs["id_ecoflap", "[vision,encoder,decoder]"].scorer_info  # the same 100 samples
    assert set(full.achieved.per_tower) == {"vision", "encoder", "decoder"}
    assert full.achieved.overall == pytest.approx(0.5, abs=1e-6)
    tables = write_tables(tmp_path / "results" / "runs", tmp_path / "out")
    table = tables["id_asymmetry"]
    row = "id-global-magnitude+magnitude (prune_towers=[vision,encoder,decoder])"
    for tower in ("vision", "encoder", "decoder"):
        assert table.loc[row, f"sparsity/{tower}"] == f"{full.achieved.per_tower[tower]:.2f}"
        assert table.loc[row, f"mean_id/{tower}"] == f"{full.scorer_info['tower_mean_id'][tower]:.2f}"
    vision_only = "id-global-magnitude+magnitude (prune_towers=[vision])"
    assert table.loc[vision_only, "sparsity/vision"] == "0.50" and table.loc[vision_only, "sparsity/encoder"] == "-"
    assert (tmp_path / "out" / "plots" / "id_asymmetry_id.png").stat().st_size > 10_000
