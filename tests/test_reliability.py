"""Bad input and faults (issue 14): every option is checked before any work, nothing is silently
accepted or ignored, the store survives a full disk, a read-only folder and concurrent sweeps, and
a config error leaves no record."""

import errno
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from fixtures import write_caption_pairs
from hydra import compose, initialize_config_dir
from PIL import Image
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bad_inputs import BAD_INPUTS, write_bad_data  # noqa: E402

from ecoflap_exp.config_schema import TOP_LEVEL_KEYS, check_config, top_level
from ecoflap_exp.errors import ConfigError, UserError
from ecoflap_exp.results.records import load_records
from ecoflap_exp.results.tables import experiment_table, frame
from ecoflap_exp.runner import Plugins, preflight, run, validate
from ecoflap_exp.tracking import store as store_module
from ecoflap_exp.tracking.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", [f"paths.root={tmp_path}", "device=cpu", *overrides])


def records(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "runs").glob("*.json"))]


def checked(cfg):
    """What run() checks before any model loads."""
    target = validate(cfg)
    preflight(cfg, target, Plugins.build(cfg))


def cli(tmp_path, *args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"paths.root={tmp_path}", "device=cpu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=timeout, env=ENV)


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


@pytest.mark.parametrize(("what", "overrides", "expected"), BAD_INPUTS, ids=[what for what, _, _ in BAD_INPUTS])
def test_every_bad_input_of_the_troubleshooting_table_ends_as_listed(tmp_path, what, overrides, expected):
    """scripts/bad_inputs.py's inputs, in this process: each ends in the message listed for it (Hydra's
    own as it composes, ours as run() checks), in one line, and leaves no record."""
    write_bad_data(tmp_path)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - which type is the next assert's business
        run(config(tmp_path, *(o.replace("<tmp>", str(tmp_path)) for o in overrides)))
    message = str(caught.value)
    assert expected.replace("<tmp>", str(tmp_path)) in message
    assert isinstance(caught.value, UserError) == ("Could not find" not in expected)
    assert "\n" not in message or not isinstance(caught.value, UserError)
    assert records(tmp_path) == []


@pytest.mark.parametrize(("overrides", "message"), WRONG_CHOICES, ids=lambda v: " ".join(v) if isinstance(v, list)
                         else None)
def test_every_enumerated_option_fails_before_any_model_loads(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checked(config(tmp_path, *overrides))


def test_a_wrong_model_option_fails_as_the_model_is_built_and_leaves_no_record(tmp_path):
    for override, message in (("model.dtype=float64", "model.dtype='float64' is unknown; use one of"),
                              ("model.init=zeros", "model.init='zeros' is unknown")):
        with pytest.raises(UserError, match=message):
            run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", override))
    assert records(tmp_path) == []


@pytest.mark.parametrize(("overrides", "message"), [
    (["+foo=1"], "foo is not a key anything reads; known keys: allocation, cache_gb, calib"),
    (["+sparsty=0.3"], "sparsty is not a key anything reads; did you mean sparsity?"),
    (["scorer=zeroth", "+scorer.epz=0.001"], "scorer.epz is not a key anything reads; did you mean eps?"),
    (["scorer=id_zeroth", "+scorer.factors.0.epz=0.001"], "scorer.factors.0.epz is not a key .* did you mean eps?"),
    (["+pruner.blocksize=64"], "pruner.blocksize is not a key anything reads"),  # wanda has no blocksize
    (["+evals.digits.batchsize=4"], "evals.digits.batchsize is not a key .* did you mean batch_size?"),
    (["+paths.result_dir=x"], "paths.result_dir is not a key .* did you mean results_dir?"),
])
def test_a_key_nothing_reads_is_an_error_naming_the_nearest(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        validate(config(tmp_path, *overrides))


def test_the_known_top_level_keys_are_the_primary_configs():
    cfg = config(Path("/tmp"))
    assert tuple(cfg.keys()) == TOP_LEVEL_KEYS
    # the schema's defaults are configs/config.yaml's values (device=cpu is this test's override)
    defaults = {p.name: p.default for p in inspect.signature(top_level).parameters.values()}
    assert {k: v for k, v in defaults.items() if k != "device"} == {k: cfg[k] for k in defaults if k != "device"}
    for experiment in (ROOT / "configs" / "experiment").glob("*.yaml"):
        check_config(config(Path("/tmp"), f"experiment={experiment.stem}"))  # every shipped experiment passes


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


def test_a_scorer_asking_more_samples_than_the_pruner_gets_them_and_the_record_says_so(tmp_path):
    record = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "scorer=zeroth",
                        "scorer.num_samples=32", "calib.num_samples=16", "model.arch_overrides={num_hidden_layers: 1}"))
    calibration = record["calibration"]
    assert (calibration["samples"], calibration["pruner_samples"], calibration["batch_size"]) == (32, 16, 4)
    with pytest.raises(ConfigError, match="DigitsCalibration holds 1437 samples, fewer than the 5000 asked for"):
        run(config(tmp_path, "calib.num_samples=5000"))
    with pytest.raises(ConfigError, match="twonn_blocks .* needs at least 100 samples \\(got 16\\)"):
        run(config(tmp_path, "scorer=id", "scorer.estimator=twonn_blocks", "calib.num_samples=16"))
    assert len(records(tmp_path)) == 1  # the first run's only


def test_an_unwritable_results_folder_fails_at_start(tmp_path):
    (tmp_path / "results").write_text("a file where the results folder should be")
    with pytest.raises(UserError, match="results folder .* is not writable .*set paths.results_dir"):
        run(config(tmp_path))


def test_a_record_the_store_cannot_take_is_kept_elsewhere_and_counts_once_copied_back(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(elsewhere))
    real_write = ResultsStore.write

    def full(self, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ResultsStore, "write", full)
    cfg = config(tmp_path, "sparsity=0.3", "model=llama_tiny", "calib=shipped_text", "suite=shipped_text")
    with pytest.raises(UserError, match=r"the whole record is in .*elsewhere/ecoflap-record-(\w+)\.json: copy it to "
                                        r".*results/runs/\1\.json once there is room"):
        run(cfg)
    (kept,) = elsewhere.glob("ecoflap-record-*.json")
    rid = kept.stem.removeprefix("ecoflap-record-")
    monkeypatch.setattr(ResultsStore, "write", real_write)
    (tmp_path / "results" / "runs" / f"{rid}.json").write_text(kept.read_text())
    assert run(cfg)["achieved"]["overall"] == pytest.approx(0.3, abs=1e-3)  # skipped: it counts as finished
    assert len(records(tmp_path)) == 1


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_final_write_names_the_path_prints_the_metrics_and_leaves_no_temporary(tmp_path, monkeypatch,
                                                                                        capsys, code):
    def full(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module.os, "replace", full)
    with pytest.raises(UserError, match=r"could not be written to .*results/runs/\w+\.json \(OSError: "
                       + os.strerror(code)):
        run(config(tmp_path, "sparsity=0.3", "model=llama_tiny", "calib=shipped_text", "suite=shipped_text"))
    printed = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert printed["metrics"]["text/ppl"] > 1 and printed["achieved"] == pytest.approx(0.3, abs=1e-3)
    assert list((tmp_path / "results" / "runs").iterdir()) == []  # no record, no temporary, no claim


def test_a_claim_of_a_live_process_holds_and_one_of_a_dead_process_is_taken_over(tmp_path):
    store = ResultsStore(tmp_path)
    with store.claim("abc") as holder:
        assert holder is None
        with store.claim("abc") as other:  # this process itself is alive: the second claim waits its turn
            assert other["pid"] == os.getpid()
    assert not (tmp_path / "abc.claim").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "abc.claim").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    with store.claim("abc") as holder:
        assert holder is None and json.loads((tmp_path / "abc.claim").read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_identical_sweeps_run_each_point_once_each_with_its_own_log(tmp_path):
    args = [sys.executable, str(ROOT / "run.py"), "--multirun", "sparsity=0.3,0.5,0.7", f"paths.root={tmp_path}",
            "device=cpu", "evals.digits.limit=50"]
    both = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV)
            for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    text = "".join(out + err for out, err in outputs)
    assert len(records(tmp_path)) == 3
    assert text.count("achieved sparsity") == 3  # executions: each point once
    # the other process's points: held by it, or already finished by it
    assert text.count("is being run by process") + text.count("already finished") == 3
    logs = sorted((tmp_path / "multirun").glob("*/*/*/ecoflap.log"))
    assert len(logs) == 6 and len({log.parent.parent for log in logs}) == 2  # one sweep folder per process
    assert not list((tmp_path / "results" / "runs").glob("*.claim"))


