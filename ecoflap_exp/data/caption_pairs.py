"""Image-caption calibration pairs (CC3M-style, COCO captions) from local files, in the common layouts:
- a TSV/CSV file with `image` (path relative to the image root) and `caption` columns, as
  scripts/prepare_cc3m.py writes from img2dataset's output;
- a COCO caption JSON, e.g. annotations/captions_train2017.json:
  {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}, pairs in the order
  of "annotations", file names relative to the image root (train2017/);
- a LAVIS annotation JSON: a list of {"image", "caption"} (caption a string or a list of them), as
  LAVIS's cc3m.json, whose first N entries ECoFLaP calibrates on;
- Karpathy's dataset_coco.json / dataset_flickr30k.json: the captions of its train images;
- webdataset tar shards as img2dataset writes them (a folder of *.tar, a glob, or one .tar): each
  sample is the members sharing a key (`00000/000000012.jpg`, `.txt`, `.json`), the image a
  .jpg/.jpeg/.png/.webp, the caption the .txt or else the .json's "caption"; shards are read in
  name order, members in archive order, and reading stops after the first N decoded samples.
The image root is the annotation file's folder unless `image_root` is given.

The first `num_samples` pairs that decode are used (ECoFLaP: the first 128 of CC3M, unshuffled),
or a seeded shuffle of all pairs of an annotation file. An image that fails to decode is skipped
with a warning and counted; more than `max_bad_fraction` of the images tried failing is an error.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ecoflap_exp.data.files import read_text
from ecoflap_exp.data.images import AnnotatedImageCalibration, Augment
from ecoflap_exp.errors import UserError
from ecoflap_exp.options import Count, Fraction, NonNegativeInt

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def coco_pairs(data: dict, path: Path, root: Path) -> list[tuple[Path, str]]:
    files = {}
    for i, image in enumerate(data.get("images", [])):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise UserError(f"{path}: images[{i}] needs 'id' and 'file_name', got {image}")
        files[image["id"]] = image["file_name"]
    pairs = []
    for i, entry in enumerate(data.get("annotations", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str) or "image_id" not in entry:
            raise UserError(f"{path}: annotations[{i}] needs 'image_id' and a 'caption' string, got {entry}")
        if entry["image_id"] not in files:
            raise UserError(f"{path}: annotations[{i}] has image_id {entry['image_id']}, which no images[] entry has")
        pairs.append((root / files[entry["image_id"]], entry["caption"]))
    return pairs


def lavis_pairs(data: list, path: Path, root: Path) -> list[tuple[Path, str]]:
    pairs = []
    for i, entry in enumerate(data):
        caption = entry.get("caption") if isinstance(entry, dict) else None
        captions = [caption] if isinstance(caption, str) else caption
        valid = isinstance(captions, list) and all(isinstance(c, str) for c in captions)
        if not isinstance(entry, dict) or not entry.get("image") or not valid:
            raise UserError(f"{path}: entry [{i}] needs 'image' and 'caption' (a string or a list of them), "
                            f"got {entry}")
        pairs.extend((root / entry["image"], c) for c in captions)
    return pairs


def karpathy_pairs(data: dict, path: Path, root: Path, splits: Sequence[str]) -> list[tuple[Path, str]]:
    """Every caption of the images whose Karpathy split is one of `splits`."""
    pairs = []
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or entry.get("split") not in splits:
            continue
        sentences = entry.get("sentences")
        if not isinstance(entry.get("filename"), str) or not isinstance(sentences, list) or not all(
                isinstance(s, dict) and isinstance(s.get("raw"), str) for s in sentences):
            raise UserError(f"{path}: images[{i}] needs 'filename' and 'sentences' with a 'raw' string each, got "
                            f"{str(entry)[:300]}")
        pairs.extend((root / entry.get("filepath", "") / entry["filename"], s["raw"]) for s in sentences)
    if not pairs:
        raise UserError(f"{path} has no captions in the Karpathy splits {list(splits)}")
    return pairs


def read_pairs(annotations: str, image_root: str | None = None,
               splits: Sequence[str] = ("train",)) -> list[tuple[Path, str]]:
    """(image path, caption) of every pair of an annotation file (.tsv/.csv, or a COCO, LAVIS or
    Karpathy .json: of Karpathy's dataset_coco.json / dataset_flickr30k.json, the images of `splits`)."""
    path = Path(annotations).expanduser()
    if not path.is_file():
        raise UserError(f"caption file {annotations!r} does not exist; give a .tsv/.csv with image and caption "
                        f"columns (scripts/prepare_cc3m.py writes one), a COCO or LAVIS caption .json, or a "
                        f"folder of webdataset .tar shards")
    root = Path(image_root).expanduser() if image_root else path.parent
    if path.suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err})") from err
        if isinstance(data, dict) and "annotations" in data:
            return coco_pairs(data, path, root)
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            return karpathy_pairs(data, path, root, splits)
        if isinstance(data, list):
            return lavis_pairs(data, path, root)
        raise UserError(f"{path}: neither a COCO caption file (images[], annotations[]), a Karpathy split file "
                        f"(images[] with sentences) nor a LAVIS list of {{image, caption}} entries")
    delimiter = "\t" if path.suffix == ".tsv" else ","
    pairs = []
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    if not {"image", "caption"} <= set(reader.fieldnames or ()):
        raise UserError(f"{path}: its header {reader.fieldnames} lacks the 'image' and 'caption' columns a caption "
                        f"file needs ({'tab' if delimiter == chr(9) else 'comma'}-separated)")
    for lineno, row in enumerate(reader, 2):
        if not row.get("image") or not row.get("caption"):
            raise UserError(f"{path}, line {lineno}: needs non-empty 'image' and 'caption' fields, got {row}")
        pairs.append((root / row["image"], row["caption"]))
    if not pairs:
        raise UserError(f"{path} holds a header and no image-caption rows")
    return pairs


