"""Calibration sources: where raw calibration samples come from.

A source returns raw samples (token windows, (image, label) pairs, (image, caption) pairs); the
model adapter's `collate` turns a list of them into a batch. The runner slices the samples into
batches of `batch_size`.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Redraw
from ecoflap_exp.options import Count, NonNegativeInt, Typed


class CalibrationSource(Typed, ABC):
    option_group = "calib"
    #: what a sample is ("tokens", "labelled_images", "image_captions"): the adapter must collate it
    kind: str = ""
    #: "train": images get the model's training augmentation, drawn from the seed (sources of
    #: images set it from their config)
    augment: str = "eval"
    #: what the last `batches()` drew, for the run record: source, samples, seed, the files read
    #: (with their sizes) and a SHA-1 of the collated batches' contents
    identity: Mapping[str, Any] = MappingProxyType({})
    #: the samples check_data read, until `batches` takes them
    prefetched: list[Any] = []

    def __init__(self, num_samples: Count = 128, batch_size: Count = 8, seed: NonNegativeInt = 0):
        if num_samples < batch_size:
            raise UserError(
                f"calib.num_samples={num_samples} is fewer than one batch (calib.batch_size={batch_size}); "
                f"raise calib.num_samples or lower calib.batch_size"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed

    def available(self) -> int | None:
        """How many samples the source holds, where that is known without reading it (else None)."""
        return None

    def check_count(self, count: int) -> None:
        """UserError now when the source is known to hold fewer than `count` samples."""
        held = self.available()
        if held is not None and held < count:
            raise UserError(f"calibration source {type(self).__name__} holds {held} samples, fewer than the {count} "
                            f"asked for (calib.num_samples={self.num_samples}, or the scorer's num_samples); lower "
                            f"them")

    def check_data(self, count: int) -> None:
        """Read and check what the first `count` samples come from, before any model loads, so a
        missing or malformed file ends the run there; what was read is kept for `batches` (sources
        that need the model to read, or generate their samples, check their files only)."""
        return None

    def files(self) -> list[str]:
        """The files (or folders) the samples come from (none for generated samples)."""
        return []

    @abstractmethod
    def samples(self, adapter: ModelAdapter, count: int | None = None) -> list[Any]:
        """The first `count` raw samples (default num_samples; raise UserError if the source has
        fewer). The first num_samples are the same whatever `count` is."""

    def batches(self, adapter: ModelAdapter, count: int | None = None) -> list[Batch]:
        """The first `count` samples (default num_samples; more when a scorer needs more, as the
        ID paper's 2000) in batches of batch_size."""
        count = max(count or 0, self.num_samples)
        samples = self.prefetched[:count] if len(self.prefetched) >= count else self.checked_samples(adapter, count)
        self.prefetched = []  # read once: the batches hold what the run needs
        batches = self.collated(adapter, samples, self.seed)
        self.identity = {"source": type(self).__name__, "samples": count, "batch_size": self.batch_size,
                         "seed": self.seed,
                         "files": {f: os.path.getsize(f) if os.path.isfile(f) else None for f in self.files()},
                         "sha1": batches_sha1(batches)}
        return batches

    def redrawing(self, adapter: ModelAdapter) -> Redraw | None:
        """Fresh batches for each further pass over the data (calib.redraw), as the official code's
        DataLoader gives them each time it is iterated: the same samples, their training views and
        the adapter's own draws (BLIP-2's prefix splits) drawn from (seed, the pass's key). None
        when nothing would differ (eval-view images and an adapter that draws nothing). The run
        record's calibration counts the passes drawn (`redrawn_passes`)."""
        if self.augment != "train" and not adapter.collate_draws:
            return None
        held: list[Any] = []

        def redraw(key: str, count: int | None) -> list[Batch]:
            count = count or self.num_samples
            if len(held) < count:
                held[:] = self.checked_samples(adapter, count)
            seed = zlib.crc32(f"{self.seed}/{key}".encode())
            adapter.seed_collate(seed)
            self.identity = {**self.identity, "redrawn_passes": self.identity.get("redrawn_passes", 0) + 1}
            return self.collated(adapter, held[:count], seed)

        return redraw

    def checked_samples(self, adapter: ModelAdapter | None, count: int) -> list[Any]:
        samples = self.samples(adapter, count)
        if len(samples) < count:
            raise UserError(
                f"calibration source {type(self).__name__} gave {len(samples)} samples, fewer than the {count} asked "
                f"for (calib.num_samples={self.num_samples}, or the scorer's num_samples); lower them or add data"
            )
        return samples[:count]

    def collated(self, adapter: ModelAdapter, samples: list[Any], seed: int) -> list[Batch]:
        bs = self.batch_size
        chunks = [samples[i : i + bs] for i in range(0, len(samples), bs)]
        if self.augment != "train":
            return [adapter.collate(chunk) for chunk in chunks]
        # torchvision's random transforms draw from torch's global generator: seed it for these
        # draws only, so the same seed gives the same views and the rest of the run is unaffected
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return [adapter.collate(chunk, augment=True) for chunk in chunks]


def batches_sha1(batches: list[Batch]) -> str:
    """A SHA-1 of what the model is fed: every batch's tensors (bytes, dtype, shape) and other values."""
    digest = hashlib.sha1()
    for batch in batches:
        for key in sorted(batch):
            value = batch[key]
            digest.update(key.encode())
            if isinstance(value, torch.Tensor):
                tensor = value.detach().cpu().contiguous()
                digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
                digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
            else:
                digest.update(repr(value).encode())
    return digest.hexdigest()
