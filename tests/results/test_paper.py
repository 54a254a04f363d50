"""The paper's own rows: metric names the records use, and averages that match the derived columns."""

import pandas as pd
import pytest

from ecoflap_exp.results.paper import PAPER
from ecoflap_exp.results.tables import derive


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
