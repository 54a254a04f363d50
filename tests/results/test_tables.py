"""Paper-style tables from records: derived columns, folded dense rows, memory, the CSV."""



import pandas as pd
import pytest

from ecoflap_exp.record import RunRecord
from ecoflap_exp.results.paper import COOP_DATASETS
from ecoflap_exp.results.tables import derive, experiment_table, frame, write_tables

#: the methods as the runner names them (scorer name + pruner name)
SCORER_NAMES = {"uniform": "", "first": "ecoflap-first", "zeroth": "ecoflap-zeroth"}
#: ECoFLaP Table 1's full-model row: VQAv2, OK-VQA, GQA, NoCaps CIDEr/SPICE, Flickr30k TR@1/IR@1
FULL_MODEL = {"vqav2/accuracy": 63.1, "okvqa/accuracy": 41.1, "gqa/accuracy": 44.1, "nocaps/cider": 121.7,
              "nocaps/spice": 15.8, "flickr30k/tr@1": 97.6, "flickr30k/ir@1": 89.7}


def record(experiment, sparsity, metrics, scorer="uniform", pruner="wanda", status="ok", rid=None, evals=("e",),
           peak_gpu_gb=None, scorer_settings=None, model="tiny"):
    plan = {"vision.0": sparsity, "text.0": sparsity} if sparsity else {}
    method = "dense" if sparsity == 0 else "+".join(p for p in (SCORER_NAMES[scorer], pruner) if p)
    return {"id": rid or f"{model}-{experiment}-{scorer}-{pruner}-{sparsity}-{sorted(metrics)}", "status": status,
            "model": model, "method": method, "scorer": scorer,
            "config": {"experiment_name": experiment, "sparsity": sparsity, "nm": None,
                       "scorer": dict(scorer_settings or {}), "evals": {e: {} for e in evals}},
            "target": {"sparsity": sparsity, "max_sparsity": min(sparsity + 0.1, 1.0), "nm": None}, "plan": plan,
            "metrics": metrics, "achieved": {"overall": sparsity, "prunable_params": 2, "per_block": plan},
            "peak_gpu_gb": peak_gpu_gb or {},
            **({"error": "RuntimeError: boom"} if status == "failed" else {})}


def loaded(records):
    """Records as the store reads them (schema-1 dicts, as written before schema 2)."""
    return [RunRecord.load(r) for r in records]


def table_of(records, experiment):
    return experiment_table(frame(loaded(records)), experiment)


def test_macro_average_of_the_full_model_row_is_the_papers_62_1():
    # (63.1 + 41.1 + 44.1 + (121.7 + 15.8) / 2 + (97.6 + 89.7) / 2) / 5 = 310.7 / 5 = 62.14
    assert derive(FULL_MODEL)["macro_avg"] == pytest.approx(62.14)
    assert "macro_avg" not in derive({k: v for k, v in FULL_MODEL.items() if k != "nocaps/spice"})
    table = table_of([record("table1_blip2", 0, FULL_MODEL, evals=("vqav2", "okvqa", "gqa", "nocaps", "flickr30k"))],
                     "table1_blip2")
    assert table.loc["dense", "macro_avg"] == "62.14"
    assert table.loc["dense (paper)", "macro_avg"] == "62.10"
    assert table.loc["dense (ours - paper)", "macro_avg"] == "+0.04"
    assert table.loc["dense (ours - paper)", "vqav2/accuracy"] == "+0.00"


