"""Image captioning (BLIP-2, BLIP): NoCaps val per domain and COCO Karpathy test, CIDEr and SPICE
x100 (BLEU-4 too where the eval asks, as the ID paper reports it).

Protocol (reference/evals.md 3.3, ecoflap.md 5.1): one caption per image from
`adapter.generate(images, ["a photo of"] * n, num_beams=5, max_new_tokens=30, min_length=8,
length_penalty=1.0, repetition_penalty=1.0)`; the decoding settings are pinned because LAVIS's
defaults changed between versions (HEAD: repetition_penalty 1.15, length_penalty 0).

Metrics through pycocoevalcap, as COCOEvalCap computes them (evals.md 3.2, 3.4):
- captions and references go through its Java PTBTokenizer (lower-case, punctuation dropped);
  line breaks and other whitespace are collapsed first, because the tokenizer reads one caption
  per line and a stray "\\r" would shift every later caption onto the wrong image;
- CIDEr (= CIDEr-D) with its IDF taken from the references of the images being scored, so each
  NoCaps domain is its own scorer run over that domain's images ("cider_in_domain" is not the
  overall run's per-image scores averaged over the domain); "cider" is the whole set ("entire");
- SPICE has no corpus statistics (it is the mean of per-image F-scores), so one SPICE run gives
  every domain's number. It needs the Stanford CoreNLP 3.6.0 jars in pycocoevalcap/spice/lib,
  which pycocoevalcap would download on first use; without them (or without a working JVM) SPICE
  is skipped with one warning and the result holds `spice_skipped: 1.0` and no SPICE keys,
  never a 0 that could pass for a score. An image whose SPICE F-score is undefined (an empty
  caption: no tuples) counts as 0.
pycocoevalcap runs `java` and writes its temporary files inside its own installed package, so
Java on PATH and a writable install are checked first, with the fix in the message.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import subprocess
import time
from abc import abstractmethod
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from ecoflap_exp.data.captioning import (
    KARPATHY_SOURCE,
    NOCAPS_OFFICIAL_SOURCE,
    CaptionedImage,
    check_captioned_images,
    read_coco_karpathy,
    read_nocaps,
)
from ecoflap_exp.data.images import decode_images
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.base import ReadsSplit
from ecoflap_exp.extras import require
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.capabilities import GeneratesFromImages
from ecoflap_exp.options import Count
from ecoflap_exp.progress import track

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

CAPTION_PROMPT = "a photo of"
DEFAULT_GENERATION: dict[str, Any] = {"num_beams": 5, "max_new_tokens": 30, "min_length": 8,
                                      "length_penalty": 1.0, "repetition_penalty": 1.0}
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
#: SPICE's serialiser reflects into java.lang.String, which Java 16+ forbids unless opened; Java 8
#: ignores JDK_JAVA_OPTIONS, so setting it is harmless there
SPICE_JAVA_OPTIONS = "--add-opens java.base/java.lang=ALL-UNNAMED"
JAVA_FIX = ("install a Java runtime (Debian/Ubuntu: apt-get install default-jre-headless) so that `java` is on "
            "PATH; pycocoevalcap's PTB tokenizer runs it")


def pycocoevalcap_dir() -> Path:
    """The installed pycocoevalcap package folder (a namespace package: no __file__)."""
    try:
        import pycocoevalcap
    except ImportError as err:
        raise UserError("captioning metrics need pycocoevalcap: pip install pycocoevalcap") from err
    return Path(next(iter(pycocoevalcap.__path__)))


def require_java() -> None:
    if shutil.which("java") is None:
        raise UserError(f"captioning metrics need Java and `java` is not on PATH: {JAVA_FIX}")


def require_writable(folder: Path, what: str) -> None:
    if not os.access(folder, os.W_OK):
        raise UserError(f"{what} writes its temporary files into its own package folder {folder}, which is not "
                        f"writable; install pycocoevalcap into a virtual environment you own (pip install "
                        f"pycocoevalcap) or make that folder writable")


def ptb_tokenize(captions: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """pycocoevalcap's PTBTokenizer over {key: [caption, ...]}, one Java run for all of them."""
    require_java()
    require_writable(pycocoevalcap_dir() / "tokenizer", "pycocoevalcap's PTB tokenizer")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    one_line = {key: [{"caption": " ".join(text.split())} for text in texts] for key, texts in captions.items()}
    tokenized = PTBTokenizer().tokenize(one_line)
    if any(len(tokenized.get(key, ())) != len(texts) for key, texts in captions.items()):
        raise UserError("pycocoevalcap's PTB tokenizer returned a different number of captions than it was given; "
                        "check that `java` runs (java -version)")
    return tokenized