def shard_paths(source: str) -> list[Path] | None:
    """The webdataset shards a source names (a folder of .tar, a glob, a .tar), in name order;
    None when the source is an annotation file."""
    path = Path(source).expanduser()
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
    elif any(c in source for c in "*?["):
        shards = sorted(Path(p) for p in glob.glob(str(path)))
    elif path.suffix == ".tar":
        shards = [path] if path.is_file() else []
    else:
        return None
    if not shards:
        raise UserError(f"{source!r} holds no webdataset .tar shards; give img2dataset's output folder "
                        f"(output_format=webdataset) or an annotation file")
    return shards


class MemberImage(io.BytesIO):
    """The bytes of an image member of a tar shard; shown as shard:member in messages."""

    def __init__(self, data: bytes, shard: Path, member: str):
        super().__init__(data)
        self.shard = shard
        self.member = member

    def __repr__(self) -> str:
        return f"{self.shard}:{self.member}"


def sample_pair(shard: Path, key: str, files: dict[str, tuple[str, bytes]]) -> tuple[MemberImage, str]:
    """One webdataset sample (extension -> (member name, bytes)) -> (image, caption)."""
    image = next((files[ext] for ext in IMAGE_EXTENSIONS if ext in files), None)
    if image is None:
        raise UserError(f"{shard}: sample {key!r} has no image member (.{', .'.join(IMAGE_EXTENSIONS)}); its members: "
                        f"{', '.join(name for name, _ in files.values())}")
    if "txt" in files and (caption := files["txt"][1].decode("utf-8").strip()):
        return MemberImage(image[1], shard, image[0]), caption
    if "json" not in files:
        raise UserError(f"{shard}: sample {key!r} has no caption: neither a {key}.txt nor a {key}.json member")
    name, data = files["json"]
    try:
        caption = json.loads(data).get("caption")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise UserError(f"{shard}:{name}: not a JSON object ({err})") from err
    if not isinstance(caption, str) or not caption.strip():
        raise UserError(f"{shard}:{name}: no 'caption' string (and no non-empty {key}.txt beside it)")
    return MemberImage(image[1], shard, image[0]), caption


def split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the extension the rest."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def shard_samples(shard: Path) -> Iterator[tuple[MemberImage, str]]:
    """(image, caption) of each sample of one tar shard, in archive order."""
    key, files = None, {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = split_key(member.name)
                if member_key != key:
                    if key is not None:
                        yield sample_pair(shard, key, files)
                    key, files = member_key, {}
                files[ext] = (member.name, tar.extractfile(member).read())
    except (tarfile.TarError, OSError) as err:
        raise UserError(f"{shard}: not a readable tar shard ({err}); download or write it again") from err
    if key is not None:
        yield sample_pair(shard, key, files)


def webdataset_pairs(shards: Iterable[Path]) -> Iterator[tuple[MemberImage, str]]:
    for shard in shards:
        yield from shard_samples(shard)


class ImageCaptionCalibration(AnnotatedImageCalibration):
    kind = "image_captions"

    def __init__(self, annotations: str, num_samples: Count = 128, batch_size: Count = 8, seed: NonNegativeInt = 0,
                 shuffle: bool = False, max_bad_fraction: Fraction = 0.05, image_root: str | None = None,
                 augment: Augment = "eval"):
        """`annotations`: an annotation file (.tsv/.csv/.json) or webdataset shards (a folder of
        .tar, a glob, one .tar); `image_root`: where the file's image paths start (default: its
        folder); `augment`: `train` gives each image the model's training augmentation (BLIP-2:
        LAVIS's blip2_image_train, as ECoFLaP calibrates), `eval` its eval transform."""
        super().__init__(annotations, num_samples, batch_size, seed, shuffle, max_bad_fraction, image_root, augment)

    def items(self) -> list[tuple[Path, str]]:
        return read_pairs(self.annotations, self.image_root)

    def candidates(self) -> Iterable[tuple[Any, str]]:
        shards = shard_paths(self.annotations)
        if shards is None:
            return super().candidates()
        if self.shuffle:
            raise UserError("calib.shuffle=true needs an annotation file; webdataset shards are read in order "
                            "(set calib.shuffle=false, or convert them with scripts/prepare_cc3m.py)")
        return webdataset_pairs(shards)
