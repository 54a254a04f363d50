"""Intrinsic dimension (ID) of each prunable matrix's (or block's) output as its importance.

Estimators, in torch (so they run where the model runs), on a matrix of distances:
- `twonn`: Facco et al. 2017 as scikit-dimension fits it. mu = r2 / r1 from each point's two
  nearest neighbours; sort mu, F_i = i / N; least-squares slope through the origin of
  -log(1 - F) on log mu over the smallest (1 - discard_fraction) N values.
- `mle`: maximum likelihood on the same ratios, (N - 1) / sum log mu (dadapy's unbiased form).
- `twonn_blocks`: ID_VL_Pruning's variant: no discard (all points but the largest two), points
  with r1 == r2 dropped, averaged over random splits into b = 1..20 equal blocks.
Exact duplicates are dropped first, keeping one copy, and so are points whose nearest distance
still rounds to zero, so they never give inf.

Representations of a sample: `flatten` (its whole token sequence as one vector, the paper's),
`mean` (mean over tokens) or `cls` (first token). Padding never enters: `mean` averages the real
tokens; `flatten` zeroes the pad positions and pads shorter sequences with zeros to the longest, so
two samples differ only where they hold real tokens.

Distances are exact and memory-bounded: a `VectorStore` keeps the samples' vectors token-major in
their own dtype (in memory, or in files when `store_dir` is set) and accumulates a float64 Gram
matrix one token position at a time, centred over the samples (distances do not change; float32
products lose the small distances of long vectors, see tests/test_scoring.py).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Block, BlockInput, PrunableMatrix, Tower
from ecoflap_exp.scoring.base import BlockScorer, check_choice, check_granularity
from ecoflap_exp.walk import walk_tower

ESTIMATORS = ("twonn", "mle", "twonn_blocks")
REPRESENTATIONS = ("flatten", "mean", "cls")

#: a pair whose squared distance is below this fraction of its squared norms is checked for equality
COPY_TOLERANCE = 1e-6


def gram_distances(gram: torch.Tensor) -> torch.Tensor:
    """Euclidean distances from a float64 Gram matrix of (centred) points."""
    sq = gram.diagonal().clone()
    d2 = gram.mul(-2).add_(sq[:, None]).add_(sq[None, :]).clamp_min_(0)
    d2.fill_diagonal_(0)
    return d2.sqrt_()


def drop_copies(D: torch.Tensor, norms: torch.Tensor, same: Callable[[int, int], bool]) -> torch.Tensor:
    """Distances between the distinct points: an exact copy of an earlier point is left out, since a
    zero distance makes r2 / r1 infinite. Candidates are the pairs within rounding of distance 0
    (`norms`: the points' centred norms); `same(i, j)` says whether they are equal."""
    near = torch.triu(D.square() <= COPY_TOLERANCE * (norms[:, None].square() + norms[None, :].square()), diagonal=1)
    copies = torch.zeros(D.shape[0], dtype=torch.bool, device=D.device)
    for i, j in near.nonzero().tolist():
        if not copies[j] and same(i, j):
            copies[j] = True
    keep = ~copies
    return D[keep][:, keep]


def distinct_distances(X: torch.Tensor) -> torch.Tensor:
    """Distances between the distinct rows of X (points x features): a one-token VectorStore's."""
    store = VectorStore(X.device)
    store.add(X)
    return store.distinct_distances()


@dataclass
class StoredBatch:
    """One batch's vectors, token-major (tokens, samples, features): a tensor, or the raw bytes of
    one in a file, read one token position at a time (so the file is never mapped into memory)."""

    tokens: int
    samples: int
    features: int
    dtype: torch.dtype
    data: torch.Tensor | None = None
    path: Path | None = None

    def token(self, t: int) -> torch.Tensor:
        """(samples, features) at token position t (zeros past the batch's last token)."""
        if t >= self.tokens:
            return torch.zeros(self.samples, self.features, dtype=self.dtype)
        if self.data is not None:
            return self.data[t]
        size = self.samples * self.features * self.dtype.itemsize
        raw = np.fromfile(self.path, dtype=np.uint8, count=size, offset=t * size)
        return torch.from_numpy(raw).view(self.dtype).reshape(self.samples, self.features)

    def sample(self, i: int) -> torch.Tensor:
        return torch.stack([self.token(t)[i] for t in range(self.tokens)])


class VectorStore:
    """Every sample's vector of one layer, as batches of (tokens, batch, features) in the layer's
    own dtype: in memory on its device, or in files under `folder`. Memory beyond the stored
    batches: the N x N float64 Gram matrix and one token position of all samples in float64."""

    def __init__(self, device: torch.device, folder: Path | None = None):
        self.device = device
        self.folder = folder
        self.batches: list[StoredBatch] = []

    def add(self, vectors: torch.Tensor) -> None:
        """(batch, tokens, features), pads already zeroed; (batch, features) is one token."""
        token_major = (vectors.unsqueeze(1) if vectors.dim() == 2 else vectors).transpose(0, 1).contiguous()
        stored = StoredBatch(*token_major.shape, dtype=token_major.dtype)
        if self.folder is None:
            stored.data = token_major
        else:
            stored.path = self.folder / f"{len(self.batches)}.bin"
            token_major.cpu().view(torch.uint8).numpy().tofile(stored.path)
        self.batches.append(stored)

    def sample(self, i: int) -> torch.Tensor:
        for part in self.batches:
            if i < part.samples:
                return part.sample(i)
            i -= part.samples
        raise IndexError(i)

    def same(self, i: int, j: int) -> bool:
        a, b = self.sample(i).cpu(), self.sample(j).cpu()
        tokens = max(len(a), len(b))
        return torch.equal(F.pad(a, (0, 0, 0, tokens - len(a))), F.pad(b, (0, 0, 0, tokens - len(b))))

    def distinct_distances(self) -> torch.Tensor:
        n = sum(part.samples for part in self.batches)
        gram = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        for t in range(max(part.tokens for part in self.batches)):
            rows = torch.cat([part.token(t).to(self.device) for part in self.batches]).double()
            rows -= rows.mean(0)
            gram.addmm_(rows, rows.t())
        D = gram_distances(gram)
        return drop_copies(D, gram.diagonal().clamp_min(0).sqrt(), self.same)


def neighbour_ratios(D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r1, r2: distances of each point to its nearest and second-nearest other point."""
    D = D.clone()
    D.fill_diagonal_(float("inf"))
    r = torch.topk(D, 2, dim=1, largest=False).values
    nonzero = r[:, 0] > 0  # distinct points can still round to distance 0
    return r[nonzero, 0], r[nonzero, 1]


def twonn_fit(mu: torch.Tensor, discard_fraction: float, drop_last: int = 0) -> float:
    n = mu.numel()
    mu = torch.sort(mu).values
    keep = min(int(n * (1 - discard_fraction)), n - drop_last)
    if keep < 2:
        raise UserError(f"TwoNN needs more distinct points (got {n}); use more calibration samples")
    x = torch.log(mu[:keep])
    F_emp = torch.arange(1, keep + 1, dtype=mu.dtype, device=mu.device) / n
    y = -torch.log1p(-F_emp)
    return float((x * y).sum() / (x * x).sum())


def twonn_of_distances(D: torch.Tensor, discard_fraction: float = 0.1) -> float:
    r1, r2 = neighbour_ratios(D)
    return twonn_fit(r2 / r1, discard_fraction)


def mle_of_distances(D: torch.Tensor) -> float:
    r1, r2 = neighbour_ratios(D)
    return float((r1.numel() - 1) / torch.log(r2 / r1).sum())


def check_block_samples(n: int, max_blocks: int = 20, what: str = "distinct ones") -> None:
    if n // max_blocks < 5:
        raise UserError(f"estimator twonn_blocks splits the samples into up to {max_blocks} blocks and needs at least "
                        f"{5 * max_blocks} {what} (got {n}); raise scorer.num_samples (the paper: 2000) or use "
                        f"scorer.estimator=twonn")


def twonn_blocks_of_distances(D: torch.Tensor, max_blocks: int = 20, seed: int = 0) -> float:
    """Mean over b = 1..max_blocks of the mean TwoNN of b random disjoint equal subsets."""
    n = D.shape[0]
    check_block_samples(n, max_blocks)
    generator = torch.Generator().manual_seed(seed)
    means = []
    for b in range(1, max_blocks + 1):
        size = n // b
        order = torch.randperm(n, generator=generator).to(D.device)
        dims = []
        for k in range(b):
            idx = order[k * size : (k + 1) * size]
            r1, r2 = neighbour_ratios(D[idx][:, idx])
            valid = r1 < r2
            dims.append(twonn_fit(r2[valid] / r1[valid], 0.0, drop_last=2))
        means.append(sum(dims) / len(dims))
    return sum(means) / len(means)


def twonn(X: torch.Tensor, discard_fraction: float = 0.1) -> float:
    return twonn_of_distances(distinct_distances(X), discard_fraction)


def mle(X: torch.Tensor) -> float:
    return mle_of_distances(distinct_distances(X))


def twonn_blocks(X: torch.Tensor, max_blocks: int = 20, seed: int = 0) -> float:
    return twonn_blocks_of_distances(distinct_distances(X), max_blocks, seed)


def representation(hidden: torch.Tensor, kind: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, tokens, features) -> per sample: (batch, tokens, features) for `flatten` with the
    pads zeroed, (batch, features) for `mean` and `cls`; `mask` (batch, tokens): the real tokens
    (None: all)."""
    if hidden.dim() == 2:
        return hidden
    if kind == "cls":
        return hidden[:, 0]
    if mask is not None:
        hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0)
    if kind == "flatten":
        return hidden
    if mask is None:
        return hidden.mean(1)
    return hidden.sum(1) / mask.sum(1, keepdim=True).to(hidden.dtype)


def per_sample(x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """A matrix's input or output as (batch, tokens, features), also where the model flattened the
    tokens before the matrix (OPT's MLP)."""
    if x.dim() == 2 and hidden.dim() == 3 and x.shape[0] == hidden.shape[0] * hidden.shape[1]:
        return x.reshape(hidden.shape[0], hidden.shape[1], -1)
    return x


def output_of(m: PrunableMatrix, module: torch.nn.Module, args: tuple, kwargs: dict, out: object) -> torch.Tensor:
    """x W^T of the matrix's own rows: the Linear's output where the matrix is (rows of) an
    nn.Linear's weight (its bias moves every sample alike and leaves distances as they are),
    else computed from the input the matrix reads (open_clip's fused in_proj inside attention)."""
    if isinstance(module, torch.nn.Linear) and module.weight is m.param and isinstance(out, torch.Tensor):
        return out[..., m.rows]
    return F.linear(m.input_of(args, kwargs), m.weight)


class IntrinsicDimensionScorer(BlockScorer):
    """Intrinsic dimension as importance (higher = pruned less).

    Granularity `matrix` (the ID paper's): the ID of each prunable matrix's output (x W^T of its
    own rows, a fused or sliced matrix included; a bias would shift every point alike and leave the
    ID as it is), every matrix of a block measured in one pass over the samples. Granularity
    `block`: the ID of the block's output. A sample's representation is its whole token sequence
    flattened (the paper's), or the `mean` or `cls` token. `num_samples`: how many calibration
    samples the ID is estimated on (the paper: 2000; the calibration then holds at least that many,
    and the pruner still uses the first calib.num_samples). `store_dir`: keep a block's outputs in
    files there instead of memory (the paper's 2000 samples of a BLIP-2 ViT block are 27 GB in
    float32; scripts/bench_scoring.py --setting id measures time and peak memory).

    Scores are IDs per weight summed over each group, ID x group size, so equal IDs give every
    group the target under water-filling and global ranking reads the ID back per weight. The raw
    IDs are in `info["intrinsic_dim"]` (the record's scorer_info), with their mean per tower.
    """

    name = "id"

    def __init__(self, estimator: str = "twonn", representation: str = "flatten", discard_fraction: float = 0.1,
                 granularity: str = "block", num_samples: int | None = None, store_dir: str | None = None,
                 seed: int = 0):
        check_choice("scorer.estimator", estimator, ESTIMATORS)
        check_choice("scorer.representation", representation, REPRESENTATIONS)
        if num_samples is not None and num_samples < 4:
            raise UserError(f"scorer.num_samples={num_samples}: TwoNN needs at least 4 samples (the paper: 2000)")
        self.estimator = estimator
        self.representation = representation
        self.discard_fraction = discard_fraction
        self.granularity = check_granularity(granularity)
        self.num_samples = num_samples
        self.store_dir = Path(store_dir) if store_dir else None
        self.seed = seed

    def check_samples(self, pruner_samples: int) -> None:
        if self.estimator == "twonn_blocks":
            check_block_samples(self.num_samples or pruner_samples, what="samples")

    def estimate(self, store: VectorStore, where: str) -> float:
        D = store.distinct_distances()
        if self.estimator == "mle":
            value = mle_of_distances(D)
        elif self.estimator == "twonn_blocks":
            value = twonn_blocks_of_distances(D, seed=self.seed)
        else:
            value = twonn_of_distances(D, self.discard_fraction)
        if not math.isfinite(value):
            raise UserError(f"intrinsic dimension of {where} is {value}; its outputs are degenerate (too few distinct "
                            f"samples?)")
        return value

    @contextmanager
    def stores(self, names: list[str], device: torch.device) -> Iterator[dict[str, VectorStore]]:
        """One store per name; with store_dir, each in a temporary folder removed afterwards."""
        if self.store_dir is None:
            yield {name: VectorStore(device) for name in names}
            return
        self.store_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.store_dir, prefix="id-") as folder:
            for name in names:
                (Path(folder) / name).mkdir()
            yield {name: VectorStore(device, Path(folder) / name) for name in names}

    def block_ids(self, adapter: ModelAdapter, batches: list[Batch]) -> dict[str, float]:
        ids: dict[str, float] = {}

        def measure(block: Block, outputs: list[BlockInput]) -> None:
            with self.stores([block.name], adapter.device) as stores:
                for out in outputs:
                    stores[block.name].add(representation(out.hidden, self.representation, out.masks.get("hidden")))
                ids[block.name] = self.estimate(stores[block.name], block.name)

        for tower in adapter.towers():
            for _ in walk_tower(adapter, tower, batches, adapter.device, description=f"ID {tower.name}",
                                after=measure):
                pass
        return ids

    def matrix_stores(self, tower: Tower, block: Block, inputs: list[BlockInput],
                      stores: dict[str, VectorStore]) -> None:
        """Every matrix's output vectors over all samples into its store, from one run of the block
        per input."""
        current: list[BlockInput] = []

        def observe(module: torch.nn.Module, args: tuple, kwargs: dict, out: object,
                    matrices: list[PrunableMatrix]) -> None:
            inp = current[0]
            for m in matrices:
                y = output_of(m, module, args, kwargs, out)
                stores[m.name].add(representation(per_sample(y, inp.hidden), self.representation,
                                                  inp.masks.get(m.stream)))

        by_module: dict[torch.nn.Module, list[PrunableMatrix]] = {}
        for m in block.matrices:
            by_module.setdefault(m.input_module, []).append(m)
        handles = [mod.register_forward_hook(partial(observe, matrices=ms), with_kwargs=True)
                   for mod, ms in by_module.items()]
        try:
            for inp in inputs:
                current[:] = [inp]
                tower.run_block(block, inp)
        finally:
            for h in handles:
                h.remove()

    def matrix_ids(self, adapter: ModelAdapter, batches: list[Batch]) -> dict[str, float]:
        ids: dict[str, float] = {}
        for tower in adapter.towers():
            for block, inputs in walk_tower(adapter, tower, batches, adapter.device, description=f"ID {tower.name}"):
                with self.stores([m.name for m in block.matrices], adapter.device) as stores:
                    self.matrix_stores(tower, block, inputs, stores)
                    for name, store in stores.items():
                        ids[name] = self.estimate(store, name)
        return ids

    @torch.no_grad()
    def scores(self, adapter: ModelAdapter, batches: list[Batch],
               extended: list[Batch] | None = None) -> dict[str, float]:
        batches = self.reads(batches, extended)
        adapter.model.eval()
        ids = self.matrix_ids(adapter, batches) if self.granularity == "matrix" else self.block_ids(adapter, batches)
        groups = Groups.of(adapter)
        by_tower: dict[str, list[float]] = {}
        for name, value in ids.items():
            by_tower.setdefault(groups.towers[name], []).append(value)
        self.info = {"intrinsic_dim": ids, "tower_mean_id": {t: sum(v) / len(v) for t, v in by_tower.items()}}
        return {name: value * groups.sizes[name] for name, value in ids.items()}
