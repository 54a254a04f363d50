"""One run top to bottom: its steps in order, the record it returns is the one in the store (schema
2), and a run whose work fails is recorded as failed with its error."""

import json

import pytest

from ecoflap_exp.record import SCHEMA_VERSION, RunRecord
from ecoflap_exp.runner import run
from tests.integration.test_run import config


def test_the_steps_run_in_order_and_the_stored_record_is_the_returned_one(tmp_path):
    record = run(config(tmp_path, "scorer=zeroth", "scorer.num_samples=8", "sparsity=0.5"))
    assert list(record.timings_s) == ["load", "calibrate", "score", "allocate", "prune", "verify", "eval"]
    (stored,) = (tmp_path / "results" / "runs").glob("*.json")
    data = json.loads(stored.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and RunRecord.load(data) == record
    assert record.status == "ok" and record.achieved.overall == pytest.approx(0.5, abs=1e-3)
    assert record.comparison_groups == {"wanda": {"decoder": "row"}}  # LLaMA's Wanda compares per output row


def test_a_failed_run_keeps_its_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the evaluation broke")

    monkeypatch.setattr("ecoflap_exp.runner.evaluate_suite", broken)
    with pytest.raises(RuntimeError, match="the evaluation broke"):
        run(config(tmp_path, "sparsity=0.5"))
    (stored,) = (tmp_path / "results" / "runs").glob("*.json")
    record = RunRecord.load(json.loads(stored.read_text()))
    assert (record.status, record.error) == ("failed", "RuntimeError: the evaluation broke")
    assert record.achieved is None and record.finished is not None