def test_table1_folds_the_dense_row_in_and_shows_pruning_memory_and_dashes():
    evals = ("vqav2", "okvqa", "gqa", "nocaps", "flickr30k")
    wanda = {**FULL_MODEL, "vqav2/accuracy": 57.0}
    del wanda["nocaps/spice"]  # the macro average needs every input
    records = [
        record("table1_blip2", 0, FULL_MODEL, evals=evals, peak_gpu_gb={"load": 7.5, "verify": 7.6, "eval": 20.0}),
        # pruning-job memory = max over load/calibrate/score/allocate/prune = 9.25; eval's 30 GB is not pruning
        record("table1_blip2", 0.5, wanda, evals=evals,
               peak_gpu_gb={"load": 7.5, "calibrate": 8.0, "score": 9.25, "prune": 9.0, "eval": 30.0}),
        record("table1_blip2", 0.5, {}, scorer="zeroth", status="failed", evals=evals),
    ]
    table = table_of(records, "table1_blip2")
    assert list(table.columns[:9]) == ["prune_peak_gpu_gb", "vqav2/accuracy", "okvqa/accuracy", "gqa/accuracy",
                                       "nocaps/cider", "nocaps/spice", "flickr30k/tr@1", "flickr30k/ir@1", "macro_avg"]
    assert table.loc["dense", "vqav2/accuracy"] == "63.10" and table.loc["wanda", "vqav2/accuracy"] == "57.00"
    assert table.loc["dense", "prune_peak_gpu_gb"] == "-"  # the paper prints "-" for the full model too
    assert table.loc["wanda", "prune_peak_gpu_gb"] == "9.25"
    assert table.loc["wanda", "nocaps/spice"] == "-" and table.loc["wanda", "macro_avg"] == "-"
    assert table.loc["ecoflap-zeroth+wanda", "vqav2/accuracy"] == "failed"
    assert table.loc["wanda (paper)", "vqav2/accuracy"] == "57.90"
    assert table.loc["wanda (ours - paper)", "vqav2/accuracy"] == "-0.90"
    assert table.loc["wanda (ours - paper)", "prune_peak_gpu_gb"] == f"{9.25 - 8.87:+.2f}"
    assert table.loc["ecoflap-first+wanda (paper)", "macro_avg"] == "58.20"
    # the paper's row order, each method followed by the paper's row and the difference
    assert list(table.index) == ["dense", "dense (paper)", "dense (ours - paper)", "sparsegpt (paper)", "wanda",
                                 "wanda (paper)", "wanda (ours - paper)", "ecoflap-first+wanda (paper)",
                                 "ecoflap-zeroth+wanda", "ecoflap-zeroth+wanda (paper)"]


def test_table2_average_needs_all_eleven_datasets_and_a_failure_marks_only_its_dataset():
    # one run per dataset (each calibrated on its own train split): top-1 = 50 + index
    wanda = [record("table2_clip", 0.4, {f"{d}/top1": 50.0 + i}, evals=(d,)) for i, d in enumerate(COOP_DATASETS)]
    sparsegpt = [record("table2_clip", 0.4, {f"{d}/top1": 60.0}, pruner="sparsegpt", evals=(d,))
                 for d in COOP_DATASETS[1:]]
    failed = record("table2_clip", 0.4, {}, pruner="sparsegpt", status="failed", evals=("caltech101",))
    table = table_of([*wanda, *sparsegpt, failed], "table2_clip")
    assert table.loc["wanda", "avg/top1"] == "55.00"  # mean of 50..60
    assert table.loc["sparsegpt", "avg/top1"] == "-"
    assert table.loc["sparsegpt", "caltech101/top1"] == "failed" and table.loc["sparsegpt", "dtd/top1"] == "60.00"
    assert table.loc["wanda (paper)", "avg/top1"] == "47.20"
    assert table.loc["wanda (ours - paper)", "caltech101/top1"] == f"{50.0 - 85.1:+.2f}"


def test_sweep_table_has_one_column_per_point_and_the_figure_rows_are_labelled_approximate(tmp_path):
    records = [record("fig4_blip2", s, {"vqav2/accuracy": 60 - 10 * s}, evals=("vqav2",)) for s in (0.2, 0.5)]
    table = write_tables_from(tmp_path, records)["fig4_blip2"]
    assert table.loc["wanda", "p0.5/vqav2/accuracy"] == "55.00"
    assert table.loc["wanda (paper, read off the plot)", "p0.5/vqav2/accuracy"] == "57.90"
    markdown = (tmp_path / "out" / "tables" / "fig4_blip2.md").read_text()
    assert "## vqav2/accuracy" in markdown and "read off the plot" in markdown
    assert (tmp_path / "out" / "plots" / "fig4_blip2.png").stat().st_size > 1000


