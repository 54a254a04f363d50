"""Outputs of towers that cannot change, computed once per calibration batch and served again.

A tower (models.seam.Tower) may name its `root`, the module whose output is the tower's output
for the rest of the model, and `reads`, the towers whose outputs its root consumes (BLIP-2:
vision -> qformer -> language encoder -> decoder; CLIP: two towers that meet only in the loss; by
default every earlier tower). While the matrices of tower T are perturbed (zeroth-order scores),
every tower that does not read T, directly or through others, computes what it computed before,
so its root returns the output stored for that batch instead of running. While T's block inputs
are captured (scoring walks and the pruning engine), the towers T reads are served likewise
(exact: stored under the weights they have now), and towers beside T, whose output cannot reach
T's first block, may be served an output stored under older weights (its value is never used).

One `TowerOutputs(adapter, budget_gb)` per prune, a context manager handed to whoever runs the
model (scorers, the pruning engine, the walks they share), holds the outputs within a budget in
GB; on an accelerator they are kept in CPU memory and copied back when served. Leaving it drops
what it stored. The engine calls `changed(tower)` once it has pruned a tower, which outdates what
that tower and the towers reading it stored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Batch, Tower
from ecoflap_exp.module_hooks import replacing_forward

log = logging.getLogger(__name__)

#: the budget of a prune's outputs unless its caller sets one (cache_gb), and of a scorer's or
#: engine's own when it is handed none
DEFAULT_BUDGET_GB = 4.0


def carry(obj: Any, device: torch.device | None) -> Any:
    """A copy of a module's output (tensors, tuples, dicts and transformers' ModelOutputs) with
    every tensor on `device` (None: where it is)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, copy=True) if device is not None else obj.clone()
    if isinstance(obj, tuple | list):
        return type(obj)(carry(o, device) for o in obj)
    if isinstance(obj, dict):
        moved = {k: carry(v, device) for k, v in obj.items()}
        return moved if type(obj) is dict else type(obj)(**moved)
    return obj


def nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, tuple | list):
        return sum(nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    return 0


def shapes(args: tuple, kwargs: dict) -> tuple:
    """The shapes of a call's tensor arguments: a stored output is served only to the same call."""
    return tuple(tuple(a.shape) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))


@dataclass
class Stored:
    output: Any
    versions: tuple[int, ...]
    call: tuple
    spilled: bool


@dataclass(eq=False)
class TowerOutputs:
    """The stored outputs of one adapter's towers; `with TowerOutputs(adapter, budget_gb) as outputs:`
    drops them at the end."""

    adapter: ModelAdapter
    budget_gb: float = DEFAULT_BUDGET_GB
    towers: dict[str, Tower] = field(init=False)
    #: per tower, the towers whose weights its output can depend on
    upstream: dict[str, set[str]] = field(init=False)
    versions: dict[str, int] = field(init=False)
    stored: dict[tuple[str, int, int], Stored] = field(default_factory=dict)
    #: batches seen, so that their ids stay theirs while the scope lasts
    batches: dict[int, Batch] = field(default_factory=dict)
    bytes: int = 0
    full: bool = False
    current: int | None = None
    calls: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        all_towers = self.adapter.all_towers()
        self.towers = {t.name: t for t in all_towers if t.root is not None}
        self.versions = {t.name: 0 for t in all_towers}
        self.upstream = {}
        for i, t in enumerate(all_towers):
            direct = {u.name for u in all_towers[:i]} if t.reads is None else set(t.reads)
            if t.root is not None:  # a root that holds another tower's blocks reads it, whatever it declares
                inside = {id(m) for m in t.root.modules()}
                direct |= {u.name for u in all_towers if u is not t and any(id(b.module) in inside for b in u.blocks)}
            self.upstream[t.name] = direct.union(*(self.upstream.get(u, set()) for u in direct))

    def __enter__(self) -> TowerOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stored.clear()
        self.batches.clear()
        self.bytes = 0

    def reads(self, tower: str, other: str) -> bool:
        """Whether `tower`'s output can depend on `other`'s weights."""
        return other in self.upstream[tower]

    def key_versions(self, tower: str) -> tuple[int, ...]:
        return tuple(self.versions[t] for t in sorted({tower} | self.upstream[tower]))

    def changed(self, tower: str) -> None:
        """`tower`'s weights changed (it was pruned): what it and its readers stored is outdated."""
        self.versions[tower] += 1

    @contextlib.contextmanager
    def batch(self, batch: Batch) -> Iterator[None]:
        """Root forwards within belong to `batch` (the n-th call of a root is its n-th output)."""
        self.batches[id(batch)] = batch
        self.current, self.calls = id(batch), {}
        try:
            yield
        finally:
            self.current = None

    def unchanged_by(self, tower: str) -> dict[str, bool]:
        """While `tower`'s weights are perturbed: every other tower that does not read it, each
        served only an output stored under today's weights."""
        return {name: False for name in self.towers if name != tower and not self.reads(name, tower)}

    def capturing(self, tower: str) -> dict[str, bool]:
        """While `tower`'s block inputs are captured: the towers it reads (exact outputs) and those
        beside it (any stored output: it never reaches the tower's blocks)."""
        return {name: not self.reads(tower, name) for name in self.towers
                if name != tower and not self.reads(name, tower)}

    @contextlib.contextmanager
    def serving(self, towers: dict[str, bool]) -> Iterator[None]:
        """Within, the roots of `towers` return stored outputs (stored on first use); the flag says
        whether an output stored under older weights will do."""
        with replacing_forward({self.towers[name].root: self.served_forward(name, any_version)
                                for name, any_version in towers.items()}):
            yield

    def served_forward(self, name: str, any_version: bool) -> Callable[..., Any]:
        """The forward of tower `name`'s root that serves its stored outputs (the class's own
        forward, whatever replaced it on the instance, computes what is not stored)."""
        root = self.towers[name].root
        run = type(root).forward.__get__(root)

        def forward(*args: Any, **kwargs: Any) -> Any:
            if self.current is None:
                return run(*args, **kwargs)
            nth = self.calls.get(name, 0)
            self.calls[name] = nth + 1
            key, call = (name, self.current, nth), shapes(args, kwargs)
            hit = self.stored.get(key)
            if hit is not None and hit.call == call and (any_version or hit.versions == self.key_versions(name)):
                return carry(hit.output, self.adapter.device if hit.spilled else None)
            out = run(*args, **kwargs)
            self.store(key, name, out, call, hit)
            return out

        return forward

    def store(self, key: tuple[str, int, int], name: str, out: Any, call: tuple, old: Stored | None) -> None:
        size = nbytes(out)
        if old is not None:
            self.bytes -= nbytes(old.output)
            del self.stored[key]
        if self.bytes + size > self.budget_gb * 2**30:
            if not self.full:
                log.info("tower outputs: the cache_gb=%g budget is full; further outputs are recomputed",
                         self.budget_gb)
            self.full = True
            return
        spill = self.adapter.device.type != "cpu"
        self.stored[key] = Stored(carry(out, torch.device("cpu") if spill else None), self.key_versions(name), call,
                                  spill)
        self.bytes += size