def test_a_config_error_leaves_no_record_and_a_failure_in_the_work_keeps_one(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="prune_towers"):
        run(config(tmp_path, "model.prune_towers=[nope]"))
    with pytest.raises(UserError, match="needs a model with"):
        run(config(tmp_path, "suite=vqa", "evals.okvqa.lemmatiser=lemminflect"))
    assert records(tmp_path) == []

    def broken(self, *args, **kwargs):
        raise RuntimeError("the scorer broke")

    monkeypatch.setattr("ecoflap_exp.scoring.zeroth.ZerothOrderScorer.scores", broken)
    with pytest.raises(RuntimeError, match="the scorer broke"):
        run(config(tmp_path, "scorer=zeroth"))
    [record] = records(tmp_path)
    assert record["status"] == "failed" and record["error"] == "RuntimeError: the scorer broke"


def test_capabilities_are_checked_before_the_data_and_checkpoints_before_any_model_loads(tmp_path):
    with pytest.raises(UserError, match="evals.vqav2 .* needs a model with GeneratesFromImages"):
        checked(config(tmp_path, "suite=blip2_paper", "evals.okvqa.lemmatiser=lemminflect"))  # not the VQAv2 files

    with pytest.raises(UserError, match="checkpoint 'Salesforce/blip2-flan-t5-xl-coco' is not in the local Hugging "
                                        "Face cache and HF_HUB_OFFLINE=1"):  # NoCaps' companion, before any VQA file
        checked(config(tmp_path, "model=blip2_t5_tiny", "suite=blip2_paper", "evals.okvqa.lemmatiser=lemminflect"))
    with pytest.raises(UserError, match="model checkpoint path '/nowhere/model' does not exist"):
        checked(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text",
                       "model.init=pretrained", "model.checkpoint=/nowhere/model"))


