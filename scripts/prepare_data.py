"""Put each benchmark's released files where the configs read them, and say exactly what is missing.

    python scripts/prepare_data.py DATASET RAW_DIR [DATA_ROOT] [--link]
    python scripts/prepare_data.py --check DATASET [DATA_ROOT]
    python scripts/prepare_data.py --list

DATASET is one name of `--list` or `all`. DATA_ROOT defaults to paths.data_root of
configs/config.yaml (env ECOFLAP_DATA, else $ECOFLAP_ROOT/data, else ./data).

For every file a dataset needs, at the path under DATA_ROOT that its eval/calib config names
(read from that config, so the layout is written once; DATASETS below adds where each file is
released):
1. found: it is already there (never overwritten: files under DATA_ROOT are left as they are);
2. placed: it is looked up in RAW_DIR (searched recursively, once) by its released name, as the
   extracted file or as a member of the official archive that holds it (v2_Questions_Val_mscoco.zip,
   questions1.2.zip, caption_datasets.zip, val2014.zip, ...), and copied there (symlinked with
   --link; archive members are extracted, one member at a time, only those needed); a file released
   in another format is converted (Flickr30k: Karpathy's dataset_flickr30k.json -> LAVIS's
   annotations/test.json; WikiText-2: wiki.test.raw -> the HF parquet; ImageNet: the flat val
   images + Kaggle's LOC_val_solution.csv -> <wnid>/ folders);
3. missing: not in RAW_DIR either; the line says which file and where to get it.
Then the project's own reader (read_vqa, read_gqa, read_nocaps, read_coco_karpathy,
read_retrieval_set, read_coop_split, image_folder, read_documents, read_pairs) reads the placed
files, so "ready" means the eval will read them; a reader's complaint is printed as `invalid`.
The images it lists are found or placed the same way (an image is found in RAW_DIR by its path
relative to the image root, e.g. val2014/COCO_val2014_000000262148.jpg, so only the images the
split uses are copied or extracted) and summarised in one line per image root.

Nothing is downloaded. A rerun does nothing new. The exit status is 1 when a required file or
image is missing or a reader rejects a file, 2 on a usage error. CC3M comes from
scripts/prepare_cc3m.py (img2dataset's output -> cc3m/cc3m.tsv); this script only checks it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from omegaconf import OmegaConf

from ecoflap_exp.data.caption_pairs import read_pairs
from ecoflap_exp.data.captioning import read_coco_karpathy, read_nocaps
from ecoflap_exp.data.conversations import read_conversations
from ecoflap_exp.data.coop import COOP_LAYOUT_URL, SPLITS, read_coop_split
from ecoflap_exp.data.coop import DATASETS as COOP_DATASETS
from ecoflap_exp.data.flickr import read_retrieval_set
from ecoflap_exp.data.images import image_folder
from ecoflap_exp.data.raw_files import Converter, Found, Gatherer, RawDir, convert, place_all
from ecoflap_exp.data.release_formats import SHOWN, karpathy_to_lavis_flickr, raw_to_parquet, synset_folder
from ecoflap_exp.data.text import read_documents
from ecoflap_exp.data.vqa import read_gqa, read_textvqa, read_vqa
from ecoflap_exp.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def configured_path(at: str) -> str:
    """Where a dataset file lives under the data root: `at` is the config key that reads it
    (`eval/vqav2:questions`: that config's value, written there once) or, for a layout no config
    names (a CoOp dataset's files, read from the data root by data/coop.py), the path itself."""
    if ":" not in at:
        return at
    config, key = at.split(":")
    value = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / f"{config}.yaml"), resolve=False)[key]
    prefix = "${paths.data_root}/"
    if not str(value).startswith(prefix):
        raise ValueError(f"configs/{config}.yaml:{key} = {value!r} is not under {prefix}")
    return str(value).removeprefix(prefix)


@dataclass(frozen=True)
class File:
    """One file (or folder) a dataset needs, at the path `at` gives (configured_path)."""

    at: str
    source: str  # where to get it
    archives: tuple[str, ...] = ()  # official archives that hold it
    # its released forms: path tail -> None (placed as it is) or the converter to this file's format;
    # by default its own file name
    released: dict[str, Converter | None] = field(default_factory=dict)
    optional: str = ""  # what needs it, when not every run of the dataset does
    gather: Gatherer | None = None  # a folder assembled from the raw dir (ImageNet)

    @property
    def rel(self) -> str:
        return configured_path(self.at)


