"""Where a run runs: its device, whether this process records it, torch's threads, each stage's
time and peak memory, and the versions and commit the record keeps."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

import ecoflap_exp
from ecoflap_exp.models.adapter import ModelAdapter

#: below this many parameters, threads=auto runs torch on one CPU thread: `make run` (the 1.8M-parameter
#: digits CLIP, 35 points) took 40.2 s with one thread and 45.0 s with torch's default 2 here
SMALL_MODEL_PARAMS = 100_000_000


def resolve_device(name: str) -> torch.device:
    """`auto`: cuda if available (under `accelerate launch`, this process's own GPU), else cpu."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def main_process() -> bool:
    """Whether this process records the run: the only one, or rank 0 of `accelerate launch`."""
    return int(os.environ.get("RANK", "0")) == 0


def set_threads(threads: int | str, adapter: ModelAdapter) -> None:
    """torch's CPU threads for this run: a number, or auto (one for a small model)."""
    if threads == "auto":
        if sum(p.numel() for p in adapter.model.parameters()) < SMALL_MODEL_PARAMS:
            torch.set_num_threads(1)
    else:
        torch.set_num_threads(int(threads))


@dataclass
class StageTimer:
    """`with timer("prune"): ...` keeps the stage's seconds and, on a GPU, its peak memory."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_gpu_gb: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        yield
        self.seconds[stage] = round(time.perf_counter() - start, 3)
        if torch.cuda.is_available():
            self.peak_gpu_gb[stage] = round(torch.cuda.max_memory_allocated() / 2**30, 3)


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def versions() -> dict[str, str]:
    import hydra
    import transformers

    return {
        "ecoflap_exp": ecoflap_exp.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hydra": hydra.__version__,
    }


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")
