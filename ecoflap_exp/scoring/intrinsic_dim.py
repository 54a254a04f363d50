"""Intrinsic dimension (ID) of each prunable matrix's (or block's) output as its importance.

Estimators, in torch (so they run where the model runs), on each point's two nearest neighbours:
- `twonn`: Facco et al. 2017 as scikit-dimension fits it. mu = r2 / r1 from each point's two
  nearest neighbours; sort mu, F_i = i / N; least-squares slope through the origin of
  -log(1 - F) on log mu over the smallest (1 - discard_fraction) N values.
- `mle`: maximum likelihood on the same ratios, (N - 1) / sum log mu (dadapy's unbiased form).
- `twonn_blocks`: ID_VL_Pruning's variant: no discard (all points but the largest two), points
  with r1 == r2 dropped, averaged over random splits into b = 1..20 equal blocks.
Exact duplicates are dropped first, keeping one copy, so they never give inf.

Representations of a sample: `flatten` (its whole token sequence as one vector, the paper's),
`mean` (mean over tokens) or `cls` (first token). Padding never enters: `mean` averages the real
tokens; `flatten` zeroes the pad positions and pads shorter sequences with zeros to the longest, so
two samples differ only where they hold real tokens.

Distances are exact and memory-bounded: a `VectorStore` keeps the samples' vectors token-major in
their own dtype (in memory, or in files when `store_dir` is set); `Neighbours` ranks the pairs by
a float32 Gram matrix accumulated one token position at a time, centred over the samples, and
measures the near ones exactly in float64 from the vectors' differences (float32 products alone
lose the small distances of long vectors, see tests/test_scoring.py).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Block, BlockInput, PrunableMatrix, Redraw, Tower
from ecoflap_exp.options import Count, Fraction, NonNegativeInt
from ecoflap_exp.scoring.base import BlockScorer, Granularity, check_granularity
from ecoflap_exp.walk import walk_tower

log = logging.getLogger(__name__)

Estimator = Literal["twonn", "mle", "twonn_blocks"]
Representation = Literal["flatten", "mean", "cls"]
Pads = Literal["zero", "computed"]

#: the float32 centred Gram matrix's error in a squared distance is taken to be at most this
#: fraction of |x_i|^2 + |x_j|^2 (rounding is about sqrt(features) x 2^-24 of it: 4e-5 for a
#: flattened 257 x 1408 ViT-g block output, 2e-6 for 768 features)
GRAM32_TOLERANCE = 1e-3
#: nearest candidates per point taken from the float32 distances and measured exactly
CANDIDATES = 4
#: entries of one chunk of float32 distance rows, and of float64 pair differences (small enough
#: to stay in cache: larger chunks run several times slower on the CPU)
ROW_CHUNK = 1 << 18
PAIR_CHUNK = 1 << 18
#: rows per block of the Gram matrix, computed on and above the block diagonal only
GRAM_BLOCK = 256


def chunks(n: int, width: int, entries: int = ROW_CHUNK) -> Iterator[slice]:
    """Row slices of at most `entries` / width rows."""
    step = max(1, entries // max(width, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


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


class VectorStore:
    """Every sample's vector of one layer, as batches of (tokens, batch, features) in the layer's
    own dtype: in memory on its device, or in files under `folder`. Distances are read from it one
    token position at a time, so no sample-major copy of the vectors is ever made."""

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

    @property
    def points(self) -> int:
        return sum(part.samples for part in self.batches)

    def token_rows(self) -> Iterator[torch.Tensor]:
        """(points, features) at each token position in turn, in the stored dtype."""
        for t in range(max(part.tokens for part in self.batches)):
            parts = [part.token(t).to(self.device) for part in self.batches]
            yield parts[0] if len(parts) == 1 else torch.cat(parts)

    def gram32(self) -> torch.Tensor:
        """float32 Gram matrix of the points centred over the samples (distances do not change),
        its blocks above the diagonal mirrored."""
        n = self.points
        gram = torch.zeros(n, n, dtype=torch.float32, device=self.device)
        blocks = [slice(start, min(start + GRAM_BLOCK, n)) for start in range(0, n, GRAM_BLOCK)]
        for rows in self.token_rows():
            rows = rows.float()
            rows = rows - rows.mean(0)  # never in place: `rows` may be the stored tensor itself
            for rows_a in blocks:
                gram[rows_a, rows_a.start :].addmm_(rows[rows_a], rows[rows_a.start :].t())
        for rows_a in blocks:
            gram[rows_a.stop :, rows_a] = gram[rows_a, rows_a.stop :].t()
        return gram

    def pair_sq_distances(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Exact float64 squared distances of the pairs (i[k], j[k]), from differences of the stored
        values (exact in float64), never from products that cancel."""
        out = torch.zeros(len(i), dtype=torch.float64, device=self.device)
        for X in self.token_rows():
            rows = max(1, PAIR_CHUNK // X.shape[1])
            picked = torch.empty(rows, X.shape[1], dtype=X.dtype, device=self.device)
            a, b = (torch.empty(rows, X.shape[1], dtype=torch.float64, device=self.device) for _ in range(2))
            for c in chunks(len(i), X.shape[1], PAIR_CHUNK):
                size = c.stop - c.start
                a[:size].copy_(torch.index_select(X, 0, i[c], out=picked[:size]))
                b[:size].copy_(torch.index_select(X, 0, j[c], out=picked[:size]))
                out[c] += a[:size].sub_(b[:size]).square_().sum(1)
        return out

    def neighbours(self) -> Neighbours:
        return Neighbours(self)


class Neighbours:
    """Exact distances from each distinct point to its two nearest other distinct points, without
    an N x N float64 matrix: the float32 centred Gram matrix gives every pair a lower bound on its
    squared distance (d2 - GRAM32_TOLERANCE (|x_i|^2 + |x_j|^2)); each point's CANDIDATES lowest
    are measured exactly in float64; where the second nearest measured is not below every other
    pair's bound, the pairs whose bound is below it are measured too. So float32 speed, float64
    answers: long vectors with small differences, where float32 products cancel, end up measured
    exactly pair by pair.

    Exact copies (distance exactly 0) of an earlier point are left out, keeping one copy, since a
    zero distance makes r2 / r1 infinite."""

    def __init__(self, store: VectorStore):
        self.store = store
        self.gram = store.gram32()
        self.sq = self.gram.diagonal().clone()
        self.shrunk = self.sq * (1 - GRAM32_TOLERANCE)
        #: pairs measured exactly beyond the candidates (0 unless float32 could not decide)
        self.extra_pairs = 0
        everyone = torch.arange(store.points, device=store.device)
        (first, zeros), = self.two_nearest([everyone], find_copies=True)
        copies = torch.zeros(store.points, dtype=torch.bool, device=store.device)
        for a, b in zeros.tolist():
            copies[max(a, b)] = True
        self.distinct = everyone[~copies]
        self.all_distinct = first if not copies.any() else None

    def ratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """r1, r2 of every distinct point among the distinct points."""
        if self.all_distinct is not None:
            return self.all_distinct
        return self.ratios_of([torch.arange(len(self.distinct), device=self.distinct.device)])[0]

    def ratios_of(self, subsets: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`ratios` of several subsets, the exact measurements of all of them in one pass."""
        return [r for r, _ in self.two_nearest([self.distinct[s] for s in subsets], find_copies=False)]

    def two_nearest(self, subsets: list[torch.Tensor], find_copies: bool
                    ) -> list[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
        """Per subset of point ids: (r1, r2) of each of its points among the subset, and the pairs
        at distance exactly 0 (when `find_copies`)."""
        found = [self.candidates(ids) for ids in subsets]
        rows = torch.cat([ids[:, None].expand_as(cand)[measured] for ids, (cand, measured, _) in zip(subsets, found,
                                                                                                   strict=True)])
        cols = torch.cat([cand[measured] for cand, measured, _ in found])
        exact = iter(self.store.pair_sq_distances(rows, cols).split([int(m.sum()) for _, m, _ in found]))
        undecided, results = [], []
        for ids, (cand, measured, bound) in zip(subsets, found, strict=True):
            d2 = torch.full(cand.shape, float("inf"), dtype=torch.float64, device=cand.device)
            d2[measured] = next(exact)
            r12 = torch.sort(d2, dim=1).values[:, :2]
            undecided.append((r12[:, 1] > bound).nonzero().flatten())
            zeros = torch.stack([ids[:, None].expand_as(cand)[measured], cand[measured]], 1)[d2[measured] == 0]
            results.append([r12, zeros])
        self.settle(subsets, [cand for cand, _, _ in found], undecided, results, find_copies)
        return [((r12[:, 0].sqrt(), r12[:, 1].sqrt()), zeros) for r12, zeros in results]

    def candidates(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each point's CANDIDATES lowest-bound others in `ids` (as point ids, nearest bound
        first); which of them to measure (those whose lower bound is below the second lowest upper
        bound: the others cannot be among the two nearest); and the lowest bound of the points not
        measured (inf where all were)."""
        n = len(ids)
        if n < 3:
            raise UserError(f"TwoNN needs at least 3 distinct points (got {n}); use more calibration samples")
        k = min(CANDIDATES, n - 1)
        cand = torch.empty(n, k, dtype=torch.long, device=ids.device)
        measured = torch.empty(n, k, dtype=torch.bool, device=ids.device)
        bound = torch.full((n,), float("inf"), dtype=torch.float64, device=ids.device)
        whole = n == len(self.sq) and bool((ids == torch.arange(n, device=ids.device)).all())
        for c in chunks(n, n):
            lower = self.lower_bounds(c if whole else ids[c], slice(None) if whole else ids)
            own = torch.arange(c.stop - c.start, device=lower.device)
            lower[own, own + c.start] = float("inf")
            values, order = torch.topk(lower, min(k + 1, n - 1), dim=1, largest=False)
            cand[c] = ids[order[:, :k]]
            upper = values[:, :k] + 2 * GRAM32_TOLERANCE * (self.sq[ids[c], None] + self.sq[cand[c]])
            measured[c] = values[:, :k] <= torch.kthvalue(upper, 2, dim=1).values[:, None]
            taken = measured[c].sum(1)
            rest = taken < values.shape[1]
            bound[c][rest] = values[rest, taken[rest]].double()
        return cand, measured, bound

    def lower_bounds(self, rows: torch.Tensor | slice, ids: torch.Tensor | slice) -> torch.Tensor:
        """float32 lower bounds on the squared distances of the points `rows` to the points `ids`:
        (1 - tolerance) (|x_i|^2 + |x_j|^2) - 2 x_i . x_j."""
        lower = self.gram[rows][:, ids].mul(-2)
        return lower.add_(self.shrunk[rows, None]).add_(self.shrunk[None, ids])

    def settle(self, subsets: list[torch.Tensor], candidates: list[torch.Tensor], undecided: list[torch.Tensor],
               results: list[list[torch.Tensor]], find_copies: bool) -> None:
        """Rows whose second nearest candidate is above another pair's bound: measure every pair
        whose bound is below it (and the candidates again), and take the two nearest of those."""
        rows, cols, spans = [], [], []
        for ids, cand, open_rows, (r12, _) in zip(subsets, candidates, undecided, results, strict=True):
            for r in open_rows.tolist():
                lower = self.lower_bounds(ids[r : r + 1], ids)[0]
                lower[r] = float("inf")
                others = torch.cat([ids[(lower.double() <= r12[r, 1]).nonzero().flatten()], cand[r]]).unique()
                rows.append(ids[r].repeat(len(others)))
                cols.append(others)
                spans.append(len(others))
        if not rows:
            return
        exact = iter(self.store.pair_sq_distances(torch.cat(rows), torch.cat(cols)).split(spans))
        others = iter(cols)
        self.extra_pairs += sum(spans)
        for ids, open_rows, result in zip(subsets, undecided, results, strict=True):
            for r in open_rows.tolist():
                d2, cols_r = next(exact), next(others)
                result[0][r] = torch.sort(d2).values[:2]
                if find_copies:
                    zero = cols_r[d2 == 0]
                    result[1] = torch.cat([result[1], torch.stack([ids[r].expand(len(zero)), zero], 1)])


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


def twonn_of(neighbours: Neighbours, discard_fraction: float = 0.1) -> float:
    r1, r2 = neighbours.ratios()
    return twonn_fit(r2 / r1, discard_fraction)


def mle_of(neighbours: Neighbours) -> float:
    r1, r2 = neighbours.ratios()
    return float((r1.numel() - 1) / torch.log(r2 / r1).sum())


def check_block_samples(n: int, max_blocks: int = 20, what: str = "distinct ones") -> None:
    if n // max_blocks < 5:
        raise UserError(f"estimator twonn_blocks splits the samples into up to {max_blocks} blocks and needs at least "
                        f"{5 * max_blocks} {what} (got {n}); raise scorer.num_samples (the paper: 2000) or use "
                        f"scorer.estimator=twonn")


def twonn_blocks_of(neighbours: Neighbours, max_blocks: int = 20, seed: int = 0) -> float:
    """Mean over b = 1..max_blocks of the mean TwoNN of b random disjoint equal subsets."""
    n = len(neighbours.distinct)
    check_block_samples(n, max_blocks)
    generator = torch.Generator().manual_seed(seed)
    subsets = []
    for b in range(1, max_blocks + 1):
        size = n // b
        order = torch.randperm(n, generator=generator).to(neighbours.distinct.device)
        subsets += [order[k * size : (k + 1) * size] for k in range(b)]
    dims = iter([twonn_fit(r2[r1 < r2] / r1[r1 < r2], 0.0, drop_last=2) for r1, r2 in neighbours.ratios_of(subsets)])
    means = [sum(next(dims) for _ in range(b)) / b for b in range(1, max_blocks + 1)]
    return sum(means) / len(means)


def neighbours_of(X: torch.Tensor) -> Neighbours:
    """The Neighbours of the rows of X (points x features)."""
    store = VectorStore(X.device)
    store.add(X)
    return store.neighbours()


def twonn(X: torch.Tensor, discard_fraction: float = 0.1) -> float:
    return twonn_of(neighbours_of(X), discard_fraction)


def mle(X: torch.Tensor) -> float:
    return mle_of(neighbours_of(X))


def twonn_blocks(X: torch.Tensor, max_blocks: int = 20, seed: int = 0) -> float:
    return twonn_blocks_of(neighbours_of(X), max_blocks, seed)


def split_samples(rows: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, features) holding every sample's tokens one after another, `sizes` each sample's
    share of them (in any unit: a patch merger's 4x fewer rows keep the shares) -> (batch, tokens,
    features) padded with zeros to the longest sample, and the mask of the real tokens."""
    total = sum(sizes)
    if any(n * rows.shape[0] % total for n in sizes):
        raise RuntimeError(f"{rows.shape[0]} rows do not split into samples of shares {sizes}; the tower's "
                           f"sample_sizes is wrong")
    counts = [n * rows.shape[0] // total for n in sizes]
    parts = torch.split(rows, counts)
    width = max(counts)
    padded = rows.new_zeros(len(counts), width, rows.shape[-1])
    mask = torch.zeros(len(counts), width, dtype=torch.bool, device=rows.device)
    for i, part in enumerate(parts):
        padded[i, : len(part)] = part
        mask[i, : len(part)] = True
    return padded, mask


def representation(hidden: torch.Tensor, kind: str, mask: torch.Tensor | None = None,
                   sizes: tuple[int, ...] | None = None) -> torch.Tensor:
    """(batch, tokens, features) -> per sample: (batch, tokens, features) for `flatten` with the
    pads zeroed, (batch, features) for `mean` and `cls`; `mask` (batch, tokens): the real tokens
    (None: all). A (rows, features) input is one vector per row, unless `sizes` says how its rows
    split into samples (a tower with no batch axis: BlockInput.sizes)."""
    if hidden.dim() == 2 and sizes is not None:
        hidden, mask = split_samples(hidden, sizes)
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

    `pads`: a padded sample's representation with its pad positions `zero` (it does not depend on
    its batch) or `computed` (the layer's outputs there, as ID_VL_Pruning's hooks keep them up to
    each batch's longest caption; zeros beyond, as its expand_dim1).

    Scores are IDs per weight summed over each group, ID x group size, so equal IDs give every
    group the target under water-filling and global ranking reads the ID back per weight. The raw
    IDs are in `info["intrinsic_dim"]` (the record's scorer_info), with their mean per tower, and the
    number of distinct points each rests on in `info["id_points"]` (an image repeated in the eval
    view is one point in the vision layers); a tower whose IDs rest on fewer than half the samples
    is warned about.
    """

    name = "id"

    def __init__(self, estimator: Estimator = "twonn", representation: Representation = "flatten",
                 discard_fraction: Fraction = 0.1, granularity: Granularity = "block", num_samples: Count | None = None,
                 store_dir: str | None = None, seed: NonNegativeInt = 0, pads: Pads = "zero"):
        if num_samples is not None and num_samples < 4:
            raise UserError(f"scorer.num_samples={num_samples}: TwoNN needs at least 4 samples (the paper: 2000)")
        self.estimator = estimator
        self.representation = representation
        self.discard_fraction = discard_fraction
        self.granularity = check_granularity(granularity)
        self.num_samples = num_samples
        self.store_dir = Path(store_dir) if store_dir else None
        self.seed = seed
        self.pads = pads
        self.points: dict[str, tuple[int, int]] = {}  # group -> (distinct points, samples) of its estimate

    def pad_mask(self, masks: dict[str, torch.Tensor], stream: str) -> torch.Tensor | None:
        return masks.get(stream) if self.pads == "zero" else None

    def check_samples(self, pruner_samples: int) -> None:
        if self.estimator == "twonn_blocks":
            check_block_samples(self.num_samples or pruner_samples, what="samples")

    def estimate(self, store: VectorStore, where: str) -> float:
        neighbours = store.neighbours()
        self.points[where] = (len(neighbours.distinct), store.points)
        if self.estimator == "mle":
            value = mle_of(neighbours)
        elif self.estimator == "twonn_blocks":
            value = twonn_blocks_of(neighbours, seed=self.seed)
        else:
            value = twonn_of(neighbours, self.discard_fraction)
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
                    stores[block.name].add(representation(out.hidden, self.representation,
                                                          self.pad_mask(out.masks, "hidden"), out.sizes))
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
                                                  self.pad_mask(inp.masks, m.stream), inp.sizes))

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
    def scores(self, adapter: ModelAdapter, batches: list[Batch], extended: list[Batch] | None = None,
               redraw: Redraw | None = None) -> dict[str, float]:
        batches = self.reads(batches, extended)
        adapter.model.eval()
        self.points = {}
        ids = self.matrix_ids(adapter, batches) if self.granularity == "matrix" else self.block_ids(adapter, batches)
        groups = Groups.of(adapter)
        by_tower: dict[str, list[float]] = {}
        fewest: dict[str, tuple[int, int]] = {}  # per tower, the estimate on the lowest share of distinct points
        for name, value in ids.items():
            tower = groups.towers[name]
            by_tower.setdefault(tower, []).append(value)
            fewest[tower] = min(fewest.get(tower, self.points[name]), self.points[name], key=lambda p: p[0] / p[1])
        for tower, (distinct, samples) in fewest.items():
            if distinct < samples / 2:
                log.warning("the intrinsic dimensions of tower %s rest on as few as %d distinct points of %d samples "
                            "(a calibration that repeats each image in its eval view gives one point per image in "
                            "the vision layers); draw the samples at random (calib.shuffle=true) in the training "
                            "view (calib.augment=train), as ID_VL_Pruning does", tower, distinct, samples)
        self.info = {"intrinsic_dim": ids, "tower_mean_id": {t: sum(v) / len(v) for t, v in by_tower.items()},
                     "id_points": {name: self.points[name][0] for name in ids},
                     "id_samples": max((samples for _, samples in self.points.values()), default=0)}
        return {name: value * groups.sizes[name] for name, value in ids.items()}
