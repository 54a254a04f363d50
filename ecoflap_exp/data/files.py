"""Checks every benchmark reader shares: a dataset's JSON file read with one clear message when it
is missing or broken, and its images checked to exist before any model work."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ecoflap_exp.errors import UserError


def read_json_file(path: str, what: str, how_to_get: str) -> Any:
    """The parsed JSON of `path` (`what`: e.g. "VQAv2 annotations file"); a missing or invalid file
    ends in one message that says `how_to_get` it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{what} {path!r} does not exist; {how_to_get}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path!r} is not valid JSON ({err}); download it again ({how_to_get})") from None


def read_jsonl_file(path: str, what: str, how_to_get: str) -> list[Any]:
    """The JSON objects of `path`, one a line (blank lines skipped), with read_json_file's messages
    and the number of a line that does not parse."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{what} {path!r} does not exist; {how_to_get}")
    rows = []
    with file.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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
