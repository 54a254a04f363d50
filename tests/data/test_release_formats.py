"""release_formats: Karpathy's Flickr30k json to LAVIS's test list, WikiText's raw file to HF's parquet."""

import json

import pandas as pd

from ecoflap_exp.data.release_formats import karpathy_to_lavis_flickr, raw_to_parquet
from tests.fixtures_flickr import write_flickr30k
from tests.fixtures_text import WIKI_ROWS, write_wikitext


def test_karpathys_test_split_becomes_lavis_list_and_wikitext_raw_its_parquet_rows(tmp_path):
    captions = [["a red car on a road", "a car"], ["two dogs playing"]]
    files = write_flickr30k(tmp_path, captions)
    target = tmp_path / "test.json"
    assert karpathy_to_lavis_flickr(files["karpathy"], target) == ("converted the 2 test images of Karpathy's split "
                                                                   "to LAVIS's list")
    assert json.loads(target.read_text()) == json.loads(files["lavis"].read_text())  # the released list itself
    wiki = write_wikitext(tmp_path / "wikitext")
    parquet = tmp_path / "test.parquet"
    assert raw_to_parquet(wiki["raw"], parquet) == f"converted {len(WIKI_ROWS)} rows to parquet"
    assert pd.read_parquet(parquet)["text"].tolist() == WIKI_ROWS
