"""Tiny text and image-caption fixtures in their released formats: WikiText-2 raw (zip, extracted
file, HF parquet), C4 JSON-lines shards, img2dataset webdataset tar shards, and an lm-eval task
on local JSON lines; a LLaMA-like tokenizer that puts one BOS first."""

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

#: a fake wiki.test.raw, 20 lines in the release's style: " = Title = " headings, tokenised
#: punctuation (" @-@ ", " , "), blank lines written as " \n", unicode dashes
WIKI_RAW = (
    " \n"
    " = Robert Boulter = \n"
    " \n"
    " Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role . \n"
    " \n"
    " = = Career = = \n"
    " \n"
    " \n"
    " = = = 2000 – 2005 = = = \n"
    " \n"
    " In 2000 Boulter had a role in the episode \" Taking the Part \" of the series The Bill . \n"
    " He was cast in the 2003 play Herons , written by Simon Stephens . \n"
    " \n"
    " = = = 2006 – present = = = \n"
    " \n"
    " Boulter starred in 2006 in the film Donkey Punch , directed by Olly Blackburn . \n"
    " In May 2008 , Boulter appeared in an episode of the series Casualty , over 1 @,@ 000 episodes in . \n"
    " \n"
    " = Du Fu = \n"
    " Du Fu ( 712 – 770 ) was a prominent Chinese poet of the Tang dynasty . \n"
)

#: the rows of HF wikitext-2-raw-v1 for WIKI_RAW, written out by hand: blank lines become "",
#: every other line keeps its trailing "\n"
WIKI_ROWS = [
    "",
    " = Robert Boulter = \n",
    "",
    " Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role . \n",
    "",
    " = = Career = = \n",
    "",
    "",
    " = = = 2000 – 2005 = = = \n",
    "",
    " In 2000 Boulter had a role in the episode \" Taking the Part \" of the series The Bill . \n",
    " He was cast in the 2003 play Herons , written by Simon Stephens . \n",
    "",
    " = = = 2006 – present = = = \n",
    "",
    " Boulter starred in 2006 in the film Donkey Punch , directed by Olly Blackburn . \n",
    " In May 2008 , Boulter appeared in an episode of the series Casualty , over 1 @,@ 000 episodes in . \n",
    "",
    " = Du Fu = \n",
    " Du Fu ( 712 – 770 ) was a prominent Chinese poet of the Tang dynasty . \n",
]


def write_wikitext(root: Path) -> dict[str, Path]:
    """The three released layouts of the same test split: wikitext-2-raw-v1.zip (with
    wikitext-2-raw/wiki.{train,valid,test}.raw), the extracted wiki.test.raw, and HF's
    wikitext-2-raw-v1/test-00000-of-00001.parquet."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "wikitext-2-raw-v1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("wikitext-2-raw/", "")
        for split in ("train", "valid"):
            zf.writestr(f"wikitext-2-raw/wiki.{split}.raw", " \n = Other = \n")
        zf.writestr("wikitext-2-raw/wiki.test.raw", WIKI_RAW)
    extracted = root / "wikitext-2-raw" / "wiki.test.raw"
    extracted.parent.mkdir(exist_ok=True)
    extracted.write_bytes(WIKI_RAW.encode("utf-8"))
    parquet = root / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet"
    parquet.parent.mkdir(exist_ok=True)
    pd.DataFrame({"text": WIKI_ROWS}).to_parquet(parquet)
    return {"zip": archive, "member": archive / "wikitext-2-raw" / "wiki.test.raw", "raw": extracted,
            "parquet": parquet}


C4_DOCS = [
    "Beginners BBQ Class Taking Place in Missoula! Do you want to get better at making delicious BBQ?",
    "Discussion in 'Mac OS X Lion (10.7)' started by axboi87, Jan 20, 2012. I've got a 500gb internal drive.",
    "Foil plaid lycra and spandex shortall with metallic slinky insets. Attached metallic elastic belt.",
]


def write_c4(path: Path, docs: list[str] = C4_DOCS) -> Path:
    """A C4 shard: gzipped JSON lines with text, timestamp and url (en/c4-*.json.gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"text": text, "timestamp": f"2019-04-25T12:57:{i:02d}Z",
                                "url": f"https://example.com/{i}"}) + "\n")
    return path


