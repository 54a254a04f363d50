"""Paper-style tables from records: derived columns, folded dense rows, memory, paper rows, W&B source."""

from types import SimpleNamespace

import pandas as pd
import pytest

from ecoflap_exp.errors import UserError
from ecoflap_exp.results.paper import COOP_DATASETS, PAPER
from ecoflap_exp.results.tables import derive, experiment_table, frame, write_tables
from ecoflap_exp.tracking.wandb_logger import override_name, record_from_run, records_from_project

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
            "target": {"sparsity": sparsity, "nm": None}, "plan": plan, "metrics": metrics,
            "achieved": {"overall": sparsity, "per_block": plan}, "peak_gpu_gb": peak_gpu_gb or {},
            **({"error": "RuntimeError: boom"} if status == "failed" else {})}


def table_of(records, experiment):
    return experiment_table(frame(records), experiment)


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


class FakeApi:
    """wandb.Api's part that make tables uses: .runs(path) -> runs with .config, .summary, .name, .state, .id."""

    def __init__(self, runs):
        self.paths, self._runs = [], runs

    def runs(self, path):
        self.paths.append(path)
        return iter(self._runs)


def as_wandb_run(rec):
    """What the public API returns for a run that WandbLogger logged (its summary keys)."""
    summary = {f"metrics/{k}": v for k, v in rec["metrics"].items()}
    summary.update(status=rec["status"], model=rec["model"], method=rec["method"], scorer=rec["scorer"],
                   target=rec["target"], plan=rec["plan"], achieved=rec["achieved"], peak_gpu_gb=rec["peak_gpu_gb"],
                   block_sparsity={"_type": "table-file"})
    return SimpleNamespace(id=rec["id"], name=f"name-{rec['id']}", state="finished", summary=summary,
                           config={**rec["config"], "_wandb": {"cli_version": "0.31"}})


def test_wandb_runs_become_records_and_join_the_local_ones(tmp_path, caplog):
    local = record("table1_blip2", 0.5, {"vqav2/accuracy": 50.0}, rid="same")
    remote_same = record("table1_blip2", 0.5, {"vqav2/accuracy": 1.0}, rid="same")  # the store wins over W&B
    remote_new = record("table1_blip2", 0.5, {"vqav2/accuracy": 58.0}, scorer="zeroth", rid="zeroth",
                        peak_gpu_gb={"score": 8.9, "prune": 8.7})
    foreign = SimpleNamespace(id="x1", name="someone-elses-run", state="crashed", summary={"loss": 1.0}, config={})
    api = FakeApi([as_wandb_run(remote_same), as_wandb_run(remote_new), foreign])
    table = write_tables_from(tmp_path, [local], wandb_projects=["me/ecoflap"], api=api)["table1_blip2"]
    assert api.paths == ["me/ecoflap"]
    assert table.loc["wanda", "vqav2/accuracy"] == "50.00"
    assert table.loc["ecoflap-zeroth+wanda", "vqav2/accuracy"] == "58.00"
    assert table.loc["ecoflap-zeroth+wanda", "prune_peak_gpu_gb"] == "8.90"
    assert "someone-elses-run" in caplog.text and "crashed" in caplog.text
    back = record_from_run(as_wandb_run(remote_new))
    assert back["config"] == remote_new["config"]  # W&B's own _wandb key dropped
    keys = ("id", "status", "model", "method", "metrics", "plan", "target")
    assert {k: back[k] for k in keys} == {k: remote_new[k] for k in keys}


def test_unreachable_wandb_project_is_one_message():
    class Offline:
        def runs(self, path):
            raise ValueError("Could not find project")

    with pytest.raises(UserError, match="could not read the W&B project 'me/nope'.*wandb login"):
        records_from_project("me/nope", Offline())