@dataclass(frozen=True)
class Images:
    """The images a dataset's reader lists, under the path `at` gives (configured_path)."""

    at: str
    source: str
    archives: tuple[str, ...] = ()
    by_name: bool = False  # found by file name alone (releases name the folder differently)

    @property
    def rel(self) -> str:
        return configured_path(self.at)


class Placed(NamedTuple):
    """What a dataset's reader gets: the data root, its files (None: an absent optional one), its image root."""

    root: Path
    files: list[str | None]
    images: str


@dataclass(frozen=True)
class Dataset:
    title: str
    uses: str  # the configs that read it
    files: tuple[File, ...]
    read: Callable[[Placed], list[Path]]  # the project's reader on the placed files -> the images it opens
    images: Images | None = None


# --- the datasets --------------------------------------------------------------------------------

COCO2014_VAL = "COCO 2014 val images: val2014.zip from https://images.cocodataset.org/zips/val2014.zip"
VQA_DOWNLOAD = "https://visualqa.org/download.html"
OKVQA_DOWNLOAD = "https://okvqa.allenai.org/download.html"
GQA_DOWNLOAD = "https://cs.stanford.edu/people/dorarad/gqa/download.html"
TEXTVQA_DOWNLOAD = "https://textvqa.org/dataset/"
CAPTION_DATASETS = "caption_datasets.zip from https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"
HF_C4 = "from the allenai/c4 dataset repo on the Hugging Face hub (https://huggingface.co/datasets/allenai/c4, en/)"
IMAGENET_VAL = ("ImageNet val: ILSVRC2012_img_val.tar (https://image-net.org/download-images) sorted into <wnid>/ "
                "folders (valprep.sh), or its flat ILSVRC2012_val_*.JPEG images with LOC_val_solution.csv from "
                "https://www.kaggle.com/c/imagenet-object-localization-challenge")
IMAGENET_TRAIN = "ImageNet train as <wnid>/ folders (ILSVRC2012_img_train.tar from https://image-net.org, untarred)"


def texts_read(placed: Placed) -> list[Path]:
    """Each present text file yields documents (the eval reads it with read_documents)."""
    for source in filter(None, placed.files):
        if not any(read_documents(source)):
            raise UserError(f"{source} holds no text; download it again")
    return []


def coop_split_images(dataset: str, splits: tuple[str, ...]) -> Callable[[Placed], list[Path]]:
    """The images of the given CoOp splits (eval: test; calib=coop_train: train)."""
    return lambda placed: [path for split in splits for path, _ in read_coop_split(dataset, str(placed.root),
                                                                                   split).items]


