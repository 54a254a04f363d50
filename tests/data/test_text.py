"""Text sources in their released formats, token-window calibration and the perplexity eval, checked
against the SparseGPT/Wanda reference code re-written here from its description."""

import gzip
import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from ecoflap_exp.data.text import TextCalibration, read_documents
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.perplexity import Perplexity
from ecoflap_exp.runner import run
from tests.fixtures_text import C4_DOCS, WIKI_ROWS, write_c4, write_wikitext

ROOT = Path(__file__).resolve().parents[2]


def test_wikitext_layouts_read_the_same_rows_and_perplexity(tiny_llama, tmp_path):
    files = write_wikitext(tmp_path)
    for layout in ("member", "raw", "parquet"):
        assert read_documents(str(files[layout])) == WIKI_ROWS, layout
    joined = "\n\n".join(read_documents(str(files["member"])))
    # row 0 "" + "\n\n" + " = Robert Boulter = \n" + "\n\n" + "" + "\n\n" + the text line
    assert joined.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")
    ppls = {layout: Perplexity(str(files[layout]), seqlen=64).evaluate(tiny_llama)["ppl"]
            for layout in ("member", "raw", "parquet")}
    assert ppls["member"] == ppls["raw"] == ppls["parquet"]


def test_calibration_draws_the_windows_of_wanda_get_c4(tiny_llama, tmp_path):
    shard = write_c4(tmp_path / "c4-train.00000-of-01024.json.gz")
    seqlen, nsamples, seed = 60, 6, 0
    random.seed(seed)  # wanda lib/data.py get_c4, word for word in its use of `random`
    expected = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(C4_DOCS) - 1)
            trainenc = torch.tensor([tiny_llama.tokenizer(C4_DOCS[i]).input_ids])
            if trainenc.shape[1] > seqlen:
                break
        i = random.randint(0, trainenc.shape[1] - seqlen - 1)
        expected.append(trainenc[0, i : i + seqlen])
    got = TextCalibration(str(shard), seqlen=seqlen, num_samples=nsamples, batch_size=2, seed=seed).samples(tiny_llama)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_released_formats_are_read_and_bad_input_named(tmp_path):
    jsonl = tmp_path / "c4.json.gz"
    with gzip.open(jsonl, "wt") as f:
        for t in ["first doc", "second doc"]:
            f.write(json.dumps({"text": t, "timestamp": "x", "url": "u"}) + "\n")
    assert read_documents(str(jsonl)) == ["first doc", "second doc"]
    parquet = tmp_path / "test-00000-of-00001.parquet"
    pd.DataFrame({"text": [" = Title = \n", "", " body \n"]}).to_parquet(parquet)
    assert read_documents(str(parquet)) == [" = Title = \n", "", " body \n"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "oops"}\n')
    with pytest.raises(UserError, match="line 2"):
        read_documents(str(bad))
    files = write_wikitext(tmp_path / "wt")
    with pytest.raises(UserError, match="name a member.*wikitext-2-raw-v1.zip/wikitext-2-raw/wiki.test.raw"):
        read_documents(str(files["zip"]))
    with pytest.raises(UserError, match="members: wikitext-2-raw/wiki.train.raw"):
        read_documents(str(files["zip"] / "wiki.test.raw"))
    with pytest.raises(UserError, match="does not exist; get it from there"):
        read_documents(str(tmp_path / "none.parquet"), how_to_get="get it from there")
    # a run fails on a missing text when its config is built, before any model loads
    with pytest.raises(UserError, match="none.parquet' does not exist; get it"):
        Perplexity(str(tmp_path / "none.parquet"), seqlen=8, how_to_get="get it")
    with pytest.raises(UserError, match="none.json.gz' does not exist"):
        TextCalibration(str(tmp_path / "none.json.gz"), seqlen=8, num_samples=1, batch_size=1)


def test_text_shorter_than_a_window(tiny_llama, tmp_path):
    short = tmp_path / "s.txt"
    short.write_text("too short")
    with pytest.raises(UserError, match="lower calib.seqlen"):
        TextCalibration(str(short), seqlen=64, num_samples=4, batch_size=4, max_tries=50).batches(tiny_llama)
    with pytest.raises(UserError, match="fewer than one window"):
        Perplexity(str(short), seqlen=64).evaluate(tiny_llama)


def test_calibration_windows_are_seeded_and_sized(tiny_llama):
    a = TextCalibration("shipped:calibration", seqlen=64, num_samples=8, batch_size=4, seed=3)
    b = TextCalibration("shipped:calibration", seqlen=64, num_samples=8, batch_size=4, seed=3)
    batches_a, batches_b = a.batches(tiny_llama), b.batches(tiny_llama)
    assert len(batches_a) == 2 and batches_a[0]["input_ids"].shape == (4, 64)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches_a, batches_b, strict=True))
    c = TextCalibration("shipped:calibration", seqlen=64, num_samples=8, batch_size=4, seed=4)
    assert not torch.equal(c.batches(tiny_llama)[0]["input_ids"], batches_a[0]["input_ids"])


@pytest.mark.slow
def test_llama_suite_end_to_end_on_released_layouts(tmp_path):
    data = tmp_path / "data"
    wiki = write_wikitext(data / "wikitext")
    write_c4(data / "c4" / "c4-validation.00000-of-00008.json.gz", docs=[d * 3 for d in C4_DOCS])
    overrides = [f"paths.root={tmp_path}", f"paths.data_root={data}", "device=cpu", "model=llama_tiny",
                 "data.seqlen=64", "calib=c4_validation", "calib.num_samples=4", "suite=llama",
                 f"evals.wikitext2.source={wiki['member']}", "+eval@evals.c4=c4_validation", "sparsity=0.5"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        record = run(compose("config", overrides))
    assert record.achieved.overall == pytest.approx(0.5)
    assert record.metrics["wikitext2/ppl"] > 1 and record.metrics["c4/ppl"] > 1