def cider(references: Mapping[int, Sequence[str]], predictions: Mapping[int, str]) -> float:
    """CIDEr x100 of tokenised predictions against tokenised references, over exactly these images
    (the IDF comes from these images' references)."""
    from pycocoevalcap.cider.cider import Cider

    score, _ = Cider().compute_score({k: list(references[k]) for k in predictions},
                                     {k: [predictions[k]] for k in predictions})
    return 100.0 * float(score)


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here, or None when its jars, Java and a writable folder are present."""
    spice_dir = pycocoevalcap_dir() / "spice"
    missing = [jar for jar in SPICE_JARS if not (spice_dir / "lib" / jar).is_file()]
    if missing:
        return (f"its Stanford CoreNLP 3.6.0 jars ({', '.join(missing)}) are not in {spice_dir / 'lib'}; copy them "
                f"there from stanford-corenlp-full-2015-12-09.zip (pycocoevalcap would download it from "
                f"nlp.stanford.edu on first use)")
    if shutil.which("java") is None:
        return f"`java` is not on PATH ({JAVA_FIX})"
    if not os.access(spice_dir, os.W_OK):
        return f"{spice_dir} is not writable (SPICE writes its temporary files and cache there)"
    return None


@contextlib.contextmanager
def java_options(options: str) -> Iterator[None]:
    """JDK_JAVA_OPTIONS for the `java` processes started inside (pycocoevalcap builds the command)."""
    before = os.environ.get("JDK_JAVA_OPTIONS")
    os.environ["JDK_JAVA_OPTIONS"] = f"{before} {options}" if before else options
    try:
        yield
    finally:
        if before is None:
            del os.environ["JDK_JAVA_OPTIONS"]
        else:
            os.environ["JDK_JAVA_OPTIONS"] = before


def spice_per_image(references: Mapping[int, Sequence[str]], predictions: Mapping[int, str]) -> dict[int, float]:
    """pycocoevalcap's SPICE F-score of each image (tokenised input), undefined ones as 0."""
    from pycocoevalcap.spice.spice import Spice

    keys = sorted(predictions)
    with java_options(SPICE_JAVA_OPTIONS):
        _, scores = Spice().compute_score({k: list(references[k]) for k in keys}, {k: [predictions[k]] for k in keys})
    per_image = {k: float(s["All"]["f"]) for k, s in zip(keys, scores, strict=True)}
    return {k: 0.0 if math.isnan(f) else f for k, f in per_image.items()}


def metric_suffix(subset: str) -> str:
    return f"_{subset.replace('-', '_')}" if subset else ""


def bleu4(references: Mapping[int, Sequence[str]], predictions: Mapping[int, str]) -> float:
    """BLEU-4 x100 of tokenised predictions (corpus-level, as COCOEvalCap's Bleu_4)."""
    from pycocoevalcap.bleu.bleu import Bleu

    score, _ = Bleu(4).compute_score({k: list(references[k]) for k in predictions},
                                     {k: [predictions[k]] for k in predictions}, verbose=0)
    return 100.0 * float(score[3])


def score_captions(references: Mapping[int, Sequence[str]], predictions: Mapping[int, str],
                   domains: Mapping[int, str] | None = None, spice: bool = True,
                   dataset: str = "captioning", bleu: bool = False) -> dict[str, float]:
    """CIDEr (and SPICE) x100 over all images ("cider", "spice") and over each domain's images as
    its own set ("cider_in_domain", ...); `spice_skipped: 1.0` instead of SPICE when it cannot run;
    with `bleu`, BLEU-4 x100 over all images ("bleu4", the ID paper's second caption metric)."""
    missing, extra = references.keys() - predictions.keys(), predictions.keys() - references.keys()
    if missing or extra:
        raise UserError(f"{dataset}: the predictions must cover exactly the scored images; {len(missing)} image(s) "
                        f"have no caption, {len(extra)} caption(s) have no image (e.g. {sorted(missing | extra)[:5]})")
    start = time.perf_counter()
    tokenized = ptb_tokenize({**{("ref", k): list(v) for k, v in references.items()},
                              **{("pred", k): [c] for k, c in predictions.items()}})
    refs = {k: tokenized[("ref", k)] for k in references}
    preds = {k: tokenized[("pred", k)][0] for k in references}
    subsets = {"": list(references)}
    for domain in sorted(set(domains.values()) if domains else ()):
        subsets[domain] = [k for k in references if domains[k] == domain]
    metrics = {f"cider{metric_suffix(name)}": cider({k: refs[k] for k in ids}, {k: preds[k] for k in ids})
               for name, ids in subsets.items()}
    if bleu:
        metrics["bleu4"] = bleu4(refs, preds)
    log.info("%s: PTB tokenizer + CIDEr over %d images (%d sets) took %.1f s", dataset, len(references),
             len(subsets), time.perf_counter() - start)
    reason = spice_unavailable_reason() if spice else "disabled by the eval's spice=false"
    if reason is None:
        try:
            per_image = spice_per_image(refs, preds)
        except (subprocess.CalledProcessError, OSError) as err:
            reason = (f"its Java run failed ({err}); SPICE is reported to work on Java 8 and 11 (we already pass "
                      f"{SPICE_JAVA_OPTIONS} for newer ones)")
        else:
            metrics |= {f"spice{metric_suffix(name)}": 100.0 * sum(per_image[k] for k in ids) / len(ids)
                        for name, ids in subsets.items()}
    if reason is not None:
        if spice:
            log.warning("%s: SPICE skipped: %s. The result records spice_skipped=1.0 and no SPICE numbers.",
                        dataset, reason)
        metrics["spice_skipped"] = 1.0
    return metrics


