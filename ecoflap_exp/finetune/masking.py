"""Masks of iterative and masked fine-tuning.

`global_prune` is ID_VL_Pruning's `mask_with_threshold` with an exact count: one threshold over the
(ID-scaled) scores of every prunable matrix, so per-matrix sparsities emerge from the ranking.
The reference zeroes entries below the k-th smallest score (k = int(n (1 - r))), so ties and the
strict comparison leave it a weight or more short of the target; here exactly round(n (1 - r))
weights go at sparsity 1 - r, ties broken by position. Its per-matrix guard is kept: every matrix loses at least its
`min_pruned` lowest-scored weights (the reference: 2, from "remain at least 3 weights" applied as
`score < 3rd smallest`), counted inside the total.

`FixedMasks` keeps a pruned model's zeros through training: gradients of pruned weights are zeroed
before each optimizer step (so momentum and Adam moments of those weights stay 0) and the weights
are zeroed again after it (so weight decay or any optimizer cannot move them). Under FSDP2 (the
optimizer holds a sharded copy's DTensor parameters) each process does the same to its own shards,
with each mask cut as the parameter was (`on_shards`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ecoflap_exp.models.seam import PrunableMatrix


@torch.no_grad()
def global_prune(matrices: list[PrunableMatrix], scores: Mapping[str, torch.Tensor], sparsity: float,
                 ids: Mapping[str, float] | None = None, min_pruned: int = 2) -> dict[str, int]:
    """Zero the round(n sparsity) lowest-scored weights of all `matrices` together (scores times
    ids[name] when ids are given); returns the pruned count per matrix."""
    flat = []
    for m in matrices:
        s = scores[m.name].float().flatten()
        if ids is not None:
            s = s * float(ids[m.name])
        if min_pruned:
            guard = torch.topk(s, min(min_pruned, s.numel()), largest=False).indices
            s = s.clone()
            s[guard] = -torch.inf
        flat.append(s)
    every = torch.cat([s.to(flat[0].device) for s in flat])
    total = every.numel()
    forced = sum(min(min_pruned, m.numel) for m in matrices)
    count = max(round(total * sparsity), forced)
    pruned = torch.zeros(total, dtype=torch.bool, device=every.device)
    if count:
        threshold = torch.kthvalue(every, count).values
        pruned = every < threshold
        ties = torch.nonzero(every == threshold).flatten()[: count - int(pruned.sum())]
        pruned[ties] = True
    counts = {}
    start = 0
    for m in matrices:
        mask = pruned[start : start + m.numel].view(m.shape).to(m.weight.device)
        m.weight.masked_fill_(mask, 0)
        counts[m.name] = int(torch.count_nonzero(mask))
        start += m.numel
    return counts


class FixedMasks:
    """The zeros of `matrices` as they are now, held through an optimizer's steps."""

    def __init__(self, matrices: list[PrunableMatrix]):
        self.matrices = matrices
        self.keep = {m.name: m.weight != 0 for m in matrices}
        self.handles: list[Any] = []
        self.shards: list[tuple[nn.Parameter, torch.Tensor]] | None = None

    @torch.no_grad()
    def on_shards(self, whole: nn.Module, sharded: nn.Module) -> None:
        """Hold the masks on `sharded`, an FSDP2 copy of `whole` (the model the matrices are in),
        from now on: each parameter's mask, whole-sized (True outside its matrices), is cut to this
        process's shard by the placements of the parameter's DTensor, which is the cut FSDP2 made
        (src_data_rank=None: every process holds the whole mask, so nothing is sent)."""
        from torch.distributed.tensor import distribute_tensor

        names = {p: name for name, p in whole.named_parameters()}
        params = dict(sharded.named_parameters())
        keep: dict[str, torch.Tensor] = {}
        for m in self.matrices:
            name = names[m.param]
            m.part(keep.setdefault(name, torch.ones_like(m.param, dtype=torch.bool))).copy_(self.keep[m.name])
        self.shards = [(params[name], distribute_tensor(mask, params[name].device_mesh, params[name].placements,
                                                        src_data_rank=None).to_local())
                       for name, mask in keep.items()]

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self.handles = [optimizer.register_step_pre_hook(lambda *_: self.clear_gradients()),
                        optimizer.register_step_post_hook(lambda *_: self.apply())]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    @torch.no_grad()
    def clear_gradients(self) -> None:
        if self.shards is not None:
            for param, keep in self.shards:
                if param.grad is not None:
                    param.grad.to_local().mul_(keep)
            return
        for m in self.matrices:
            if m.param.grad is not None:
                m.part(m.param.grad).mul_(self.keep[m.name])

    @torch.no_grad()
    def apply(self) -> None:
        if self.shards is not None:
            for param, keep in self.shards:
                param.to_local().mul_(keep)
            return
        for m in self.matrices:
            m.weight.mul_(self.keep[m.name])

    def state_dict(self) -> dict[str, Any]:
        return {"keep": self.keep}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint (accelerate loads it onto the CPU): onto the weights' devices."""
        self.keep = {m.name: state["keep"][m.name].to(m.weight.device) for m in self.matrices}
