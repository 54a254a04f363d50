"""Text sources and token-window calibration (the SparseGPT/Wanda recipe).

A text source is the public-domain text shipped in the package (`shipped:NAME`) or a local file in
a corpus's released format:
- plain `.txt`: one document;
- WikiText's raw files (`wiki.test.raw`, extracted or read inside `wikitext-2-raw-v1.zip` as
  `.../wikitext-2-raw-v1.zip/wikitext-2-raw/wiki.test.raw`): one row per line, line ending kept,
  blank lines (" \\n" in the release) as "" — exactly the rows of HF `wikitext-2-raw-v1` (its
  dataset script's `_generate_examples`);
- parquet with a "text" column (HF `wikitext-2-raw-v1/test-00000-of-00001.parquet`): its rows;
- JSON lines with a "text" field, optionally gzipped (C4's `en/c4-*.json.gz` shards): one
  document per line, in file order.

Tokenisation follows the reference code: `tokenizer(text)` with the tokenizer's special tokens,
so a LLaMA/OPT text starts with one BOS (`special_tokens=False` uses the adapter's plain
`tokenize`). Calibration draws documents with `random.Random(seed)` in the order of Wanda's
`get_c4`: a random document until one has more than seqlen tokens, then a random window of it.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import zipfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import torch

from ecoflap_exp.data.base import CalibrationSource
from ecoflap_exp.data.files import read_text
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.loading import SHIPPED_PREFIX
from ecoflap_exp.options import Count, NonNegativeInt

FORMATS = ".txt, .raw (WikiText, extracted or as <zip>/<member>), .jsonl/.json(.gz) or .parquet"


def raw_rows(lines: list[str]) -> list[str]:
    """WikiText raw-file lines -> the HF dataset's rows: line endings kept, blank lines "" ."""
    return [line if line.strip() else "" for line in lines]


def zip_member(path: Path) -> tuple[Path, str] | None:
    """(archive, member) when `path` runs through a .zip file, as in x.zip/dir/file.raw."""
    for parent in path.parents:
        if parent.suffix == ".zip" and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


def read_zip_member(archive: Path, member: str) -> list[str]:
    """The rows of one member of a zip archive (`member` "" lists the members in the error)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            if member not in names:
                raws = sorted((n for n in names if n.endswith(".raw")), key=lambda n: "test" not in n)
                example = (raws or names or ["<member>"])[0]
                raise UserError(f"{archive}: name a member of the archive after its path, e.g. {archive}/{example} "
                                f"(members: {', '.join(names)})")
            if not member.endswith((".raw", ".txt")):
                raise UserError(f"{archive}/{member}: unknown member format; read a .raw or .txt member")
            # read as open() reads the extracted file: universal newlines, lines split only there
            with io.TextIOWrapper(zf.open(member), encoding="utf-8") as f:
                return raw_rows(list(f)) if member.endswith(".raw") else [f.read()]
    except zipfile.BadZipFile as err:
        raise UserError(f"{archive} is not a readable zip file ({err}); download it again") from err


def shipped_text(source: str) -> Traversable:
    name = source.removeprefix(SHIPPED_PREFIX)
    path = resources.files("ecoflap_exp.data") / "texts" / f"{name}.txt"
    if not path.is_file():
        raise UserError(f"text source {source!r}: no shipped text named {name!r} (try shipped:calibration)")
    return path


def check_source(source: str, how_to_get: str | None = None) -> str:
    """The source, or one message when the text it names is missing (cheap: before any model loads)."""
    if source.startswith(SHIPPED_PREFIX):
        shipped_text(source)
        return source
    path = Path(source).expanduser()
    if not path.is_file() and zip_member(path) is None:
        raise UserError(f"text file {source!r} does not exist; " + (how_to_get or f"give a {FORMATS} file path"))
    return source


def read_documents(source: str, how_to_get: str | None = None) -> list[str]:
    """A text source -> its documents (rows). `shipped:NAME` is ecoflap_exp/data/texts/NAME.txt.
    `how_to_get` is added to the message when the file is missing."""
    check_source(source, how_to_get)
    if source.startswith(SHIPPED_PREFIX):
        return [shipped_text(source).read_text(encoding="utf-8")]
    path = Path(source).expanduser()
    if path.suffix == ".zip":
        return read_zip_member(path, "")
    if (inside := zip_member(path)) is not None:
        return read_zip_member(*inside)
    if path.suffix == ".txt":
        return [read_text(path)]
    if path.suffix == ".raw":
        return raw_rows(read_text(path).splitlines(keepends=True))
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
    raise UserError(f"text file {path}: unknown format; use {FORMATS}")


class TextCalibration(CalibrationSource):
    """Random windows of `seqlen` tokens, each from a random document long enough to hold one
    (the Wanda/SparseGPT recipe for C4; with seed 0 and special tokens, the same draws as
    Wanda's get_c4)."""

    kind = "tokens"

    def __init__(self, source: str, seqlen: Count, num_samples: Count = 128, batch_size: Count = 8,
                 seed: NonNegativeInt = 0, max_tries: Count = 10_000, special_tokens: bool = True,
                 how_to_get: str | None = None):
        super().__init__(num_samples, batch_size, seed)
        self.source = check_source(source, how_to_get)
        self.seqlen = seqlen
        self.max_tries = max_tries
        self.special_tokens = special_tokens
        self.how_to_get = how_to_get
        self.documents: list[str] = []

    def files(self) -> list[str]:
        return [str(self.source)]

    def check_data(self, count: int) -> None:
        self.documents = read_documents(self.source, self.how_to_get)  # tokenizing needs the model
        if not any(doc.strip() for doc in self.documents):
            raise UserError(f"calibration text {self.source!r} holds no text; give a file with documents to draw "
                            f"calib.num_samples windows of calib.seqlen tokens from")

    def samples(self, adapter: ModelAdapter, count: int | None = None) -> list[torch.Tensor]:
        docs = self.documents or read_documents(self.source, self.how_to_get)
        rng = random.Random(self.seed)
        windows: list[torch.Tensor] = []
        for _ in range(self.max_tries):
            ids = adapter.tokenize(docs[rng.randrange(len(docs))], self.special_tokens)
            if len(ids) > self.seqlen:
                start = rng.randrange(len(ids) - self.seqlen)
                windows.append(ids[start : start + self.seqlen])
                if len(windows) == (count or self.num_samples):
                    return windows
        raise UserError(
            f"calibration text {self.source!r}: found only {len(windows)} documents longer than "
            f"seqlen={self.seqlen} tokens in {self.max_tries} draws; lower calib.seqlen or use a longer text"
        )