def generate_captions(adapter: GeneratesFromImages, images: Sequence[CaptionedImage], prompt: str,
                      generation: Mapping[str, Any], batch_size: int, description: str) -> dict[int, str]:
    """One caption per image id, generated in batches of `batch_size` images with one prompt."""
    captions: dict[int, str] = {}
    starts = range(0, len(images), batch_size)
    for i in track(starts, description, total=len(starts)):
        batch = images[i : i + batch_size]
        pixels = [image for image, _ in decode_images([(img.path, img.image_id) for img in batch], 0.0)]
        texts = adapter.generate(pixels, [prompt] * len(pixels), **generation)
        captions |= {img.image_id: text.strip() for img, text in zip(batch, texts, strict=True)}
    return captions


class Captioning(ReadsSplit):
    """Caption each image once with the adapter, score against the references."""

    needs = (GeneratesFromImages,)
    dataset = "captioning"
    source = ""

    def __init__(self, annotations: str, image_root: str, prompt: str = CAPTION_PROMPT,
                 generation: Mapping[str, Any] | None = None, batch_size: Count = 16, limit: Count | None = None,
                 spice: bool = True, bleu: bool = False):
        require("pycocoevalcap", "captions", f"the {self.dataset} captioning eval (CIDEr, SPICE)")
        self.annotations = annotations
        self.image_root = image_root
        self.prompt = prompt
        self.generation = dict(generation) if generation is not None else dict(DEFAULT_GENERATION)  # whole, not merged
        self.batch_size = batch_size
        self.limit = limit
        self.spice, self.bleu = spice, bleu

    @abstractmethod
    def images(self) -> list[CaptionedImage]:
        """The benchmark's images with their references, in file order, each id once."""

    def read(self) -> list[CaptionedImage]:
        """The evaluated images (the first `limit`), checked to exist."""
        images = self.images()[: self.limit]
        check_captioned_images(images, self.image_root, self.dataset, self.source)
        return images


    @torch.no_grad()
    def evaluate(self, adapter: ModelAdapter) -> dict[str, float]:
        images = self.evaluated
        start = time.perf_counter()
        predictions = generate_captions(adapter, images, self.prompt, self.generation, self.batch_size,
                                        f"captioning {self.dataset}")
        log.info("%s: captioned %d images in %.1f s", self.dataset, len(images), time.perf_counter() - start)
        domains = {img.image_id: img.domain for img in images if img.domain is not None} or None
        return score_captions({img.image_id: img.references for img in images}, predictions, domains,
                              spice=self.spice, dataset=self.dataset, bleu=self.bleu)


class NoCapsCaptioning(Captioning):
    """NoCaps val: CIDEr/SPICE overall and per domain (in-domain, near-domain, out-domain)."""

    dataset = "NoCaps val"
    source = NOCAPS_OFFICIAL_SOURCE

    def __init__(self, annotations: str, image_root: str, image_list: str | None = None, **kwargs: Any):
        super().__init__(annotations, image_root, **kwargs)
        self.image_list = image_list

    def images(self) -> list[CaptionedImage]:
        return read_nocaps(self.annotations, self.image_root, self.image_list)


class CocoCaptioning(Captioning):
    """COCO captioning on a Karpathy split (test: 5,000 images, 5 references each)."""

    dataset = "COCO Karpathy"
    source = KARPATHY_SOURCE

    def __init__(self, annotations: str, image_root: str, split: str = "test", **kwargs: Any):
        super().__init__(annotations, image_root, **kwargs)
        self.split = split

    def images(self) -> list[CaptionedImage]:
        return read_coco_karpathy(self.annotations, self.image_root, self.split)
