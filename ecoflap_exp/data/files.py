"""Checks every data reader shares: a text file read as released (UTF-8, with or without the BOM
spreadsheets write) with one message naming the file when it is in another encoding, a dataset's
JSON file read with one clear message when it is missing or broken, and its images checked to
exist before any model work."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ecoflap_exp.errors import UserError


def read_text(path: Path) -> str:
    """A data file's text: UTF-8, a leading BOM dropped; another encoding ends in one message."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 (byte {data[err.start]:#04x} at offset {err.start}; a Latin-1 or "
                        f"Windows-1252 file, as some spreadsheets save); re-save it as UTF-8, e.g. "
                        f"`iconv -f latin1 -t utf-8 {path.name} > fixed_{path.name}`") from None


def read_json_file(path: str, what: str, how_to_get: str) -> Any:
    """The parsed JSON of `path` (`what`: e.g. "VQAv2 annotations file"); a missing or invalid file
    ends in one message that says `how_to_get` it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{what} {path!r} does not exist; {how_to_get}")
    text = read_text(file)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{what} {path!r} is not valid JSON ({err}); download it again ({how_to_get})") from None


def read_jsonl_file(path: str, what: str, how_to_get: str) -> list[Any]:
    """The JSON objects of `path`, one a line (blank lines skipped), with read_json_file's messages
    and the number of a line that does not parse."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{what} {path!r} does not exist; {how_to_get}")
    rows = []
    for lineno, line in enumerate(read_text(file).splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{what} {path!r}, line {lineno}, is not valid JSON ({err}); download it again "
                                f"({how_to_get})") from None
    return rows


def check_images_exist(paths: Sequence[Path], what: str, fix: str) -> None:
    """Every image file is there, checked before any model work, so a wrong root or layout fails at
    once (`what`: e.g. "VQAv2 images"; `fix`: where the images go)."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(paths)} {what} are missing (first: {missing[0]}); {fix}")
