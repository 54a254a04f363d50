"""img2dataset's CC3M download -> the layout `calib=cc3m` reads: <out>/cc3m.tsv with `image` (path
relative to <out>) and `caption` columns, pairs in the order of Google's TSV.

    python scripts/prepare_cc3m.py IMG2DATASET_OUTPUT [--out $ECOFLAP_DATA/cc3m] [--limit N]

Where CC3M comes from (network needed, on your machine):
1. Google's Conceptual Captions page, https://ai.google.com/research/ConceptualCaptions/download :
   "Training split" = Train_GCC-training.tsv, caption<TAB>url per line, no header (3.3M lines).
2. Add the header img2dataset needs; for calibration the first few hundred rows are plenty
   (ECoFLaP uses the first 128 pairs; some URLs are dead):
       (printf 'caption\\turl\\n'; head -n 1000 Train_GCC-training.tsv) > cc3m_head.tsv
3. Download the images (pip install img2dataset):
       img2dataset --url_list cc3m_head.tsv --input_format tsv --url_col url --caption_col caption \\
           --output_format files --output_folder cc3m_img2dataset --resize_mode no \\
           --processes_count 4 --thread_count 32
   (`--output_format webdataset` writes .tar shards instead; calib=cc3m also reads those directly:
   calib.annotations=cc3m_img2dataset).
4. python scripts/prepare_cc3m.py cc3m_img2dataset --out $ECOFLAP_DATA/cc3m

Accepted input (img2dataset's output folder):
- output_format=files: {shard}/{key}.jpg with {key}.txt (caption) and {key}.json beside it;
- output_format=webdataset: {shard}.tar shards; images are extracted to <out>/images/;
- the {shard}.parquet metadata it writes beside either (key, caption, status): captions for images
  that have no .txt/.json, and the count of failed downloads.
Keys are img2dataset's row numbers, so sorting by key keeps the order of Google's TSV. The script
prints what is missing (images with no caption, successful downloads whose image is gone).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import pandas as pd

from ecoflap_exp.data.caption_pairs import IMAGE_EXTENSIONS, split_key, webdataset_pairs
from ecoflap_exp.errors import UserError

SHOWN = 5  # missing items listed by name


def parquet_metadata(source: Path) -> tuple[dict[str, str], int]:
    """Captions of the successful downloads by key, and the number of failed ones."""
    captions, failed = {}, 0
    for path in sorted(source.glob("*.parquet")):
        frame = pd.read_parquet(path)
        if "key" not in frame.columns:
            raise UserError(f"{path}: no 'key' column; not an img2dataset metadata file")
        ok = frame["status"] == "success" if "status" in frame.columns else pd.Series(True, index=frame.index)
        failed += int((~ok).sum())
        if "caption" in frame.columns:
            captions.update(zip(frame.loc[ok, "key"].astype(str), frame.loc[ok, "caption"], strict=True))
        else:
            captions.update(dict.fromkeys(frame.loc[ok, "key"].astype(str), ""))
    return captions, failed


def caption_beside(image: Path) -> str | None:
    """The caption in {key}.txt, else {key}.json's "caption", beside an image file."""
    key = split_key(image.name)[0]
    txt = image.with_name(f"{key}.txt")
    if txt.is_file() and (caption := txt.read_text(encoding="utf-8").strip()):
        return caption
    meta = image.with_name(f"{key}.json")
    if meta.is_file():
        try:
            caption = json.loads(meta.read_text(encoding="utf-8")).get("caption")
        except (json.JSONDecodeError, AttributeError) as err:
            raise UserError(f"{meta}: not a JSON object ({err})") from err
        if isinstance(caption, str) and caption.strip():
            return caption
    return None


def pairs_from_files(source: Path, out: Path, parquet_captions: dict[str, str],
                     limit: int | None) -> tuple[list[tuple[str, str]], list[Path], set[str]]:
    """(relative image path, caption) of output_format=files, the images without a caption, and
    the keys seen."""
    images = sorted((p for p in source.rglob("*") if p.is_file() and split_key(p.name)[1] in IMAGE_EXTENSIONS),
                    key=lambda p: split_key(p.name)[0])
    rows, uncaptioned, keys = [], [], set()
    for image in images:
        if limit is not None and len(rows) == limit:
            break
        key = split_key(image.name)[0]
        keys.add(key)
        caption = caption_beside(image) or parquet_captions.get(key)
        if not caption:
            uncaptioned.append(image)
            continue
        rows.append((Path(os.path.relpath(image, out)).as_posix(), caption))
    return rows, uncaptioned, keys


def pairs_from_shards(shards: list[Path], out: Path, limit: int | None) -> tuple[list[tuple[str, str]], set[str]]:
    """(relative image path, caption) of webdataset shards, images written to <out>/images/."""
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows, keys = [], set()
    for image, caption in webdataset_pairs(shards):
        if limit is not None and len(rows) == limit:
            break
        name = Path(image.member).name
        (folder / name).write_bytes(image.getvalue())
        keys.add(split_key(name)[0])
        rows.append((f"images/{name}", caption))
    return rows, keys


def prepare(source: Path, out: Path, limit: int | None) -> int:
    """Write <out>/cc3m.tsv; print what is missing; return the number of pairs written."""
    if not source.is_dir():
        raise UserError(f"{source} is not a folder; give img2dataset's --output_folder")
    out.mkdir(parents=True, exist_ok=True)
    parquet_captions, failed = parquet_metadata(source)
    shards = sorted(source.glob("*.tar"))
    if shards:
        rows, keys = pairs_from_shards(shards, out, limit)
        uncaptioned: list[Path] = []
    else:
        rows, uncaptioned, keys = pairs_from_files(source, out, parquet_captions, limit)
    if not rows:
        raise UserError(f"{source} holds no image with a caption; expected img2dataset's output "
                        f"({{shard}}/{{key}}.jpg + {{key}}.txt, or {{shard}}.tar shards)")
    with (out / "cc3m.tsv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    print(f"wrote {out / 'cc3m.tsv'}: {len(rows)} image-caption pairs")
    if failed:
        print(f"{failed} rows of the metadata parquet failed to download (status != success)")
    if uncaptioned:
        print(f"{len(uncaptioned)} images have no caption (.txt, .json or metadata) and were left out: "
              + ", ".join(map(str, uncaptioned[:SHOWN])))
    if limit is None:
        gone = sorted(set(parquet_captions) - keys)
        if gone:
            print(f"{len(gone)} downloads marked successful have no image file: {', '.join(gone[:SHOWN])}")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="img2dataset's --output_folder")
    parser.add_argument("--out", type=Path, default=None, help="where cc3m.tsv (and images/) go; default: source")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    args = parser.parse_args()
    try:
        prepare(args.source, args.out or args.source, args.limit)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
