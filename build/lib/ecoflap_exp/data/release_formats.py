"""Converters from a dataset's other released forms to the layout the project's readers take:
Karpathy's Flickr30k json to LAVIS's test list, WikiText-2's raw file to the HF parquet, ImageNet
into <wnid>/ folders (from a folder in that layout, or the flat val images and Kaggle's
LOC_val_solution.csv). Used by scripts/prepare_data.py."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ecoflap_exp.data.coop import read_loc_val_solution
from ecoflap_exp.data.flickr import read_retrieval_set
from ecoflap_exp.data.raw_files import Gatherer, RawDir, place_all, shared_tail
from ecoflap_exp.data.text import read_documents
from ecoflap_exp.errors import UserError

WNID = re.compile(r"n\d{8}")
SHOWN = 5  # missing images named in a message



def karpathy_to_lavis_flickr(source: Path, target: Path) -> str:
    """Karpathy's dataset_flickr30k.json -> LAVIS's flickr30k/annotations/test.json (test split)."""
    data = read_retrieval_set(str(source), image_root="flickr30k-images", split="test")
    captions: dict[Path, list[str]] = {image: [] for image in data.images}
    for caption, index in zip(data.captions, data.image_of, strict=True):
        captions[data.images[index]].append(caption)
    target.write_text(json.dumps([{"image": image.as_posix(), "caption": texts} for image, texts in captions.items()]))
    return f"converted the {len(captions)} test images of Karpathy's split to LAVIS's list"


def raw_to_parquet(source: Path, target: Path) -> str:
    """WikiText's wiki.test.raw -> the HF parquet (one row per line, exactly the rows HF's script makes)."""
    import pandas as pd

    rows = read_documents(str(source))
    pd.DataFrame({"text": rows}).to_parquet(target, index=False)
    return f"converted {len(rows)} rows to parquet"


def synset_folder(split: str) -> Gatherer:
    """ImageNet `split` as <wnid>/<image> folders: a raw folder named `split` in that layout; for
    val also the flat ILSVRC2012_val_*.JPEG images (a folder or ILSVRC2012_img_val.tar) sorted by
    Kaggle's LOC_val_solution.csv (read by the project's reader)."""

    def gather(raw: RawDir, target: Path, link: bool) -> str | None:
        folders = [d for d in raw.dirs.get(split, ()) if any(WNID.fullmatch(c.name) for c in d.iterdir())]
        if folders:
            source = max(folders, key=lambda d: shared_tail(d.parts, target.parts))
            if link:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source.resolve(), target_is_directory=True)
            else:
                part = target.with_name(target.name + ".part")
                shutil.copytree(source, part, dirs_exist_ok=True)
                os.replace(part, target)
            return f"{'linked' if link else 'copied'} <- {source}"
        solutions = raw.files.get("LOC_val_solution.csv") if split == "val" else None
        if not solutions:
            return None
        rows = read_loc_val_solution(solutions[0], Path())
        located = [(raw.find((image.name,), (wnid, image.name), ("ILSVRC2012_img_val.tar",)), wnid, image.name)
                   for image, wnid in rows]
        lost = [name for found, _, name in located if found is None]
        if lost:
            raise UserError(f"{len(lost)} of {len(rows)} images of {solutions[0]} are neither under {raw.root} nor "
                            f"in ILSVRC2012_img_val.tar (first: {', '.join(lost[:SHOWN])})")
        part = target.with_name(target.name + ".part")
        place_all([(found, part / wnid / name) for found, wnid, name in located if not (part / wnid / name).exists()],
                  link, "sorting ImageNet val")
        os.replace(part, target)
        return f"sorted {len(rows)} images into <wnid>/ folders by {solutions[0]}"

    return gather
