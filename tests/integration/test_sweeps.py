"""Sweeps, experiment configs, tables, plots and W&B logging."""

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from ecoflap_exp.results.paper import COOP_DATASETS, LAYOUTS, PAPER
from ecoflap_exp.results.tables import write_tables
from ecoflap_exp.runner import run
from ecoflap_exp.tracking.wandb_logger import record_from_run
from tests.fixtures import write_caption_pairs, write_image_folder, write_llava_conversations
from tests.fixtures_captioning import write_coco_karpathy, write_nocaps
from tests.fixtures_coop import write_coop
from tests.fixtures_flickr import write_flickr30k
from tests.fixtures_vqa import write_gqa, write_textvqa, write_vqa
from tests.integration.test_run import tiny_defaults
from tests.tracking.test_wandb_logger import FakeApi

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
#: an experiment's model config -> the tiny stand-in (and calibration sizes its fixtures hold)
TINY = {
    "llama_7b": ["model=llama_tiny", "calib=shipped_text", "suite=shipped_text"],
    "llama2_7b": ["model=llama_tiny", "calib=shipped_text", "suite=shipped_text"],
    "vit_b16": ["model=vit_tiny", "calib.num_samples=8"],
    "blip2_t5": ["model=blip2_t5_tiny", "calib.num_samples=8", "calib.batch_size=4"],
    "clip_vitb16": ["model=clip_tiny", "calib.num_samples=4", "calib.batch_size=2"],
    # the fine-tuning experiments: the fixtures' training splits hold 2 (COCO) and 1 (Flickr30k) captions
    "blip_caption_coco": ["model=blip_caption_tiny", "calib=coco_karpathy_train", "calib.num_samples=2",
                          "calib.batch_size=2", "finetune.batch_size=2"],
    # the conversation fixture holds 4 entries with images
    "llava_15_7b": ["model=llava_tiny", "calib.num_samples=4", "calib.batch_size=2"],
    "qwen2_vl_7b": ["model=qwen2vl_tiny", "calib.num_samples=4", "calib.batch_size=2"],
    "qwen2_5_vl_7b": ["model=qwen25vl_tiny", "calib.num_samples=4", "calib.batch_size=2"],
    "internvl3_8b": ["model=internvl3_tiny", "calib.num_samples=4", "calib.batch_size=2"],
    "gemma3_4b": ["model=gemma3_tiny", "calib.num_samples=4", "calib.batch_size=2"],
    "llava_onevision_7b": ["model=onevision_tiny", "calib.num_samples=4", "calib.batch_size=2"],
    "clip_vitl14_336": ["model=clip_tiny", "calib=flickr30k_train", "calib.num_samples=1", "calib.batch_size=1",
                        "finetune.batch_size=1"],
}
#: per experiment, what its first point needs on the tiny stand-ins and fixtures: the COCO-finetuned companions
#: that score NoCaps and Flickr30k in Table 1, OK-VQA's lemmatiser without spaCy's model (not installable
#: offline), zeroth-order scores from the 2 captions the COCO fixture's training split holds
PER_EXPERIMENT = {"table1_blip2": ["model@evals.nocaps.companion=blip2_t5_tiny",
                                   "model@evals.flickr30k.companion=blip2_itm_tiny",
                                   "evals.okvqa.lemmatiser=lemminflect"],
                  "ecoflap_finetune_blip": ["scorer.num_samples=2"]}


def cli(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"paths.root={tmp_path}", "device=cpu",
                           *tiny_defaults(args)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


def records(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "runs").glob("*.json"))]