def test_ablation_settings_split_one_method_into_rows():
    records = [record("zeroth_ablation", 0.6, {"e/ppl": eps * 1000}, scorer="zeroth",
                      scorer_settings={"eps": eps, "num_samples": 8}) for eps in (0.1, 0.001)]
    table = table_of(records, "zeroth_ablation")
    assert table.loc["ecoflap-zeroth+wanda (eps=0.1, num_samples=8)", "e/ppl"] == "100.00"
    assert table.loc["ecoflap-zeroth+wanda (eps=0.001, num_samples=8)", "e/ppl"] == "1.00"


def test_labelled_markdown_and_latex_use_the_papers_column_names(tmp_path):
    write_tables_from(tmp_path, [record("table1_blip2", 0.5, FULL_MODEL, evals=("vqav2",))])
    markdown = (tmp_path / "out" / "tables" / "table1_blip2.md").read_text()
    assert "|   VQAv2 |" in markdown and "Macro Avg." in markdown and "|   63.10 |" in markdown
    assert "Flickr30k TR@1" in (tmp_path / "out" / "tables" / "table1_blip2.tex").read_text()
    assert "vqav2/accuracy" in (tmp_path / "out" / "tables" / "table1_blip2.csv").read_text()


def write_tables_from(tmp_path, records, **kwargs):
    import json

    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    for r in records:
        (runs / f"{r['id'].replace('/', '_')}.json").write_text(json.dumps(r))
    return write_tables(runs, tmp_path / "out", **kwargs)


def test_two_models_in_one_experiment_get_a_row_each():
    records = [record("models", 0.5, {"text/ppl": 10.0}, model="llama_tiny"),
               record("models", 0.5, {"text/ppl": 12.0}, model="qwen2_tiny")]
    table = table_of(records, "models")
    assert table.loc["llama_tiny: wanda", "text/ppl"] == "10.00"
    assert table.loc["qwen2_tiny: wanda", "text/ppl"] == "12.00"
    assert table_of(records[:1], "models").index.tolist() == ["wanda"]  # one model: the method alone


def test_the_csv_holds_numbers_and_empty_cells():
    from ecoflap_exp.results.tables import numeric

    table = pd.DataFrame({"acc": ["91.00 ± 1.41 (n=2)", "-", "failed", "+0.50"]}, index=list("abcd"), dtype=object)
    out = numeric(table)
    assert out["acc"].tolist()[0] == 91.0 and out["acc"].isna().tolist() == [False, True, True, False]
    assert out.loc["d", "acc"] == 0.5


def record_of(method, sparsity, seed, value, achieved=None):
    return {"id": f"{method}{sparsity}{seed}", "status": "ok", "model": "m", "method": method,
            "config": {"sparsity": sparsity, "seed": seed, "nm": None, "experiment_name": "e"},
            "achieved": {"overall": sparsity if achieved is None else achieved, "prunable_params": 2},
            "metrics": {"acc": value}}


def test_seeds_are_aggregated_and_a_sparse_checkpoint_is_not_dense():
    rows = [record_of("wanda", 0.5, 0, 90.0), record_of("wanda", 0.5, 1, 92.0),
            record_of("dense", 0, 0, 96.0), record_of("as-loaded", 0, 0, 91.0, achieved=0.5)]
    table = experiment_table(frame(loaded(rows)), "e")  # one pruned point: dense and pruned folded into one column
    assert table.loc["wanda", "acc"] == "91.00 ± 1.41 (n=2)"
    assert (table.loc["as-loaded", "acc"], table.loc["dense", "acc"]) == ("91.00", "96.00")
    swept = experiment_table(frame(loaded([*rows, record_of("wanda", 0.7, 0, 50.0)])), "e")
    assert swept.loc["as-loaded", "p0.5/acc"] == "91.00" and swept.loc["as-loaded", "p0/acc"] == "-"
