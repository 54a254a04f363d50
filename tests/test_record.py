"""The run record: schema-1 records (written before the schema had a version, by `make run` at
1d1e34b) load with every value where the tables read it; assignments and loads are validated."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ecoflap_exp.record import SCHEMA_VERSION, MatrixReport, RunRecord

SCHEMA1 = Path(__file__).parent / "records_schema1"


def schema1(name: str) -> dict:
    return json.loads((SCHEMA1 / f"{name}.json").read_text())


def test_a_schema1_record_loads_with_its_groups_moved_and_every_value_kept():
    data = schema1("id_wanda")
    record = RunRecord.load(data)
    assert "schema_version" not in data and record.schema_version == SCHEMA_VERSION == 2
    assert record.comparison_groups == {"wanda": {"vision": "row", "text": "row"}}
    assert (record.method, record.model, record.status) == ("id+wanda", "digits_clip", "ok")
    assert record.achieved.overall == data["achieved"]["overall"] == pytest.approx(0.8, abs=1e-5)
    assert record.achieved.per_matrix == data["achieved"]["per_matrix"] and len(record.matrices) == 20
    assert record.target.max_sparsity == 0.9 and record.target.nm is None
    assert record.calibration.pruner_samples == data["calibration"]["pruner_samples"]
    assert record.matrices[0].as_dict() == data["matrices"][0]
    assert record.metrics == data["metrics"] and record.scores == data["scores"]
    kept = record.as_json()
    for key, value in data.items():  # every value written kept as it was (schema 1 had no redraw count)
        if key != "wanda_group":
            assert kept[key] == (value | {"redrawn_passes": 0} if key == "calibration" else value), key
    assert RunRecord.load(kept) == record  # schema 2 round-trips


def test_a_schema1_dense_record_has_no_calibration():
    record = RunRecord.load(schema1("dense"))
    assert record.method == "dense" and record.calibration is None and record.plan == {}
    assert record.achieved.overall == 0.0 and record.matrices == []


def test_a_record_is_refused_when_it_is_not_one():
    data = schema1("id_wanda")
    with pytest.raises(ValidationError, match="achieved"):
        RunRecord.load({**data, "achieved": None})  # a finished run says what it reached
    with pytest.raises(ValidationError, match="metrik"):
        RunRecord.load({**data, "metrik": {}})  # a misspelt field is not silently kept
    with pytest.raises(ValidationError, match="status"):
        RunRecord.load({**data, "status": "done"})


def test_assignments_are_validated_and_converted():
    record = RunRecord(id="x", status="running", model="m", config={}, method="wanda")
    record.achieved = {"overall": 0.5, "prunable_params": 8}
    assert record.achieved.prunable_params == 8
    record.matrices = [MatrixReport("a.w", "a", "vision", 2, 4, 0.5, 4, 0)]
    assert record.tower_of() == {"a.w": "vision", "a": "vision"}
    with pytest.raises(ValidationError):
        record.status = "finished"
    with pytest.raises(ValidationError, match="achieved"):
        RunRecord(id="x", status="ok", model="m", config={}, method="wanda")