#: per CoOp dataset (ImageNet apart): the official archives of its images, and where to get them
COOP_RELEASES = {
    "caltech101": (("101_ObjectCategories.tar.gz",), "101_ObjectCategories.tar.gz (inside caltech-101.zip) from "
                   "https://data.caltech.edu/records/mzrjq-6wc02"),
    "dtd": (("dtd-r1.0.1.tar.gz",), "dtd-r1.0.1.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
    "eurosat": (("EuroSAT.zip",), "EuroSAT.zip (folder 2750/) from http://madm.dfki.de/files/sentinel/EuroSAT.zip"),
    "fgvc_aircraft": (("fgvc-aircraft-2013b.tar.gz",), "fgvc-aircraft-2013b.tar.gz (its data/ folder) from "
                      "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/"),
    "food101": (("food-101.tar.gz",), "food-101.tar.gz from https://data.vision.ee.ethz.ch/cvl/food-101.tar.gz"),
    "oxford_flowers": (("102flowers.tgz",), "102flowers.tgz from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"),
    "oxford_pets": (("images.tar.gz",), "images.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/"),
    "stanford_cars": (("cars_train.tgz", "cars_test.tgz"), f"cars_train.tgz and cars_test.tgz (Stanford Cars; "
                      f"see {COOP_LAYOUT_URL})"),
    "sun397": (("SUN397.tar.gz",), "SUN397.tar.gz from http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz"),
    "ucf101": (("UCF-101-midframes.zip",), f"UCF-101-midframes.zip from the Google Drive link in {COOP_LAYOUT_URL}"),
}


def coop_dataset(name: str) -> Dataset:
    info = COOP_DATASETS[name]
    archives, source = COOP_RELEASES[name]
    folder = info.dataset_dir
    if name == "fgvc_aircraft":
        files = tuple(File(f"{folder}/{file}", f"{file} in {source}", archives)
                      for file in ("variants.txt", *(f"images_variant_{s}.txt" for s in SPLITS)))
        image_root = f"{folder}/images"
    else:
        split_file = f"split_zhou_{info.coop_name}.json"
        files = (File(f"{folder}/{split_file}", f"{split_file} from the Google Drive link for {info.coop_name} in "
                      f"{COOP_LAYOUT_URL}"),)
        image_root = f"{folder}/{info.image_dir}".rstrip("/")
    return Dataset(f"CoOp {info.coop_name} (train/val/test splits)",
                   f"eval=coop eval.dataset={name}, calib=coop_train calib.dataset={name}", files,
                   coop_split_images(name, SPLITS), Images(image_root, source, archives))


DATASETS: dict[str, Dataset] = {
    "vqav2": Dataset(
        "VQAv2 val", "eval=vqav2",
        (File("eval/vqav2:questions",
              f"v2_Questions_Val_mscoco.zip from {VQA_DOWNLOAD}", ("v2_Questions_Val_mscoco.zip",)),
         File("eval/vqav2:annotations",
              f"v2_Annotations_Val_mscoco.zip from {VQA_DOWNLOAD}", ("v2_Annotations_Val_mscoco.zip",))),
        lambda p: [s.image for s in read_vqa("vqav2", p.images, *p.files)],
        Images("eval/vqav2:images", COCO2014_VAL, ("val2014.zip",))),
    "vqav2_testdev": Dataset(
        "VQAv2 test-dev (answers on EvalAI)", "eval=vqav2_testdev",
        (File("eval/vqav2_testdev:questions",
              f"v2_Questions_Test_mscoco.zip from {VQA_DOWNLOAD}", ("v2_Questions_Test_mscoco.zip",)),),
        lambda p: [s.image for s in read_vqa("vqav2", p.images, p.files[0], with_answers=False)],
        Images("eval/vqav2_testdev:images", "COCO 2015 test images: test2015.zip from https://images.cocodataset.org/zips/test2015.zip",
               ("test2015.zip",))),
    "okvqa": Dataset(
        "OK-VQA val", "eval=okvqa",
        (File("eval/okvqa:questions",
              f"OpenEnded_mscoco_val2014_questions.json.zip from {OKVQA_DOWNLOAD}",
              ("OpenEnded_mscoco_val2014_questions.json.zip",)),
         File("eval/okvqa:annotations", f"mscoco_val2014_annotations.json.zip from {OKVQA_DOWNLOAD}",
              ("mscoco_val2014_annotations.json.zip",))),
        lambda p: [s.image for s in read_vqa("okvqa", p.images, *p.files)],
        Images("eval/okvqa:images", COCO2014_VAL, ("val2014.zip",))),
    "gqa": Dataset(
        "GQA test-dev balanced", "eval=gqa",
        (File("eval/gqa:questions", f"questions1.2.zip from {GQA_DOWNLOAD}", ("questions1.2.zip",)),),
        lambda p: [s.image for s in read_gqa(p.files[0], p.images)],
        Images("eval/gqa:images", f"images.zip from {GQA_DOWNLOAD}", ("images.zip",))),
    "textvqa": Dataset(
        "TextVQA val", "eval=textvqa",
        (File("eval/textvqa:annotations", f"TextVQA_0.5.1_val.json from {TEXTVQA_DOWNLOAD}"),),
        lambda p: [s.image for s in read_textvqa(p.files[0], p.images)],
        Images("eval/textvqa:images", f"train_val_images.zip from {TEXTVQA_DOWNLOAD} (its train_images/)",
               ("train_val_images.zip",), by_name=True)),
    "nocaps": Dataset(
        "NoCaps val", "eval=nocaps",
        (File("eval/nocaps:annotations", "nocaps_val_4500_captions.json from https://nocaps.org/download"),),
        lambda p: [image.path for image in read_nocaps(p.files[0], p.images)],
        Images("eval/nocaps:image_root",
               "each image's coco_url in nocaps_val_4500_captions.json (https://nocaps.org/download), "
               "saved as its file_name")),
    "coco_caption": Dataset(
        "COCO captioning, Karpathy test split", "eval=coco_caption",
        (File("eval/coco_caption:annotations", CAPTION_DATASETS, ("caption_datasets.zip",)),),
        lambda p: [image.path for image in read_coco_karpathy(p.files[0], p.images, "test")],
        Images("eval/coco_caption:image_root", COCO2014_VAL, ("val2014.zip",))),
    "flickr30k": Dataset(
        "Flickr30k 1k test (retrieval)", "eval=flickr30k, eval=flickr30k_itm",
        (File("eval/flickr30k:annotations",
              "LAVIS's https://storage.googleapis.com/sfr-vision-language-research/datasets/flickr30k_test.json, or "
              f"Karpathy's dataset_flickr30k.json in {CAPTION_DATASETS}", ("caption_datasets.zip",),
              {"flickr30k_test.json": lambda s, t: "copied LAVIS's list" if shutil.copyfile(s, t) else "",
               "dataset_flickr30k.json": karpathy_to_lavis_flickr}),),
        lambda p: read_retrieval_set(p.files[0], p.images).images,
        Images("eval/flickr30k:image_root", "Flickr30k images: flickr30k-images.tar.gz from the form at "
               "https://shannon.cs.illinois.edu/DenotationGraph/",
               ("flickr30k-images.tar.gz", "flickr30k-images.tar", "flickr30k-images.zip"), by_name=True)),
    **{name: coop_dataset(name) for name in COOP_DATASETS if name != "imagenet"},
    "imagenet": Dataset(
        "CoOp ImageNet (test = val)", "eval=coop eval.dataset=imagenet, calib=coop_train calib.dataset=imagenet",
        (File("imagenet/images/val", IMAGENET_VAL, gather=synset_folder("val")),
         File("imagenet/classnames.txt", f"classnames.txt from the Google Drive link for ImageNet in {COOP_LAYOUT_URL}",
              optional="eval=coop dataset=imagenet when the val images do not cover all 1000 classes (with all "
                       "1000, open_clip's names are used)"),
         File("imagenet/images/train", IMAGENET_TRAIN, optional="calib=coop_train calib.dataset=imagenet",
              gather=synset_folder("train"))),
        coop_split_images("imagenet", ("test",)), Images("imagenet/images/val", IMAGENET_VAL)),
    "imagenet_top1": Dataset(
        "ImageNet val as an ImageFolder (ViT top-1)", "eval=imagenet_top1, calib=image_folder",
        (File("eval/imagenet_top1:root", IMAGENET_VAL, gather=synset_folder("val")),
         File("calib/image_folder:root", IMAGENET_TRAIN, optional="calib=image_folder",
              gather=synset_folder("train"))),
        lambda p: [path for path, _ in image_folder(p.files[0])], Images("imagenet/val", IMAGENET_VAL)),
    "wikitext2": Dataset(
        "WikiText-2 raw test", "eval=wikitext2",
        (File("eval/wikitext2:source",
              "wikitext-2-raw-v1/test-00000-of-00001.parquet from the Salesforce/wikitext dataset repo on the Hugging "
              "Face hub (https://huggingface.co/datasets/Salesforce/wikitext), or wikitext-2-raw-v1.zip "
              "(wikitext-2-raw/wiki.test.raw is converted)", ("wikitext-2-raw-v1.zip",),
              {"wikitext-2-raw-v1/test-00000-of-00001.parquet": None,
               "wikitext-2-raw/wiki.test.raw": raw_to_parquet}),),
        texts_read),
    "c4": Dataset(
        "C4 shards (LLaMA calibration; validation perplexity)", "calib=c4, eval=c4_validation, calib=c4_validation",
        (File("calib/c4:source", f"en/c4-train.00000-of-01024.json.gz {HF_C4}"),
         File("eval/c4_validation:source", f"en/c4-validation.00000-of-00008.json.gz {HF_C4}",
              optional="eval=c4_validation and calib=c4_validation")),
        texts_read),
    "cc3m": Dataset(
        "CC3M image-caption pairs (BLIP-2 calibration)", "calib=cc3m",
        (File("calib/cc3m:annotations",
              "scripts/prepare_cc3m.py: run `python scripts/prepare_cc3m.py IMG2DATASET_OUTPUT "
              "--out <data root>/cc3m` (its --help says how to download CC3M with img2dataset)"),),
        lambda p: [path for path, _ in read_pairs(p.files[0])],
        Images("cc3m", "scripts/prepare_cc3m.py (writes the images beside cc3m.tsv)")),
    "llava_instruct": Dataset(
        "LLaVA-1.5 instruction mixture (LLaVA / Qwen2-VL calibration)", "calib=llava_instruct",
        (File("calib/llava_instruct:annotations", "llava_v1_5_mix665k.json from "
              "https://huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K"),),
        lambda p: [path for path, _ in read_conversations(p.files[0], p.images)],
        Images("calib/llava_instruct:image_root", "the images of LLaVA's mixture in its layout (coco/train2017, "
               "gqa/images, ocr_vqa/images, textvqa/train_images, vg/VG_100K, vg/VG_100K_2): see LLaVA's "
               "docs (https://github.com/haotian-liu/LLaVA#visual-instruction-tuning)")),
    "coco_captions": Dataset(
        "COCO train2017 captions (calibration pairs)", "calib=coco_captions",
        (File("calib/coco_captions:annotations",
              "annotations_trainval2017.zip from https://images.cocodataset.org/annotations/annotations_trainval2017.zip",
              ("annotations_trainval2017.zip",)),),
        lambda p: [path for path, _ in read_pairs(p.files[0], p.images)],
        Images("calib/coco_captions:image_root", "COCO 2017 train images: train2017.zip from "
               "https://images.cocodataset.org/zips/train2017.zip", ("train2017.zip",))),
}


# --- preparing one dataset -----------------------------------------------------------------------


def say(status: str, what: object, detail: str = "") -> None:
    print(f"  {status:<9}{what}" + (f"  {detail}" if detail else ""))


def prepare_files(files: tuple[File, ...], root: Path, raw: RawDir | None, link: bool) -> list[bool]:
    """Find or place each file, one line each; True for each one there afterwards. Plain copies are
    placed together, so the members of one archive come out of one pass over it."""
    reports, pending = [], []
    for file in files:
        reports.append(file_report(file, root / file.rel, raw, link, pending))
    place_all(pending, link, "placing files")
    for file, (status, detail) in zip(files, reports, strict=True):
        say(status, root / file.rel, detail)
    return [status in ("found", "placed") for status, _ in reports]


def file_report(file: File, target: Path, raw: RawDir | None, link: bool,
                pending: list[tuple[Found, Path]]) -> tuple[str, str]:
    """(status, detail) of one file; a released copy to place as it is goes to `pending`."""
    if target.exists():
        return "found", ""
    need = f"only for {file.optional}; " if file.optional else ""
    if target.is_symlink():
        return "missing", f"{need}a broken link: remove it and rerun, or put {file.source} there"
    try:
        done = find_and_place(file, target, raw, link, pending) if raw is not None else None
    except UserError as err:
        return "missing", f"{need}{err}"
    if done:
        return "placed", done
    return "optional" if file.optional else "missing", f"{need}get {file.source}"


def find_and_place(file: File, target: Path, raw: RawDir, link: bool, pending: list[tuple[Found, Path]]) -> str | None:
    if file.gather is not None:
        return file.gather(raw, target, link)
    parts = PurePosixPath(file.rel).parts
    for tail, converter in (file.released or {parts[-1]: None}).items():
        found = raw.find(PurePosixPath(tail).parts, parts, file.archives)
        if found is not None and converter is not None:
            return convert(found, target, converter)
        if found is not None:
            pending.append((found, target))
            return f"{'extracted' if found.member else 'linked' if link else 'copied'} <- {found}"
    return None


def prepare_images(images: Images, paths: list[Path], root: Path, raw: RawDir | None, link: bool) -> bool:
    """Find or place every image a reader listed; one summary line; True when all are there."""
    image_root = root / images.rel
    needed = list(dict.fromkeys(paths))
    missing = [p for p in needed if not p.is_file()]
    placed = 0
    if raw is not None and missing:
        located = []
        for path in (p for p in missing if not p.is_symlink()):  # a broken link is the user's: left alone
            rel = path.relative_to(image_root) if path.is_relative_to(image_root) else Path(path.name)
            tail = rel.parts[-1:] if images.by_name else rel.parts
            found = raw.find(tail, path.relative_to(root).parts if path.is_relative_to(root) else tail,
                             images.archives)
            if found is not None:
                located.append((found, path))
        place_all(located, link, f"placing {images.rel} images")
        placed = len(located)
        missing = [p for p in missing if not p.is_file()]
    counts = f"{len(needed)} needed, {len(needed) - placed - len(missing)} found, {placed} placed"
    if missing:
        first = ", ".join(str(p) for p in missing[:SHOWN])
        say("missing", image_root, f"{counts}, {len(missing)} missing (first: {first}): get {images.source}")
        return False
    say("images", image_root, counts)
    return True


def prepare(name: str, root: Path, raw: RawDir | None, link: bool) -> bool:
    """Find, place and read one dataset; True when its eval will read it."""
    dataset = DATASETS[name]
    print(f"{name}: {dataset.title} ({dataset.uses})")
    present = prepare_files(dataset.files, root, raw, link)
    if not all(ok or file.optional for ok, file in zip(present, dataset.files, strict=True)):
        then = f"; then its images under {root / dataset.images.rel}: {dataset.images.source}" if dataset.images else ""
        say("unread", name, f"files are missing (above){then}")
        return False
    files = [str(root / file.rel) if ok else None for ok, file in zip(present, dataset.files, strict=True)]
    image_root = str(root / dataset.images.rel) if dataset.images else ""
    try:
        paths = dataset.read(Placed(root, files, image_root))
    except UserError as err:
        say("invalid", name, str(err))
        return False
    if dataset.images is not None and not prepare_images(dataset.images, paths, root, raw, link):
        return False
    say("ready", name, "read by the project's reader" + (f"; all {len(set(paths))} images there" if paths else ""))
    return True


def list_datasets() -> None:
    for name, dataset in DATASETS.items():
        print(f"{name}: {dataset.title} ({dataset.uses})")
        for file in dataset.files:
            note = f"  (optional: {file.optional})" if file.optional else ""
            print(f"    {file.rel}{'/' if file.gather else ''}{note}\n        from {file.source}")
        if dataset.images is not None and dataset.images.rel not in {file.rel for file in dataset.files}:
            print(f"    {dataset.images.rel}/...  (the images its files list)\n        from {dataset.images.source}")


def default_data_root() -> Path:
    """paths.data_root of configs/config.yaml (env ECOFLAP_DATA, else ${paths.root}/data)."""
    return Path(OmegaConf.load(ROOT / "configs" / "config.yaml").paths.data_root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", help=f"one of {', '.join(DATASETS)}, or all")
    parser.add_argument("dirs", nargs="*", metavar="RAW_DIR DATA_ROOT",
                        help="the downloads folder (not with --check) and the data root (default: paths.data_root)")
    parser.add_argument("--check", action="store_true", help="only check DATA_ROOT; no raw dir")
    parser.add_argument("--link", action="store_true", help="symlink files instead of copying them")
    parser.add_argument("--list", action="store_true", help="list the datasets and their layout under the data root")
    args = parser.parse_args(argv)
    if args.list:
        list_datasets()
        return 0
    if args.dataset not in (*DATASETS, "all"):
        parser.error(f"dataset {args.dataset!r} is unknown; use one of {', '.join(DATASETS)}, or all")
    if len(args.dirs) > (1 if args.check else 2) or (not args.check and not args.dirs):
        parser.error("give RAW_DIR [DATA_ROOT], or --check [DATA_ROOT]")
    raw_dir = None if args.check else Path(args.dirs[0]).expanduser()
    given_root = args.dirs[0 if args.check else 1:]
    root = Path(given_root[0]).expanduser() if given_root else default_data_root()
    names = list(DATASETS) if args.dataset == "all" else [args.dataset]
    try:
        raw = RawDir(raw_dir) if raw_dir is not None else None
        print(f"data root {root}")
        ready = {name: prepare(name, root, raw, args.link) for name in names}
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    incomplete = [name for name, ok in ready.items() if not ok]
    print(f"ready: {', '.join(n for n, ok in ready.items() if ok) or 'none'}"
          + (f"; incomplete: {', '.join(incomplete)} (see above)" if incomplete else ""))
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