def test_a_checkpoint_with_nan_weights_is_named_as_broken(tmp_path):
    from ecoflap_exp.models.causal_lm import CausalLMAdapter

    model = CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes").model
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "broken")
    assert torch.isnan(AutoModelForCausalLM.from_pretrained(tmp_path / "broken").model.layers[0].mlp.up_proj.weight
                       ).any()
    with pytest.raises(UserError, match=r"NaN/inf weights in 1 parameters \(model.layers.0.mlp.up_proj.weight\): "
                                        "the checkpoint is broken"):
        run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "model.init=pretrained",
                   f"model.checkpoint={tmp_path / 'broken'}", "sparsity=0"))
    assert records(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_ends_in_one_line_and_the_rerun_resumes(tmp_path, sent, status):
    """SIGTERM (SLURM's, timeout's, docker's) is handled as Ctrl-C: one line, an interrupted mark, no
    temporary file left."""
    args = [sys.executable, str(ROOT / "run.py"), "--multirun", "sparsity=0.3,0.5", "scorer=zeroth",
            f"paths.root={tmp_path}", "device=cpu"]
    done = subprocess.run(args[:3] + ["sparsity=0.3"] + args[4:], capture_output=True, text=True, cwd=tmp_path,
                          env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    # a shell's background job inherits SIGINT ignored, and Python then installs no handler for it:
    # give the child the default disposition, as a terminal's foreground process has
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list((tmp_path / "results" / "runs").glob("*.claim")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sent)  # the second point has claimed its id: it is loading or working
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "interrupted; finished points are kept, rerun resumes" in err and "Traceback" not in err
    statuses = sorted(r["status"] for r in records(tmp_path))
    assert statuses in (["interrupted", "ok"], ["ok"])  # the finished point is kept; the other resumes
    left = [p.name for p in (tmp_path / "results" / "runs").iterdir() if p.name.startswith(".") or p.suffix == ".claim"]
    assert left == []  # no claim, no temporary file
    again = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=600)
    assert again.returncode == 0 and sorted(r["status"] for r in records(tmp_path)) == ["ok", "ok"]


def test_a_sweep_whose_points_fail_exits_non_zero_with_the_count(tmp_path):
    result = cli(tmp_path, "--multirun", "model.prune_towers=[nope],[text]", "sparsity=0.3", "suite=none")
    assert result.returncode == 1
    assert "2 points: 1 ok, 0 skipped, 1 config_error, 0 failed" in result.stderr
    assert "config_error: model.prune_towers=[nope]" in result.stderr and "must name some of" in result.stderr
    assert len(records(tmp_path)) == 1  # the config error left none


def record_of(method, sparsity, seed, value, achieved=None):
    return {"id": f"{method}{sparsity}{seed}", "status": "ok", "model": "m", "method": method,
            "config": {"sparsity": sparsity, "seed": seed, "nm": None, "experiment_name": "e"},
            "achieved": {"overall": sparsity if achieved is None else achieved}, "metrics": {"acc": value}}


def test_seeds_are_aggregated_and_a_sparse_checkpoint_is_not_dense():
    rows = [record_of("wanda", 0.5, 0, 90.0), record_of("wanda", 0.5, 1, 92.0),
            record_of("dense", 0, 0, 96.0), record_of("as-loaded", 0, 0, 91.0, achieved=0.5)]
    table = experiment_table(frame(rows), "e")  # one pruned point: dense and pruned folded into one column
    assert table.loc["wanda", "acc"] == "91.00 ± 1.41 (n=2)"
    assert (table.loc["as-loaded", "acc"], table.loc["dense", "acc"]) == ("91.00", "96.00")
    swept = experiment_table(frame([*rows, record_of("wanda", 0.7, 0, 50.0)]), "e")
    assert swept.loc["as-loaded", "p0.5/acc"] == "91.00" and swept.loc["as-loaded", "p0/acc"] == "-"


def test_a_reloaded_pruned_checkpoint_run_at_sparsity_zero_is_labelled_by_its_weights(tmp_path):
    pruned = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "sparsity=0.5",
                        "save_model=true"))
    loaded = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "sparsity=0",
                        "model.init=pretrained", f"model.checkpoint={pruned['saved_model']}"))
    assert loaded["method"] == "as-loaded" and loaded["achieved"]["overall"] == pytest.approx(0.5, abs=1e-3)


