"""The table a run prints at its end, on a record `make run` wrote (schema 1)."""

import json
from pathlib import Path

from rich.console import Console

from ecoflap_exp.record import RunRecord
from ecoflap_exp.results.summary import print_summary

RECORD = Path(__file__).resolve().parents[1] / "records_schema1" / "id_wanda.json"


def test_the_summary_says_what_the_record_holds():
    record = RunRecord.load(json.loads(RECORD.read_text()))
    console = Console(record=True, width=200)
    print_summary(record, console)
    rows = {cells[1].strip(): cells[2].strip() for line in console.export_text().splitlines()
            if len(cells := line.split("│")) == 4}
    assert rows["achieved sparsity"] == "0.8000 of 172,032 prunable weights"
    assert rows["calibration"] == "128 samples, SHA-1 1a3d8ebc75b6"  # the scorer read no more than the pruner
    assert rows["group sparsity range"] == "0.7834 .. 0.8873"  # min and max of its plan
    assert rows["digits/acc"] == "10.5556" and rows["target sparsity"] == "0.8000"
    assert rows["time (s)"] == "load 0.1, calibrate 0.1, score 0.0, allocate 0.0, prune 0.3, verify 0.0, eval 0.2"
    assert rows["memory"] == "peak RSS 1.00 GB"  # no GPU measured
