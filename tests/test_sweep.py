"""sweep: a multirun's outcomes counted at its end, each failed point named, exit status 1 if any failed."""

import json
from types import SimpleNamespace

import pytest

from ecoflap_exp.sweep import OUTCOME_FILE, SweepReport, read_outcomes


def write_points(sweep_dir, outcomes):
    for i, (status, error, overrides) in enumerate(outcomes):
        (sweep_dir / str(i)).mkdir(parents=True)
        (sweep_dir / str(i) / OUTCOME_FILE).write_text(json.dumps({"status": status, "error": error,
                                                                   "overrides": overrides}))


def report(sweep_dir):
    callback = SweepReport()
    callback.on_multirun_start(SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=str(sweep_dir)))))
    callback.on_multirun_end(None)


def test_failed_points_are_counted_named_and_end_in_exit_status_1(tmp_path, capsys):
    write_points(tmp_path, [("ok", None, ["sparsity=0.3"]), ("config_error", "nm=2:4 fixes the sparsity at 0.5",
                                                              ["sparsity=0.3", "nm=2:4"]),
                            ("skipped", None, ["sparsity=0.5"]), ("failed", "RuntimeError: boom", ["sparsity=0.7"])])
    (tmp_path / "notes").mkdir()  # a folder without an outcome is no point
    assert [o["status"] for o in read_outcomes(tmp_path)] == ["ok", "config_error", "skipped", "failed"]
    with pytest.raises(SystemExit) as exited:
        report(tmp_path)
    assert exited.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"sweep {tmp_path}: 4 points: 1 ok, 1 skipped, 1 config_error, 1 failed",
        "  config_error: sparsity=0.3 nm=2:4: nm=2:4 fixes the sparsity at 0.5",
        "  failed: sparsity=0.7: RuntimeError: boom"]


def test_a_sweep_without_failures_ends_normally(tmp_path, capsys):
    write_points(tmp_path, [("ok", None, ["sparsity=0.3"]), ("skipped", None, ["sparsity=0.5"])])
    report(tmp_path)
    assert capsys.readouterr().err == f"sweep {tmp_path}: 2 points: 1 ok, 1 skipped, 0 config_error, 0 failed\n"