@pytest.mark.slow
def test_grid_with_config_error_points_runs_the_rest_and_tables_match(tmp_path):
    # nm=3:5 beside sparsity=0.3 contradicts it, and beside 0.4 does not fit 64 input columns (found as
    # the model loads): config errors, no records; the sweep goes on, its exit status says points failed
    result = cli(tmp_path, "--multirun", "pruner=wanda,magnitude", "sparsity=0.3,0.4", "nm=null,3:5")
    assert result.returncode == 1, result.stderr
    assert "8 points: 4 ok, 0 skipped, 4 config_error, 0 failed" in result.stderr
    assert "fixes the sparsity at 0.4, but sparsity=0.3" in result.stderr and "not a multiple of 5" in result.stderr
    recs = records(tmp_path)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    tables = write_tables(tmp_path / "results" / "runs", tmp_path / "results")
    table = tables["default"]
    for r in recs:
        if r["status"] != "ok":
            continue
        method = r["config"]["pruner"]["_target_"].rsplit(".", 1)[-1].removesuffix("Pruner").lower()
        assert table.loc[method, f"p{r['config']['sparsity']:g}/text/ppl"] == f"{r['metrics']['text/ppl']:.2f}"
    assert "nm3:5/text/ppl" not in table.columns
    markdown = (tmp_path / "results" / "tables" / "default.md").read_text()
    assert table.loc["wanda", "p0.3/text/ppl"] in markdown
    assert (tmp_path / "results" / "tables" / "default.tex").stat().st_size > 0
    assert (tmp_path / "results" / "plots" / "default.png").stat().st_size > 1000


def test_corrupt_record_is_reported_and_the_rest_still_tabulated(tmp_path, caplog):
    runs = tmp_path / "runs"
    run(compose_config(tmp_path, "sparsity=0.5", f"paths.results_dir={runs}"))
    (runs / "broken.json").write_text('{"id": "broken", "config": ')
    tables = write_tables(runs, tmp_path / "out")
    assert "broken.json" in caplog.text
    assert tables["default"].loc["wanda", "text/ppl"] != "-"


def test_the_methods_table_sets_each_methods_published_rows_beside_ours(tmp_path):
    """experiment=methods_llama's table on tiny runs of DSnoT and RIA at 70%: each method's row, and the
    published DSnoT (62.05, zyxxmu/DSnoT Table 2) and Wanda (85.77, OWL's README) rows beside them."""
    runs = tmp_path / "runs"
    for method in ("dsnot", "ria"):
        run(compose_config(tmp_path, f"+experiment/method={method}", "sparsity=0.7", "experiment_name=methods_llama",
                           f"paths.results_dir={runs}", "evals=null",
                           "+evals.wikitext2={_target_: ecoflap_exp.evals.perplexity.Perplexity, "
                           "source: 'shipped:evaluation', seqlen: 128}"))
    table = write_tables(runs, tmp_path / "out")["methods_llama"]  # one point: its columns are the metrics
    assert table.loc["dsnot (paper)", "wikitext2/ppl"] == "62.05"
    assert table.loc["wanda (paper)", "wikitext2/ppl"] == "85.77"
    ours = float(table.loc["dsnot", "wikitext2/ppl"])
    assert table.loc["dsnot (ours - paper)", "wikitext2/ppl"] == f"{ours - 62.05:+.2f}"
    assert float(table.loc["ria", "wikitext2/ppl"]) > 0 and "ria (paper)" not in table.index


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


def write_fixture_data(root: Path) -> None:
    """Every file the experiment configs read, tiny, in the released layouts under the data root."""
    write_image_folder(root / "imagenet" / "train")
    write_image_folder(root / "imagenet" / "val", seed=1)
    write_caption_pairs(root / "cc3m")
    (root / "cc3m" / "pairs.tsv").rename(root / "cc3m" / "cc3m.tsv")
    write_vqa(root, "vqav2")
    write_vqa(root, "okvqa")
    write_gqa(root)
    write_nocaps(root)
    flickr = write_flickr30k(root, [["a red car on a road", "a car"], ["two dogs playing"], ["a bowl of fruit",
                                                                                          "fruit"]])
    shutil.copy(flickr["karpathy"], root / "flickr30k" / "annotations" / "dataset_flickr30k.json")
    write_coco_karpathy(root)
    write_coop(root, "caltech101")
    write_textvqa(root)
    write_llava_conversations(root / "llava")