def test_same_seed_same_masks_and_a_new_seed_a_new_calibration_draw(tmp_path):
    first = run(config(tmp_path, "sparsity=0.5", "suite=none"))
    again = run(config(tmp_path, "sparsity=0.5", "suite=none", "force=true"))
    other = run(config(tmp_path, "sparsity=0.5", "suite=none", "seed=1"))
    assert first["achieved"]["masks_sha1"] == again["achieved"]["masks_sha1"] != other["achieved"]["masks_sha1"]
    assert first["calibration"]["sha1"] == again["calibration"]["sha1"] != other["calibration"]["sha1"]
    source = tmp_path / "calibration.txt"
    source.write_text("\n".join(f"document {i}: " + "words of text " * 20 for i in range(8)))
    text = run(config(tmp_path, "model=llama_tiny", "calib=c4", f"calib.source={source}", "calib.num_samples=4",
                      "calib.batch_size=4", "suite=none"))
    assert text["calibration"]["files"] == {str(source): source.stat().st_size}


def readme_commands():
    """The run.py command lines of README.md's code blocks (the overrides after run.py)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    return [line.split("run.py", 1)[1].split("#")[0].split() for line in lines
            if line.startswith("    ") and "run.py" in line and "python" in line]


@pytest.mark.parametrize("overrides", readme_commands(), ids=" ".join)
def test_every_readme_command_composes_and_passes_the_checks_that_need_no_files(tmp_path, overrides):
    """A sweep's first point; Hydra's own settings (launchers) are left to Hydra."""
    single = [o.split(",")[0] for o in overrides if o != "--multirun" and not o.startswith("hydra")]
    validate(config(tmp_path, *single))


def test_the_readme_cites_only_files_the_repo_has_and_generated_outputs_are_ignored():
    readme = (ROOT / "README.md").read_text()
    assert "DESIGN.md" not in readme and (ROOT / "docs" / "ARCHITECTURE.md").is_file()
    ignored = subprocess.run(["git", "check-ignore", "results/tables/default.md", "results/plots/default.png",
                              "results/runs/x.json"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["results/tables/default.md", "results/plots/default.png", "results/runs/x.json"]


def test_the_shipped_digits_clip_does_not_claim_random_weights(caplog):
    from ecoflap_exp.models.open_clip import OpenCLIPAdapter

    with caplog.at_level("WARNING"):
        OpenCLIPAdapter("digits_clip", pretrained="shipped:digits_clip")
    assert "No pretrained weights loaded" not in caplog.text
    with caplog.at_level("WARNING"):
        OpenCLIPAdapter("digits_clip", init="random")
    assert "No pretrained weights loaded" in caplog.text  # a truly random model still says so


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs at tmp_path/disk where this machine lets the test mount one (root), else skip."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_real_full_disk_and_a_read_only_folder(tmp_path, tiny_tmpfs, capsys):
    (tiny_tmpfs / "filler").write_bytes(b"x" * (60 * 1024))  # the record (tens of KiB) no longer fits
    with pytest.raises(UserError, match=r"could not be written to .*disk/runs/\w+\.json \(OSError: No space left"
                                        r".*the whole record is in (\S+ecoflap-record-\w+\.json)") as caught:
        run(config(tmp_path, "sparsity=0.3", f"paths.results_dir={tiny_tmpfs / 'runs'}"))
    kept = Path(re.search(r"record is in (\S+\.json)", str(caught.value)).group(1))
    assert json.loads(kept.read_text())["achieved"]["overall"] == pytest.approx(0.3, abs=1e-3)
    kept.unlink()
    assert list((tiny_tmpfs / "runs").iterdir()) == []  # no partial record, no temporary, no claim
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(ConfigError, match="results folder .*disk/runs is not writable \\(Read-only file system\\)"):
        run(config(tmp_path, "sparsity=0.3", f"paths.results_dir={tiny_tmpfs / 'runs'}"))


@pytest.mark.parametrize(("module", "overrides", "extra"), [
    ("wandb", ["logger=wandb"], "wandb"),
    ("pycocoevalcap", ["model=blip2_t5_tiny", "suite=none", "+eval@evals.nocaps=nocaps"], "captions"),
])
def test_a_config_that_needs_a_missing_extra_names_it(tmp_path, monkeypatch, module, overrides, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    message = rf'needs {module}, which is not installed; pip install "ecoflap_exp\[{extra}\]"'
    with pytest.raises(UserError, match=message):
        Plugins.build(config(tmp_path, *overrides))


def test_a_launcher_whose_plugin_is_missing_names_its_extra(monkeypatch):
    from ecoflap_exp.cli import check_launcher

    check_launcher(["--multirun", "hydra/launcher=slurm", "hydra/launcher=joblib"])  # installed here: no error
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)
    with pytest.raises(UserError, match=r'hydra/launcher=slurm needs hydra_plugins.hydra_submitit_launcher, which is '
                                        r'not installed; pip install "ecoflap_exp\[slurm\]"'):
        check_launcher(["--multirun", "hydra/launcher=slurm"])


def test_threads_auto_runs_a_small_model_on_one_thread_and_a_bad_value_is_refused(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        small = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=none", "sparsity=0.5"))
        assert small["torch_threads"] == 1 and torch.get_num_threads() == 2  # a small model; restored after
        torch.set_num_threads(1)
        chosen = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=none", "sparsity=0.6",
                            "threads=2"))
        assert chosen["torch_threads"] == 2 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad, shown in (("0", "0"), ("many", "'many'")):
        with pytest.raises(UserError, match=f"^threads={shown} is not valid: input should be 'auto' or .*; e.g. "
                                            f"threads=auto$"):
            validate(config(tmp_path, f"threads={bad}"))


def test_a_cache_budget_below_zero_or_not_a_number_is_refused(tmp_path):
    for bad, why in (("-1", "greater than or equal to 0"), ("'lots'", "a valid number"), ("nan", "a finite number"),
                     ("inf", "a finite number")):
        with pytest.raises(UserError, match=f"cache_gb={bad} is not valid: input should be {why}; e.g. cache_gb=4"):
            validate(config(tmp_path, f"cache_gb={bad.strip(chr(39))}"))
    validate(config(tmp_path, "cache_gb=0"))  # 0 stores nothing: a valid choice


def test_a_shape_error_only_the_loaded_model_reveals_leaves_no_record(tmp_path):
    """nm=1:7 parses, but tiny LLaMA's 64-column matrices do not split into groups of 7: found as the
    model loads, before the run's record exists (issue 27 item 3)."""
    with pytest.raises(ConfigError, match="nm=1:7: matrix model.layers.0.self_attn.q_proj has 64 input columns, not "
                                          "a multiple of 7"):
        run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "nm=1:7"))
    assert records(tmp_path) == [] and not list((tmp_path / "results" / "runs").glob("*.claim"))