def jpeg_bytes(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(root: Path, captions: list[list[str]], broken: frozenset[str] = frozenset(),
                     json_only: frozenset[str] = frozenset()) -> list[Path]:
    """img2dataset's webdataset output: root/{shard:05d}.tar holding {key}.jpg, {key}.txt and
    {key}.json per sample (key = shard number + index in the shard, 9 digits), plus the
    {shard:05d}.parquet and {shard:05d}_stats.json it writes beside each shard.
    `broken`: keys whose .jpg holds bytes that are no image; `json_only`: keys with no .txt
    (the caption only in the .json)."""
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for shard, shard_captions in enumerate(captions):
        path = root / f"{shard:05d}.tar"
        rows = []
        with tarfile.open(path, "w") as tar:
            for i, caption in enumerate(shard_captions):
                key = f"{shard:05d}{i:04d}"
                image = b"not a jpeg at all" if key in broken else jpeg_bytes(seed=shard * 100 + i)
                add_member(tar, f"{key}.jpg", image)
                if key not in json_only:
                    add_member(tar, f"{key}.txt", caption.encode("utf-8"))
                meta = {"url": f"https://example.com/{key}.jpg", "caption": caption, "key": key, "status": "success",
                        "error_message": None, "width": 24, "height": 24}
                add_member(tar, f"{key}.json", json.dumps(meta).encode("utf-8"))
                rows.append(meta)
        pd.DataFrame(rows).to_parquet(root / f"{shard:05d}.parquet")
        (root / f"{shard:05d}_stats.json").write_text(json.dumps({"count": len(rows), "successes": len(rows)}))
        shards.append(path)
    return shards


#: lm-eval multiple-choice task: (question, choices, label), scored by the tests' own computation
MC_DOCS = [
    ("What is two plus two?", ["four", "five"], 0),
    ("What colour is the sky?", ["blue", "green", "red"], 0),
    ("What does a cat say?", ["woof", "meow"], 1),
    ("Which is a fruit?", ["apple", "chair", "rock"], 0),
    ("Opposite of hot?", ["cold", "warm"], 0),
    ("Which animal can fly?", ["dog", "fish", "bird"], 2),
    ("What is frozen water?", ["steam", "ice"], 1),
    ("How many legs has a spider?", ["six", "eight", "ten", "four"], 1),
    ("Capital of France?", ["Rome", "Paris", "Berlin"], 1),
    ("What do bees make?", ["honey", "milk"], 0),
]

MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_mc_task(root: Path) -> Path:
    """A folder for lm-eval's include_path: tiny_mc.yaml on tiny_mc.jsonl (question, choices,
    label per line); the datasets cache goes under root too."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": y}) + "\n" for q, c, y in MC_DOCS))
    (root / "tiny_mc.yaml").write_text(MC_TASK.format(data=data, cache=root / "hf_cache"))
    return root


def write_img2dataset_files(root: Path, captions: list[str | None], failed: int = 0) -> Path:
    """img2dataset's output_format=files: root/00000/{key}.jpg, {key}.txt, {key}.json and
    root/00000.parquet (key, caption, status). A None caption writes the image with no .txt and a
    .json without "caption" (the caption then comes from the parquet only); `failed` extra rows are
    failed downloads (no files)."""
    folder = root / "00000"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, caption in enumerate(captions):
        key = f"00000{i:04d}"
        (folder / f"{key}.jpg").write_bytes(jpeg_bytes(seed=i))
        meta = {"url": f"https://example.com/{key}.jpg", "key": key, "status": "success", "error_message": None}
        if caption is not None:
            (folder / f"{key}.txt").write_text(caption)
            meta["caption"] = caption
        (folder / f"{key}.json").write_text(json.dumps(meta))
        rows.append({**meta, "caption": caption or f"parquet caption {i}"})
    for j in range(failed):
        key = f"00000{len(captions) + j:04d}"
        rows.append({"url": f"https://example.com/{key}.jpg", "key": key, "status": "failed_to_download",
                     "error_message": "HTTP Error 404", "caption": "lost"})
    pd.DataFrame(rows).to_parquet(root / "00000.parquet")
    return root


def bos_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that, like LLaMA's, prepends one BOS by default (id 1)."""
    words = sorted({w for t in texts for w in t.split()})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