def test_run_names_come_from_the_sweep_overrides():
    """Keys outside a run's identity (the store's one list) and the experiment's name are left out;
    the device is part of the identity (a GPU run is not a CPU run)."""
    overrides = ["+experiment/method=ecoflap_zeroth", "sparsity=0.5", "paths.root=/x", "device=cuda", "offload=true",
                 "force=true", "experiment=table1_blip2", "model.prune_towers=[vision]"]
    assert override_name(overrides) == "method=ecoflap_zeroth,sparsity=0.5,device=cuda,model.prune_towers=[vision]"


def test_paper_rows_of_the_vlm_tables_use_the_record_metric_names():
    frame_metrics = set(pd.Series([m.split("/", 1)[1] for cells in PAPER["table1_blip2"].values() for m in cells]))
    assert frame_metrics == {"prune_peak_gpu_gb", "vqav2/accuracy", "okvqa/accuracy", "gqa/accuracy", "nocaps/cider",
                             "nocaps/spice", "flickr30k/tr@1", "flickr30k/ir@1", "macro_avg"}
    # the paper's own averages agree with our derived columns (to the paper's rounding)
    for method, cells in PAPER["table2_clip"].items():
        values = {k.split("/", 1)[1]: v for k, v in cells.items()}
        assert derive(values)["avg/top1"] == pytest.approx(values["avg/top1"], abs=0.05), method
    for method, cells in PAPER["table1_blip2"].items():
        values = {k.split("/", 1)[1]: v for k, v in cells.items()}
        assert derive(values)["macro_avg"] == pytest.approx(values["macro_avg"], abs=0.051), method


def test_two_models_in_one_experiment_get_a_row_each():
    records = [record("models", 0.5, {"text/ppl": 10.0}, model="llama_tiny"),
               record("models", 0.5, {"text/ppl": 12.0}, model="qwen2_tiny")]
    table = table_of(records, "models")
    assert table.loc["llama_tiny: wanda", "text/ppl"] == "10.00"
    assert table.loc["qwen2_tiny: wanda", "text/ppl"] == "12.00"
    assert table_of(records[:1], "models").index.tolist() == ["wanda"]  # one model: the method alone


def plan_record(method, sparsity, plan):
    matrices = [{"name": f"{g}.w", "block": g, "tower": "vision" if g.startswith("v") else "text"} for g in plan]
    return {"id": f"{method}{sparsity}", "status": "ok", "model": "m", "method": f"{method}+wanda",
            "config": {"sparsity": sparsity, "nm": None, "experiment_name": "e"}, "target": {"sparsity": sparsity},
            "achieved": {"overall": sparsity}, "plan": plan, "matrices": matrices, "metrics": {"acc": 50.0}}


def test_the_plan_figure_has_a_panel_per_point_blocks_in_model_order_and_a_legend(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ecoflap_exp.results.plots import plans_by_point, plot_plans

    records = [plan_record(method, p, {"v0": p - 0.1, "v1": p + 0.1, "t0": p, "t1": p})
               for p in (0.7, 0.5) for method in ("ecoflap-zeroth", "owl")]
    records.append(plan_record("ecoflap-zeroth", 0.5, {"v0": 0.1, "v1": 0.9, "t0": 0.5, "t1": 0.5}))  # a second run
    plans = plans_by_point(records)
    assert list(plans) == ["p0.5", "p0.7"] and [len(v) for v in plans.values()] == [2, 2]  # one plan per method
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_plans(plt, plans, tmp_path / "plans.png")
    [fig] = figures
    top = fig.axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == ["vis0", "vis1", "tex0", "tex1"]
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["ecoflap-zeroth", "owl", "target"]
    assert len(fig.axes) == 2 and (tmp_path / "plans.png").stat().st_size > 1000


def test_the_csv_holds_numbers_and_empty_cells():
    from ecoflap_exp.results.tables import numeric

    table = pd.DataFrame({"acc": ["91.00 ± 1.41 (n=2)", "-", "failed", "+0.50"]}, index=list("abcd"), dtype=object)
    out = numeric(table)
    assert out["acc"].tolist()[0] == 91.0 and out["acc"].isna().tolist() == [False, True, True, False]
    assert out.loc["d", "acc"] == 0.5