def test_only_runs_that_differ_in_their_seed_pool_into_one_cell():
    """Two seeds of one setting are n=2; a run that differs in model.prune_towers is its own row."""
    rows = [record_of("wanda", 0.5, 0, 90.0), record_of("wanda", 0.5, 1, 92.0), record_of("wanda", 0.5, 0, 50.0)]
    for r in rows[:2]:
        r["config"]["model"] = {"prune_towers": ["vision", "text"], "seed": r["config"]["seed"]}
    rows[2]["config"]["model"] = {"prune_towers": ["text"], "seed": 0}
    rows[2]["id"] = "text-only"
    table = experiment_table(frame(rows), "e")
    assert table.loc["wanda [model.prune_towers=[vision,text]]", "acc"] == "91.00 ± 1.41 (n=2)"
    assert table.loc["wanda [model.prune_towers=[text]]", "acc"] == "50.00"


def test_an_unreadable_record_or_score_cache_is_set_aside_and_recomputed(tmp_path, caplog):
    cfg = config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "scorer=zeroth",
                 "scorer.num_samples=8", "sparsity=0.5")
    first = run(cfg)
    runs, scores = tmp_path / "results" / "runs", tmp_path / "results" / "scores"
    (cache_file,) = scores.glob("*.json")
    (runs / f"{first['id']}.json").write_text('{"status": "ok", "id": ')  # a write cut short (a full disk)
    cache_file.write_text("[]")
    again = run(cfg)  # neither a traceback nor a skip: both are computed again, the bad files kept aside
    assert again["status"] == "ok" and again["scores_reused"] is False and again["scores"] == first["scores"]
    assert (runs / f"{first['id']}.json.unreadable").exists() and cache_file.with_name(cache_file.name +
                                                                                       ".unreadable").exists()
    assert sum("cannot be read" in m for m in caplog.messages) == 2
    assert [r["id"] for r in records(tmp_path)] == [first["id"]]


