"""Text sources: the public-domain text shipped in the package, or local files in the released
formats of text corpora (plain .txt, JSON lines with a "text" field as C4's shards, parquet with a
"text" column as WikiText's)."""

from __future__ import annotations

import gzip
import json
import random
from importlib import resources
from pathlib import Path

import torch

from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.base import ModelAdapter

SHIPPED_PREFIX = "shipped:"


def read_documents(source: str) -> list[str]:
    """A text source -> its documents. `shipped:NAME` is ecoflap_exp/data/texts/NAME.txt."""
    if source.startswith(SHIPPED_PREFIX):
        name = source.removeprefix(SHIPPED_PREFIX)
        path = resources.files("ecoflap_exp.data") / "texts" / f"{name}.txt"
        if not path.is_file():
            raise UserError(f"text source {source!r}: no shipped text named {name!r} (try shipped:calibration)")
        return [path.read_text(encoding="utf-8")]
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"text file {source!r} does not exist; give a .txt, .jsonl(.gz) or .parquet file path")
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        if "text" not in frame.columns:
            raise UserError(f"{path}: parquet file has no 'text' column (columns: {list(frame.columns)})")
        return frame["text"].tolist()
    if path.name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        opener = gzip.open if path.suffix == ".gz" else open
        docs = []
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    docs.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise UserError(f"{path}, line {lineno}: not a JSON object with a 'text' field ({err})") from err
        return docs
    raise UserError(f"text file {path}: unknown format; use .txt, .jsonl(.gz) or .parquet")


class TextCalibration(CalibrationSource):
    """Random windows of `seqlen` tokens, each from a random document long enough to hold one
    (the Wanda/SparseGPT recipe for C4)."""

    kind = "tokens"

    def __init__(self, source: str, seqlen: int, num_samples: int = 128, batch_size: int = 8,
                 seed: int = 0, max_tries: int = 10_000):
        super().__init__(num_samples, batch_size, seed)
        self.source = source
        self.seqlen = seqlen
        self.max_tries = max_tries

    def samples(self, adapter: ModelAdapter) -> list[torch.Tensor]:
        docs = read_documents(self.source)
        rng = random.Random(self.seed)
        windows: list[torch.Tensor] = []
        for _ in range(self.max_tries):
            if len(windows) == self.num_samples:
                return windows
            ids = adapter.tokenize(docs[rng.randrange(len(docs))])
            if len(ids) > self.seqlen:
                start = rng.randrange(len(ids) - self.seqlen)
                windows.append(ids[start : start + self.seqlen])
        raise UserError(
            f"calibration text {self.source!r}: found only {len(windows)} documents longer than "
            f"seqlen={self.seqlen} tokens in {self.max_tries} draws; lower calib.seqlen or use a longer text"
        )
