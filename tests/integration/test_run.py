"""End-to-end runs through the Hydra config and run.py on tiny models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from transformers import AutoModelForCausalLM

from ecoflap_exp.errors import UserError
from ecoflap_exp.runner import run
from tests.fixtures import write_caption_pairs, write_image_folder

ROOT = Path(__file__).resolve().parents[2]


#: most tests run the tiny LLaMA on the shipped text unless they choose a model, calib or suite
TINY_TEXT = {"model": "llama_tiny", "calib": "shipped_text", "suite": "shipped_text"}


def tiny_defaults(overrides) -> list[str]:
    return [f"{group}={choice}" for group, choice in TINY_TEXT.items()
            if not any(o.startswith(f"{group}=") for o in overrides)]


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", [f"paths.root={tmp_path}", f"paths.data_root={tmp_path}/data", "device=cpu",
                                  *tiny_defaults(overrides), *overrides])


def records(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "runs").glob("*.json"))]


def cli(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"paths.root={tmp_path}", "device=cpu",
                           *tiny_defaults(args)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt", "magnitude"])
def test_tiny_llama_run_reaches_the_plan_and_records_it(tmp_path, pruner):
    record = run(config(tmp_path, f"pruner={pruner}", "sparsity=0.6"))
    assert record.achieved.overall == pytest.approx(0.6, abs=1e-4)
    assert set(record.plan.values()) == {0.6}
    assert record.metrics["text/ppl"] > 1
    assert {"load", "calibrate", "score", "prune", "verify", "eval"} <= set(record.timings_s)
    assert record.versions["torch"] == torch.__version__
    assert records(tmp_path) == [json.loads(json.dumps(record.as_json(), default=str))]


@pytest.mark.slow
def test_nm_run_and_dense_run(tmp_path):
    nm = run(config(tmp_path, "nm=2:4", "pruner=sparsegpt"))
    assert nm.target.model_dump() == {"sparsity": 0.5, "max_sparsity": pytest.approx(0.6), "nm": "2:4"}
    assert nm.achieved.overall == pytest.approx(0.5)
    dense = run(config(tmp_path, "sparsity=0"))
    assert dense.plan == {} and dense.achieved.overall == 0.0
    assert dense.metrics["text/ppl"] < nm.metrics["text/ppl"]


@pytest.mark.slow
def test_identical_rerun_is_skipped_unless_forced(tmp_path):
    first = run(config(tmp_path, "sparsity=0.3"))
    again = run(config(tmp_path, "sparsity=0.3"))
    assert again.started == first.started and again.id == first.id
    forced = run(config(tmp_path, "sparsity=0.3", "force=true"))
    assert forced.id == first.id and len(records(tmp_path)) == 1
    assert forced.metrics == pytest.approx(first.metrics)  # same seed, same result


@pytest.mark.slow
def test_saved_model_loads_back_with_the_same_weights(tmp_path):
    record = run(config(tmp_path, "save_model=true", "sparsity=0.5"))
    folder = Path(record.saved_model)
    saved = json.loads((folder / "pruning.json").read_text())
    assert saved["plan"] == record.plan
    model = AutoModelForCausalLM.from_pretrained(folder)
    layers = model.model.layers
    zeros = sum(int((m.weight == 0).sum()) for layer in layers for m in layer.modules()
                if isinstance(m, torch.nn.Linear))
    total = sum(m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert zeros / total == pytest.approx(record.achieved.overall)
    assert zeros / total == pytest.approx(0.5)


@pytest.mark.slow
def test_multirun_writes_one_record_per_point_and_rerun_skips(tmp_path):
    args = ["--multirun", "sparsity=0.3,0.5"]
    first = cli(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    recs = records(tmp_path)
    assert sorted(r["target"]["sparsity"] for r in recs) == [0.3, 0.5]
    assert all(r["status"] == "ok" for r in recs)
    second = cli(tmp_path, *args)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("already finished") == 2
    assert records(tmp_path) == recs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sparsity=1.0"], r"sparsity=1.0 is not valid: input should be less than 1; e.g. sparsity=0.5"),
        (["sparsity=-0.2"], r"sparsity=-0.2 is not valid: input should be greater than or equal to 0"),
        (["nm=4:2"], "0 < N < M"),
        (["max_sparsity=0.3"], "max_sparsity=0.3 must lie in"),
        (["model.init=pretrained", "model.checkpoint=/no/such/model"], "/no/such/model' does not exist"),
        (["calib.num_samples=2", "calib.batch_size=4"], "fewer than one batch"),
        (["calib.source=/no/such/text.txt"], "/no/such/text.txt' does not exist"),
        (["model.dtype=float8"], "model.dtype='float8' is unknown"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(config(tmp_path, *overrides))


@pytest.mark.parametrize("group", ["model", "pruner", "scorer"])
def test_unknown_plugin_name_lists_the_known_ones(tmp_path, group):
    with pytest.raises(MissingConfigException, match=f"Could not find '{group}/nope'"):
        config(tmp_path, f"{group}=nope")


@pytest.mark.slow
def test_cli_error_is_one_line_without_a_traceback(tmp_path):
    result = cli(tmp_path, "sparsity=1.5")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: sparsity=1.5 is not valid: input should be less than 1; e.g. sparsity=0.5"
    assert "Traceback" not in result.stderr
    failed = records(tmp_path)
    assert failed == []  # config errors stop before a run exists


@pytest.mark.slow
def test_a_missing_eval_file_is_a_config_error_and_leaves_no_record(tmp_path):
    with pytest.raises(UserError, match="/no/such/eval.txt"):
        run(config(tmp_path, "evals.text.source=/no/such/eval.txt"))
    assert records(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [["scorer=first"], ["scorer=zeroth", "scorer.num_samples=8"], ["scorer=id"], ["scorer=id_zeroth"],
     ["scorer=id_first"], ["scorer=owl"], ["scorer=id", "allocation=global"],
     ["scorer=first", "allocation.scope=per_tower", "pruner=sparsegpt"]],
)
def test_every_scorer_runs_and_gives_a_non_uniform_plan(tmp_path, overrides):
    record = run(config(tmp_path, *overrides, "sparsity=0.6", "model.arch_overrides={num_hidden_layers: 4}"))
    plan = record.plan
    assert len(set(plan.values())) > 1
    assert record.achieved.overall == pytest.approx(0.6, abs=1e-4)
    assert len(record.scores) == len(plan) or overrides[-1] == "allocation=global"


def test_nm_needs_the_uniform_scorer(tmp_path):
    with pytest.raises(UserError, match="use scorer=uniform with N:M"):
        run(config(tmp_path, "nm=2:4", "scorer=first"))


def test_global_baseline_without_ids_needs_the_uniform_scorer(tmp_path):
    with pytest.raises(UserError, match="use_id=false.*use scorer=uniform"):
        run(config(tmp_path, "scorer=id", "allocation=global", "allocation.use_id=false"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit_tiny", "timm_vit_tiny"])
def test_tiny_vit_end_to_end(tmp_path, model):
    root = write_image_folder(tmp_path / "data" / "imagenet" / "val")
    write_image_folder(tmp_path / "data" / "imagenet" / "train", seed=1)
    record = run(config(tmp_path, f"model={model}", "calib=image_folder", "calib.num_samples=8", "calib.batch_size=4",
                        "suite=vit", "pruner=sparsegpt", "sparsity=0.5"))
    assert record.achieved.overall == pytest.approx(0.5)
    assert 0 <= record.metrics["imagenet/top1"] <= 100
    assert str(root).startswith(str(tmp_path))


def test_eval_that_does_not_fit_the_model_is_a_clear_error(tmp_path):
    write_image_folder(tmp_path / "data" / "imagenet" / "val", per_class=1)
    with pytest.raises(UserError, match=r"evals.imagenet \(Top1Accuracy\) needs a model with ClassLogits "
                                        r"\(logits\), which CausalLMAdapter lacks"):
        run(config(tmp_path, "suite=vit"))
    with pytest.raises(UserError, match="calib .TextCalibration. gives tokens but HFViTAdapter calibrates on "
                                        "labelled_images; choose a calib made for this model"):
        run(config(tmp_path, "model=vit_tiny", "calib=shipped_text"))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["clip_tiny", "hf_clip_tiny"])
def test_clip_end_to_end_and_calibration_that_does_not_fit(tmp_path, model):
    write_caption_pairs(tmp_path / "data" / "cc3m")
    (tmp_path / "data" / "cc3m" / "pairs.tsv").rename(tmp_path / "data" / "cc3m" / "cc3m.tsv")
    write_caption_pairs(tmp_path / "data" / "retrieval", seed=1)
    (tmp_path / "data" / "retrieval" / "captions.json").rename(tmp_path / "data" / "retrieval" / "test.json")
    write_image_folder(tmp_path / "data" / "zero_shot" / "test")
    common = ["calib=cc3m", "calib.num_samples=8", "calib.batch_size=4"]
    record = run(config(tmp_path, f"model={model}", "scorer=zeroth", "scorer.num_samples=8", *common,
                        "suite=clip_basic", "sparsity=0.4"))
    assert record.achieved.overall == pytest.approx(0.4, abs=1e-3)  # per-matrix rounding of 1024-weight matrices
    assert {m.tower for m in record.matrices} == {"vision", "text"}
    assert 0 <= record.metrics["zero_shot/top1"] <= 100 and record.metrics["retrieval/tr@10"] == 100.0
    with pytest.raises(UserError, match="gives image_captions but CausalLMAdapter calibrates on tokens"):
        run(config(tmp_path, *common, "suite=none"))


@pytest.mark.parametrize(
    ("overrides", "name"),
    [(["model=llama_7b", "calib=shipped_text", "suite=shipped_text"], "huggyllama/llama-7b"),
     (["model=vit_b16", "calib=synthetic_images", "suite=none"], "google/vit-base-patch16-224"),
     # open_clip's tags are found only as it loads: a dense run, whose calibration (not there) is not read
     (["model=clip_vitb16", "calib=cc3m", "suite=none", "sparsity=0"], "ViT-B-16-quickgelu:openai"),
     (["model=blip2_t5", "calib=cc3m", "suite=none"], "Salesforce/blip2-flan-t5-xl"),
     (["model=blip2_itm", "calib=cc3m", "suite=none"], "Salesforce/blip2-itm-vit-g")],
)
def test_uncached_checkpoint_offline_is_one_clear_message(tmp_path, overrides, name):
    """Hub names are looked up in the local cache before anything loads; open_clip's tags when it loads."""
    at_start = f"checkpoint '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; download it first"
    with pytest.raises(UserError, match=f"could not load '{name}'.*download it first|{at_start}"):
        run(config(tmp_path, *overrides))
    assert records(tmp_path) == []


