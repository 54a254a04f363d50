"""Bad input and faults (issue 14): every option is checked before any work, nothing is silently
accepted or ignored, the store survives a full disk, a read-only folder and concurrent sweeps, and
a config error leaves no record."""

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

from tests.fixtures import write_caption_pairs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bad_inputs import BAD_INPUTS, write_bad_data  # noqa: E402

from ecoflap_exp.errors import ConfigError, UserError
from ecoflap_exp.preflight import validate
from ecoflap_exp.record import RunRecord
from ecoflap_exp.results.records import load_records
from ecoflap_exp.results.tables import experiment_table, frame
from ecoflap_exp.runner import run
from ecoflap_exp.tracking import store as store_module
from ecoflap_exp.tracking.store import ResultsStore
from tests.results.test_tables import record_of

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", [f"paths.root={tmp_path}", "device=cpu", *overrides])


def records(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "runs").glob("*.json"))]


def cli(tmp_path, *args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"paths.root={tmp_path}", "device=cpu"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=timeout, env=ENV)


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


def test_a_wrong_model_option_fails_as_the_model_is_built_and_leaves_no_record(tmp_path):
    for override, message in (("model.dtype=float64", "model.dtype='float64' is unknown; use one of"),
                              ("model.init=zeros", "model.init='zeros' is unknown")):
        with pytest.raises(UserError, match=message):
            run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", override))
    assert records(tmp_path) == []


def test_a_scorer_asking_more_samples_than_the_pruner_gets_them_and_the_record_says_so(tmp_path):
    record = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "scorer=zeroth",
                        "scorer.num_samples=32", "calib.num_samples=16", "model.arch_overrides={num_hidden_layers: 1}"))
    calibration = record.calibration
    assert (calibration.samples, calibration.pruner_samples, calibration.batch_size) == (32, 16, 4)
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
    assert run(cfg).achieved.overall == pytest.approx(0.3, abs=1e-3)  # skipped: it counts as finished
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


@pytest.mark.slow
def test_a_sweep_whose_points_fail_exits_non_zero_with_the_count(tmp_path):
    result = cli(tmp_path, "--multirun", "model.prune_towers=[nope],[text]", "sparsity=0.3", "suite=none")
    assert result.returncode == 1
    assert "2 points: 1 ok, 0 skipped, 1 config_error, 0 failed" in result.stderr
    assert "config_error: model.prune_towers=[nope]" in result.stderr and "must name some of" in result.stderr
    assert len(records(tmp_path)) == 1  # the config error left none


def test_a_reloaded_pruned_checkpoint_run_at_sparsity_zero_is_labelled_by_its_weights(tmp_path):
    pruned = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "sparsity=0.5",
                        "save_model=true"))
    loaded = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "sparsity=0",
                        "model.init=pretrained", f"model.checkpoint={pruned.saved_model}"))
    assert loaded.method == "as-loaded" and loaded.achieved.overall == pytest.approx(0.5, abs=1e-3)


def test_same_seed_same_masks_and_a_new_seed_a_new_calibration_draw(tmp_path):
    first = run(config(tmp_path, "sparsity=0.5", "suite=none"))
    again = run(config(tmp_path, "sparsity=0.5", "suite=none", "force=true"))
    other = run(config(tmp_path, "sparsity=0.5", "suite=none", "seed=1"))
    assert first.achieved.masks_sha1 == again.achieved.masks_sha1 != other.achieved.masks_sha1
    assert first.calibration.sha1 == again.calibration.sha1 != other.calibration.sha1
    source = tmp_path / "calibration.txt"
    source.write_text("\n".join(f"document {i}: " + "words of text " * 20 for i in range(8)))
    text = run(config(tmp_path, "model=llama_tiny", "calib=c4", f"calib.source={source}", "calib.num_samples=4",
                      "calib.batch_size=4", "suite=none"))
    assert text.calibration.files == {str(source): source.stat().st_size}


def readme_commands():
    """The run.py command lines of the code blocks of README.md and the docs (the overrides after run.py, as
    the shell splits them: quotes, and lines continued with a backslash)."""
    text = "\n".join(page.read_text() for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    lines = text.replace("\\\n", " ").splitlines()
    return [shlex.split(line.split("run.py", 1)[1], comments=True) for line in lines
            if line.startswith("    ") and "run.py" in line and line.split()[0].endswith("python")]


def first_point(override: str) -> str:
    """A sweep's first value (`key=a,b` -> `key=a`); a list or dict value is one value."""
    key, _, value = override.partition("=")
    return override if value.startswith(("[", "{")) else f"{key}={value.split(',')[0]}"


@pytest.mark.parametrize("overrides", readme_commands(), ids=" ".join)
def test_every_readme_command_composes_and_passes_the_checks_that_need_no_files(tmp_path, overrides):
    """A sweep's first point; Hydra's own settings (launchers) are left to Hydra."""
    single = [first_point(o) for o in overrides if o != "--multirun" and not o.startswith("hydra")]
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


def test_threads_auto_runs_a_small_model_on_one_thread_and_a_bad_value_is_refused(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        small = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=none", "sparsity=0.5"))
        assert small.torch_threads == 1 and torch.get_num_threads() == 2  # a small model; restored after
        torch.set_num_threads(1)
        chosen = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=none", "sparsity=0.6",
                            "threads=2"))
        assert chosen.torch_threads == 2 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad, shown in (("0", "0"), ("many", "'many'")):
        with pytest.raises(UserError, match=f"^threads={shown} is not valid: input should be 'auto' or .*; e.g. "
                                            f"threads=auto$"):
            validate(config(tmp_path, f"threads={bad}"))


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
    table = experiment_table(frame([RunRecord.load(r) for r in rows]), "e")
    assert table.loc["wanda [model.prune_towers=[vision,text]]", "acc"] == "91.00 ± 1.41 (n=2)"
    assert table.loc["wanda [model.prune_towers=[text]]", "acc"] == "50.00"


def test_an_unreadable_record_or_score_cache_is_set_aside_and_recomputed(tmp_path, caplog):
    cfg = config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "scorer=zeroth",
                 "scorer.num_samples=8", "sparsity=0.5")
    first = run(cfg)
    runs, scores = tmp_path / "results" / "runs", tmp_path / "results" / "scores"
    (cache_file,) = scores.glob("*.json")
    (runs / f"{first.id}.json").write_text('{"status": "ok", "id": ')  # a write cut short (a full disk)
    cache_file.write_text("[]")
    again = run(cfg)  # neither a traceback nor a skip: both are computed again, the bad files kept aside
    assert again.status == "ok" and again.scores_reused is False and again.scores == first.scores
    assert (runs / f"{first.id}.json.unreadable").exists() and cache_file.with_name(cache_file.name +
                                                                                       ".unreadable").exists()
    assert sum("cannot be read" in m for m in caplog.messages) == 2
    assert [r["id"] for r in records(tmp_path)] == [first.id]


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
        path = ResultsStore(tmp_path).write(RunRecord(id="r1", status="running", model="m", config={}, method="wanda"))
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o644


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
    assert [r.id for r in found] == ["wanda0.50"] and problems == [] and not (runs / "b.json").exists()
    os.utime(left, (time.time() - 2 * store_module.STALE_TEMPORARY_S,) * 2)
    ResultsStore(runs).check_writable()
    assert not left.exists()