def test_tables_never_read_temporary_files_and_skip_an_unreadable_record(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.json").write_text(json.dumps(record_of("wanda", 0.5, 0, 90.0)))
    (runs / ".tmp-x1y2.json").write_text(json.dumps(record_of("wanda", 0.5, 1, 10.0)))  # a killed write's temporary
    (runs / "b.json").write_text("{")
    found, problems = load_records(runs)
    assert [r["id"] for r in found] == ["wanda0.50"]
    assert len(problems) == 1 and "b.json: unreadable record" in problems[0]


def test_a_claim_whose_pid_was_reused_is_stale_and_leftover_temporaries_are_removed(tmp_path):
    store = ResultsStore(tmp_path)
    me = {"pid": os.getpid(), "host": os.uname().nodename}
    (tmp_path / "abc.claim").write_text(json.dumps({**me, "started": store_module.process_start(os.getpid()) - 1000}))
    with store.claim("abc") as holder:  # a live process holds this pid, but it started later: not the claimant
        assert holder is None
    (tmp_path / "abc.claim").write_text(json.dumps({**me, "started": store_module.process_start(os.getpid())}))
    with store.claim("abc") as holder:
        assert holder is not None and holder["pid"] == os.getpid()
    (tmp_path / "abc.claim").unlink()
    old, new = tmp_path / ".tmp-old.json", tmp_path / ".tmp-new.json"
    old.write_text("{")
    new.write_text("{")
    os.utime(old, (time.time() - 2 * store_module.STALE_TEMPORARY_S,) * 2)
    store.check_writable()
    assert not old.exists() and new.exists()  # a write may be in progress in another process


def test_records_are_written_with_the_users_umask(tmp_path):
    before = os.umask(0o022)
    try:
        path = ResultsStore(tmp_path).write({"id": "r1", "status": "ok"})
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o644


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


def test_a_spreadsheets_utf8_bom_reads_as_plain_utf8(tmp_path):
    pairs = write_caption_pairs(tmp_path, count=8)
    text = pairs["tsv"].read_bytes()
    pairs["tsv"].write_bytes(b"\xef\xbb\xbf" + text)
    from ecoflap_exp.data.caption_pairs import read_pairs

    assert read_pairs(str(pairs["tsv"])) == read_pairs(str(pairs["csv"]))


def test_a_record_write_killed_midway_leaves_only_a_temporary_that_tables_ignore(tmp_path):
    """SIGKILL (no handler can run) while a record is being written: the store holds the earlier
    records whole, the half-written temporary is never read as a record, and it is removed once old."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.json").write_text(json.dumps(record_of("wanda", 0.5, 0, 90.0)))
    writer = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from ecoflap_exp.tracking.store import write_atomically

        def slow(path):
            with open(path, "w") as f:
                f.write('{{"id": "b", "status": ')
                f.flush()
                time.sleep(60)

        write_atomically(Path({str(runs / "b.json")!r}), slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], env=ENV)
    deadline = time.time() + 60
    while not list(runs.glob(".tmp-*")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (left,) = runs.glob(".tmp-*.json")
    found, problems = load_records(runs)
    assert [r["id"] for r in found] == ["wanda0.50"] and problems == [] and not (runs / "b.json").exists()
    os.utime(left, (time.time() - 2 * store_module.STALE_TEMPORARY_S,) * 2)
    ResultsStore(runs).check_writable()
    assert not left.exists()
