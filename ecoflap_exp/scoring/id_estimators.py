"""Intrinsic dimension estimators, in torch (so they run where the model runs), on each point's
two nearest neighbours:
- `twonn`: Facco et al. 2017 as scikit-dimension fits it. mu = r2 / r1 from each point's two
  nearest neighbours; sort mu, F_i = i / N; least-squares slope through the origin of
  -log(1 - F) on log mu over the smallest (1 - discard_fraction) N values.
- `mle`: maximum likelihood on the same ratios, (N - 1) / sum log mu (dadapy's unbiased form).
- `twonn_blocks`: ID_VL_Pruning's variant: no discard (all points but the largest two), points
  with r1 == r2 dropped, averaged over random splits into b = 1..20 equal blocks.
Exact duplicates are dropped first, keeping one copy, so they never give inf.

Distances are exact and memory-bounded: a `VectorStore` keeps the samples' vectors token-major in
their own dtype (in memory, or in files under a folder); `Neighbours` ranks the pairs by a float32
Gram matrix accumulated one token position at a time, centred over the samples (its products through
oneDNN on the CPU, see `onednn_products`), and measures the near ones exactly in float64 from the
vectors' differences (float32 products alone lose the small distances of long vectors, see the ID
estimator tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ecoflap_exp.errors import UserError

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
#: rows per block of the Gram matrix, computed on and above the block diagonal only (oneDNN
#: ran 512 fastest at 10,000 x 768: 0.53 s, against 0.57 s for 256 and 0.65 s for 1024)
GRAM_BLOCK = 512


def onednn_products(device: torch.device) -> bool:
    """Whether the Gram's float32 products go through oneDNN (torch's mkldnn backend) rather than
    torch's BLAS: on the CPU, where oneDNN is built in and float32 matmuls are left at float32.
    oneDNN runs the GEMM at the CPU's full vector width where MKL's may not (one core of an AMD
    EPYC: 179 against 93 GFLOPS); a float32 matmul precision below "highest" lets oneDNN compute in
    bfloat16, whose rounding GRAM32_TOLERANCE does not cover."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.get_float32_matmul_precision() == "highest")


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
        # not zeroed: the first token position's products overwrite (beta=0), which saves a pass
        # over the n x n matrix (0.06 s of 1.2 s at 10,000 points)
        gram = torch.empty(n, n, dtype=torch.float32, device=self.device)
        blocks = [slice(start, min(start + GRAM_BLOCK, n)) for start in range(0, n, GRAM_BLOCK)]
        onednn = onednn_products(self.device)
        for t, rows in enumerate(self.token_rows()):
            rows = rows.float()
            rows = rows - rows.mean(0)  # never in place: `rows` may be the stored tensor itself
            for rows_a in blocks:
                strip = gram[rows_a, rows_a.start :]
                if not onednn:
                    strip.addmm_(rows[rows_a], rows[rows_a.start :].t(), beta=0 if t == 0 else 1)
                    continue
                # linear on mkldnn tensors is oneDNN's float32 GEMM, a @ b^T, returned as a new tensor
                product = F.linear(rows[rows_a].to_mkldnn(), rows[rows_a.start :].to_mkldnn()).to_dense()
                if t == 0:
                    strip.copy_(product)
                else:
                    strip.add_(product)
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