def first_point(experiment: str) -> tuple[str, list[str]]:
    """The experiment's model config and the overrides of the first point of its sweep (sparsity
    left to the caller)."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}"], return_hydra_config=True)
    overrides = []
    for key, value in (cfg.hydra.sweeper.params or {}).items():
        (override,) = OverridesParser.create().parse_overrides([f"{key}={value}"])
        if key != "sparsity":
            overrides.append(f"{key}={next(iter(override.sweep_string_iterator()))}")
    return cfg.hydra.runtime.choices.model, overrides


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_its_first_point_on_tiny_models(tmp_path, experiment):
    write_fixture_data(tmp_path / "data")
    model, point = first_point(experiment)
    cfg = compose_config(tmp_path, f"experiment={experiment}", *point, *TINY.get(model, []),
                         *PER_EXPERIMENT.get(experiment, []), "sparsity=0.5", tiny=False)
    record = run(cfg)
    assert record.config["experiment_name"] == cfg.experiment_name
    assert len({m.split("/", 1)[0] for m in record.metrics}) == len(cfg.evals)  # every eval reported
    # the metrics the paper rows compare with are the names the evals return (SPICE needs CoreNLP jars),
    # wherever the tiny stand-in keeps the experiment's suite
    if cfg.experiment_name in PAPER and not any(o.startswith("suite=") for o in TINY.get(model, [])):
        paper_metrics = {key.split("/", 1)[1] for cells in PAPER[cfg.experiment_name].values() for key in cells}
        prefixes = {m.split("/", 1)[0] for m in record.metrics}
        expected = {m for m in paper_metrics if m.split("/", 1)[0] in prefixes} - {"nocaps/spice"}
        assert expected and expected <= set(record.metrics)


def test_the_paper_suite_lists_the_five_table1_tasks_under_their_metric_prefixes():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", ["experiment=table1_blip2"])
    evaluations = {name: ev.get("evaluation", ev) for name, ev in cfg.evals.items()}
    assert {name: ev._target_.rsplit(".", 1)[-1] for name, ev in evaluations.items()} == {
        "vqav2": "VQAAccuracy", "okvqa": "VQAAccuracy", "gqa": "GQAAccuracy", "nocaps": "NoCapsCaptioning",
        "flickr30k": "ImageTextRetrieval"}
    assert evaluations["flickr30k"].protocol == "itm" and cfg.evals.okvqa.dataset == "okvqa"
    # NoCaps and Flickr30k run on the COCO-finetuned companions, which receive the pruned weights
    assert cfg.evals.nocaps.companion.checkpoint == "Salesforce/blip2-flan-t5-xl-coco"
    assert cfg.evals.flickr30k.companion.checkpoint == "Salesforce/blip2-itm-vit-g-coco"
    # each companion receives the key set the official evaluation transfers (its transfer_prefixes)
    assert cfg.evals.nocaps.transfer is None and cfg.evals.flickr30k.transfer is None
    assert {m.split("/", 1)[0] for cells in PAPER["table1_blip2"].values() for m in cells
            if m.count("/") == 2} == {"p0", "p0.5"}
    assert {m.split("/")[1] for cells in PAPER["table1_blip2"].values() for m in cells
            if m.count("/") == 2} == set(cfg.evals)


@pytest.mark.parametrize(
    ("method", "scorer", "pruner", "samples", "batch"),
    [("wanda", "UniformScorer", "WandaPruner", None, 8), ("sparsegpt", "UniformScorer", "SparseGPTPruner", None, 8),
     # ECoFLaP's BLIP-2 scripts: first-order 128 samples in batches of 1, zeroth-order 32 in batches of 8
     ("ecoflap_first", "FirstOrderScorer", "WandaPruner", 128, 1),
     ("ecoflap_zeroth", "ZerothOrderScorer", "WandaPruner", 32, 8),
     ("ecoflap_zeroth_blip2", "ZerothOrderScorer", "WandaPruner", 32, 8)],
)
def test_method_presets_set_the_papers_settings(method, scorer, pruner, samples, batch):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", ["experiment=table1_blip2", f"+experiment/method={method}"])
    assert cfg.scorer._target_.endswith(scorer) and cfg.pruner._target_.endswith(pruner)
    assert cfg.scorer.get("num_samples") == samples and cfg.calib.batch_size == batch
    assert cfg.calib.num_samples == 128 and cfg.max_sparsity_delta == 0.1
    # ecoflap_zeroth.py hooks every position of its batches of 8 (the BLIP-2 tables' point); the batch-1
    # scripts see no pads, and the chat models' experiments keep pads out with the same zeroth-order settings
    assert cfg.pads_in_stats == (method == "ecoflap_zeroth_blip2")
    # the BLIP-2 script iterates its DataLoader anew (fresh training views and prefix splits) for each
    # zeroth-order matrix and each tower, whatever the method
    assert cfg.redraw_calibration is True
    # ECoFLaP's fork damps SparseGPT only where the Cholesky fails
    assert cfg.pruner.get("damping") == ("ecoflap" if method == "sparsegpt" else None)


def test_the_ecoflap_clip_rows_run_as_coops_pruner():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", ["experiment=table2_clip", "pruner=sparsegpt_ecoflap"])
        asymmetry = compose("config", ["experiment=id_asymmetry_clip"])
        llama = compose("config", ["experiment=llama_wikitext", "pruner=sparsegpt"])
        table1 = compose("config", ["experiment=table1_blip2"], return_hydra_config=True)
    assert cfg.model.text_attention_stats == "unmasked" and cfg.pruner.damping == "ecoflap"
    assert asymmetry.model.text_attention_stats == "causal"  # the ID paper's experiment is not CoOp's
    assert "ecoflap_zeroth_blip2" in table1.hydra.sweeper.params["+experiment/method"]
    assert llama.pruner.damping == "ist"  # Wanda's and SparseGPT's LLaMA scripts always damp


@pytest.mark.parametrize("dataset", COOP_DATASETS)
def test_table2_point_calibrates_and_evaluates_on_one_dataset(dataset):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", ["experiment=table2_clip", f"calib.dataset={dataset}", "scorer=zeroth"])
    # one eval, on the calibration's dataset (its metrics are named by the dataset: <dataset>/top1)
    assert cfg.calib.dataset == dataset and list(cfg.evals) == ["coop"] and cfg.evals.coop.dataset == dataset
    assert cfg.calib.batch_size == 16 and cfg.scorer.num_samples == 32  # ECoFLaP's CLIP script


def test_tables_know_every_experiment_they_lay_out():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        names = {compose("config", [f"experiment={e}"]).experiment_name for e in EXPERIMENTS}
    assert set(PAPER) | set(LAYOUTS) <= names


def offline_log(path: Path) -> list:
    """The records of a W&B offline run log (run-<id>.wandb): a 7-byte header, then LevelDB-log
    chunks (4-byte CRC, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last) in 32 KiB
    blocks, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks, records = 7, [], []
    while pos + 7 <= len(data):
        if (room := 32768 - pos % 32768) < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(b"".join(chunks)))
            chunks = []
    return records


