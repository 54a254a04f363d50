"""Sweeps, experiment configs, tables, plots and W&B logging."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import write_image_folder
from hydra import compose, initialize_config_dir
from test_run import tiny_defaults

from ecoflap_exp.runner import run
from ecoflap_exp.tables import PAPER, write_tables

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
#: what makes each experiment's point run on tiny models and fixtures
TINY = {
    "llama_7b": ["model=llama_tiny", "calib=shipped_text", "suite=shipped_text"],
    "vit_b16": ["model=vit_tiny", "calib.num_samples=8"],
}


def cli(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"paths.root={tmp_path}", "device=cpu",
                           *tiny_defaults(args)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


def records(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "runs").glob("*.json"))]


@pytest.mark.slow
def test_grid_with_a_failing_point_records_everything_and_tables_match(tmp_path):
    # nm=3:5 fails inside the run (64 input columns are not a multiple of 5); N:M ignores sparsity,
    # so its two sparsities are one run
    result = cli(tmp_path, "--multirun", "pruner=wanda,magnitude", "sparsity=0.3,0.5", "nm=null,3:5")
    assert result.returncode == 0, result.stderr
    recs = records(tmp_path)
    assert len(recs) == 6
    failed = [r for r in recs if r["status"] == "failed"]
    assert len(failed) == 2 and all("not a multiple of 5" in r["error"] for r in failed)
    tables = write_tables(tmp_path / "results" / "runs", tmp_path / "results")
    table = tables["default"]
    for r in recs:
        if r["status"] != "ok":
            continue
        method = r["config"]["pruner"]["_target_"].rsplit(".", 1)[-1].removesuffix("Pruner").lower()
        assert table.loc[method, f"p{r['config']['sparsity']:g}/text/ppl"] == f"{r['metrics']['text/ppl']:.2f}"
    assert (table["nm3:5/text/ppl"] == "failed").all()
    markdown = (tmp_path / "results" / "tables" / "default.md").read_text()
    assert "failed" in markdown and table.loc["wanda", "p0.3/text/ppl"] in markdown
    assert (tmp_path / "results" / "tables" / "default.tex").stat().st_size > 0
    assert (tmp_path / "results" / "plots" / "default.png").stat().st_size > 1000


def test_corrupt_record_is_reported_and_the_rest_still_tabulated(tmp_path, caplog):
    runs = tmp_path / "runs"
    run(compose_config(tmp_path, "sparsity=0.5", f"paths.results_dir={runs}"))
    (runs / "broken.json").write_text('{"id": "broken", "config": ')
    tables = write_tables(runs, tmp_path / "out")
    assert "broken.json" in caplog.text
    assert tables["default"].loc["wanda", "text/ppl"] != "-"


def test_missing_points_show_as_dash_and_paper_rows_show_the_difference(tmp_path):
    runs = tmp_path / "runs"
    for overrides in (["pruner=wanda", "sparsity=0.5"], ["pruner=sparsegpt", "sparsity=0.7"]):
        run(compose_config(tmp_path, *overrides, "experiment_name=llama_wikitext", f"paths.results_dir={runs}",
                           "evals=null", "+evals.wikitext2={_target_: ecoflap_exp.evals.perplexity.Perplexity, "
                           "source: 'shipped:evaluation', seqlen: 128}"))
    table = write_tables(runs, tmp_path / "out")["llama_wikitext"]
    assert table.loc["wanda", "p0.7/wikitext2/ppl"] == "-"
    ours = float(table.loc["wanda", "p0.5/wikitext2/ppl"])
    paper = PAPER["llama_wikitext"]["wanda"]["p0.5/wikitext2/ppl"]
    assert table.loc["wanda (paper)", "p0.5/wikitext2/ppl"] == f"{paper:.2f}"
    assert table.loc["wanda (ours - paper)", "p0.5/wikitext2/ppl"] == f"{ours - paper:+.2f}"


def compose_config(tmp_path, *overrides, tiny=True):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", [f"paths.root={tmp_path}", f"paths.data_root={tmp_path}/data", "device=cpu",
                                  *(tiny_defaults(overrides) if tiny else []), *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_one_point_on_tiny_models(tmp_path, experiment):
    write_image_folder(tmp_path / "data" / "imagenet" / "train")
    write_image_folder(tmp_path / "data" / "imagenet" / "val", seed=1)
    cfg = compose_config(tmp_path, f"experiment={experiment}", tiny=False)
    tiny = TINY.get(cfg.model.get("arch"), [])
    cfg = compose_config(tmp_path, f"experiment={experiment}", *tiny, "sparsity=0.5", tiny=False)
    record = run(cfg)
    assert record["status"] == "ok" and record["config"]["experiment_name"] == cfg.experiment_name


@pytest.mark.slow
def test_wandb_offline_logs_the_record(tmp_path):
    os.environ["WANDB_MODE"] = "offline"
    try:
        record = run(compose_config(tmp_path, "logger=wandb", f"logger.dir={tmp_path}", "logger.mode=offline",
                                    "scorer=first", "sparsity=0.6"))
    finally:
        os.environ["WANDB_MODE"] = "disabled"
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{record['id']}")
    (table_file,) = (run_dir / "files" / "media" / "table").glob("plan_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["group", "sparsity", "score"]
    assert {row[0]: row[1] for row in table["data"]} == pytest.approx(record["plan"])
    logged = (run_dir / f"run-{record['id']}.wandb").read_bytes()  # the offline run log (protobuf)
    for text in ("metrics/text/ppl", "sparsity/achieved", "time_s/prune", "FirstOrderScorer", "peak_rss_gb"):
        assert text.encode() in logged


def test_dense_runs_do_not_depend_on_the_pruning_settings(tmp_path):
    first = run(compose_config(tmp_path, "sparsity=0", "pruner=wanda"))
    again = run(compose_config(tmp_path, "sparsity=0", "pruner=sparsegpt", "scorer=first"))
    assert again["id"] == first["id"] and again["started"] == first["started"]


@pytest.mark.parametrize(("launcher", "target"), [("slurm", "SlurmLauncher"), ("joblib", "JoblibLauncher")])
def test_launcher_configs_compose(launcher, target):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1
