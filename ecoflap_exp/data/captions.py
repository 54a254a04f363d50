"""Image-caption calibration pairs (CC3M-style) from a local folder, in the common layouts:
- a TSV/CSV file with `image` (path relative to the file's folder) and `caption` columns, as
  img2dataset and the CC3M conversion scripts write;
- a COCO-style caption JSON: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}.
The first `num_samples` pairs are used (the paper's), or a seeded shuffle of all of them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ecoflap_exp.data.images import LocalImageCalibration
from ecoflap_exp.errors import UserError


def read_pairs(annotations: str) -> list[tuple[Path, str]]:
    path = Path(annotations).expanduser()
    if not path.is_file():
        raise UserError(f"caption file {annotations!r} does not exist; give a .tsv/.csv with image and caption "
                        f"columns (image paths relative to the file) or a COCO caption .json")
    base = path.parent
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        try:
            files = {img["id"]: img["file_name"] for img in data["images"]}
            return [(base / files[a["image_id"]], a["caption"]) for a in data["annotations"]]
        except (KeyError, TypeError) as err:
            raise UserError(f"{path}: not a COCO caption file (images[].id/file_name, "
                            f"annotations[].image_id/caption): missing {err}") from err
    delimiter = "\t" if path.suffix == ".tsv" else ","
    pairs = []
    with path.open(newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.DictReader(f, delimiter=delimiter), 2):
            if not row.get("image") or not row.get("caption"):
                raise UserError(f"{path}, line {lineno}: needs non-empty 'image' and 'caption' fields, got {row}")
            pairs.append((base / row["image"], row["caption"]))
    return pairs


class ImageCaptionCalibration(LocalImageCalibration):
    kind = "image_captions"

    def __init__(self, annotations: str, num_samples: int = 128, batch_size: int = 8, seed: int = 0,
                 shuffle: bool = False, max_bad_fraction: float = 0.05):
        super().__init__(num_samples, batch_size, seed, shuffle, max_bad_fraction)
        self.annotations = annotations

    def items(self) -> list[tuple[Path, str]]:
        return read_pairs(self.annotations)