def apply_updates(target: dict, items) -> None:
    for item in items:
        keys = list(item.nested_key) or [item.key]
        node = target
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = json.loads(item.value_json)


def as_public_api_run(log_records) -> SimpleNamespace:
    """What wandb.Api().runs() would return for this run once synced: config and summary are the
    run's config and summary updates applied in order."""
    config, summary = {}, {}
    for r in log_records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            apply_updates(config, r.run.config.update)
            run = r.run
        elif kind == "config":
            apply_updates(config, r.config.update)
        elif kind == "summary":
            apply_updates(summary, r.summary.update)
    return SimpleNamespace(id=run.run_id, name=run.display_name, group=run.run_group, state="finished",
                           config=config, summary=summary)


def run_offline_wandb(cfg) -> dict:
    """run(cfg) with W&B logging offline (the tests otherwise disable it)."""
    os.environ["WANDB_MODE"] = "offline"
    try:
        return run(cfg)
    finally:
        os.environ["WANDB_MODE"] = "disabled"


@pytest.mark.slow
def test_wandb_offline_logs_the_record_and_it_reads_back(tmp_path):
    record = run_offline_wandb(compose_config(tmp_path, "logger=wandb", f"logger.dir={tmp_path}",
                                              "logger.mode=offline", "scorer=first", "sparsity=0.6",
                                              "experiment_name=wb", "save_model=true"))
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{record.id}")
    (table_file,) = (run_dir / "files" / "media" / "table").glob("block_sparsity_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["group", "tower", "planned", "achieved", "score"]
    assert {row[0]: row[2] for row in table["data"]} == pytest.approx(record.plan)
    assert {row[0]: row[3] for row in table["data"]} == pytest.approx(record.achieved.per_block)
    assert {row[0]: row[4] for row in table["data"]} == pytest.approx(record.scores)
    assert {row[1] for row in table["data"]} == {"decoder"}
    log_records = offline_log(run_dir / f"run-{record.id}.wandb")
    artifacts = {r.artifact.name: r.artifact for r in log_records if r.WhichOneof("record_type") == "artifact"}
    assert artifacts[f"record-{record.id}"].type == "run-record"
    model = artifacts[f"model-{record.id}"]
    assert model.type == "model" and {"pruning.json", "README.md", "config.json"} <= {
        e.path for e in model.manifest.contents}
    wandb_run = as_public_api_run(log_records)
    assert wandb_run.group == "wb" and wandb_run.name == "llama_tiny-ecoflap-first+wanda-p0.6"  # no Hydra overrides
    assert wandb_run.summary["block_sparsity_chart_table"]["_type"] == "table-file"  # the bar chart's data
    for key in ("metrics/text/ppl", "time_s/prune", "time_s/eval", "peak_rss_gb", "sparsity/achieved"):
        assert key in wandb_run.summary
    back = record_from_run(wandb_run)
    assert back["config"] == json.loads(json.dumps(record.config))
    for key in ("id", "status", "metrics", "plan", "scores", "target", "timings_s", "peak_gpu_gb"):
        assert back[key] == pytest.approx(record.as_json()[key]), key
    assert back["achieved"]["per_block"] == pytest.approx(record.achieved.per_block)
    tables = write_tables(tmp_path / "nothing", tmp_path / "out", ["me/project"], FakeApi([wandb_run]))
    assert tables["wb"].loc["ecoflap-first+wanda", "text/ppl"] == f"{record.metrics['text/ppl']:.2f}"


@pytest.mark.slow
def test_wandb_run_of_a_sweep_point_is_named_from_its_overrides_and_grouped(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    args = ["--multirun", "sparsity=0.3", "experiment_name=named", "logger=wandb", f"logger.dir={tmp_path}",
            f"paths.root={tmp_path}", "device=cpu", *tiny_defaults([])]
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    (log_file,) = (tmp_path / "wandb").glob("offline-run-*/*.wandb")
    wandb_run = as_public_api_run(offline_log(log_file))
    # paths and the logger settings are no part of a run's identity, so they are not in the name
    assert wandb_run.name == ("sparsity=0.3,experiment_name=named,device=cpu,model=llama_tiny,calib=shipped_text,"
                              "suite=shipped_text")
    assert wandb_run.group == "named"


def test_dense_runs_do_not_depend_on_the_pruning_settings(tmp_path):
    first = run(compose_config(tmp_path, "sparsity=0", "pruner=wanda"))
    again = run(compose_config(tmp_path, "sparsity=0", "pruner=sparsegpt", "scorer=first"))
    assert again.id == first.id and again.started == first.started


@pytest.mark.parametrize(("launcher", "target"), [("slurm", "SlurmLauncher"), ("joblib", "JoblibLauncher")])
def test_launcher_configs_compose(launcher, target):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1
