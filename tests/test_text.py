"""Text sources and the perplexity eval."""

import gzip
import json
import math

import pandas as pd
import pytest
import torch

from ecoflap_exp.data.text import TextCalibration, read_documents
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.perplexity import Perplexity


def test_perplexity_equals_a_direct_computation(tiny_llama, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 6)
    ppl = Perplexity(str(text), seqlen=32, batch_size=3).evaluate(tiny_llama)
    ids = tiny_llama.tokenize(text.read_text())
    n = len(ids) // 32
    losses = []
    with torch.no_grad():
        for w in ids[: n * 32].view(n, 32):
            logits = tiny_llama.model(w[None]).logits[0, :-1]
            losses.append(torch.nn.functional.cross_entropy(logits, w[1:], reduction="none"))
    expected = math.exp(torch.cat(losses).mean().item())
    assert ppl == {"ppl": pytest.approx(expected, rel=1e-5)}


def test_nan_loss_is_a_clear_error(tiny_llama, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a" * 200)
    next(tiny_llama.matrices()).weight.fill_(float("nan"))
    with pytest.raises(UserError, match="loss is nan"):
        Perplexity(str(text), seqlen=32).evaluate(tiny_llama)


def test_released_formats_are_read(tmp_path):
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


def test_calibration_windows_are_seeded_and_sized(tiny_llama):
    a = TextCalibration("shipped:calibration", seqlen=64, num_samples=8, batch_size=4, seed=3)
    b = TextCalibration("shipped:calibration", seqlen=64, num_samples=8, batch_size=4, seed=3)
    batches_a, batches_b = a.batches(tiny_llama), b.batches(tiny_llama)
    assert len(batches_a) == 2 and batches_a[0]["input_ids"].shape == (4, 64)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches_a, batches_b, strict=True))
    c = TextCalibration("shipped:calibration", seqlen=64, num_samples=8, batch_size=4, seed=4)
    assert not torch.equal(c.batches(tiny_llama)[0]["input_ids"], batches_a[0]["input_ids"])


def test_text_shorter_than_a_window(tiny_llama, tmp_path):
    short = tmp_path / "s.txt"
    short.write_text("too short")
    with pytest.raises(UserError, match="lower calib.seqlen"):
        TextCalibration(str(short), seqlen=64, num_samples=4, batch_size=4, max_tries=50).batches(tiny_llama)
    with pytest.raises(UserError, match="fewer than one window"):
        Perplexity(str(short), seqlen=64).evaluate(tiny_llama)
