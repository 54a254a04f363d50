"""Every method on one model, side by side: what each pruned, how far the pruned model's outputs moved
from the dense model's, and what the pruning pass cost.

The tiny LLaMA (`llama_tiny`, random init, seed 0) by default, or any causal LM architecture the package ships
at `--blocks` blocks (`--arch llama_7b --blocks 2`: LLaMA-7B's widths), calibrated on `--samples` random
byte-token sequences of `--seqlen` tokens and held to the dense model on as many other sequences. Each method
runs through `prune()` (the command line's pruning core: scorer -> allocation -> sequential engine -> verify)
on a freshly built copy of the same weights; the reported time is the median pruning pass of `--repeats`.

    python scripts/compare_methods.py [--arch llama_tiny] [--blocks N] [--sparsity 0.5] [--threads 1]

Columns: zeros (fraction of the prunable weights), the relative error ||Y - Y_dense|| / ||Y_dense|| of the
last block's output and of the logits on the held-out sequences, the pass's wall and CPU time, and its time
against Wanda's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from ecoflap_exp import prune
from ecoflap_exp.models.causal_lm import CausalLMAdapter

#: the methods: prune()'s scorer and pruner (and options), named as the tables name them
METHODS: dict[str, dict[str, Any]] = {
    "magnitude": {"pruner": "magnitude"},
    "wanda": {"pruner": "wanda"},
    "sparsegpt": {"pruner": "sparsegpt"},
    "ria": {"pruner": "ria"},
    "dsnot": {"pruner": "dsnot"},
    "owl+wanda": {"scorer": "owl", "pruner": "wanda"},
    "alpha+wanda": {"scorer": "alpha", "pruner": "wanda"},
    "ecoflap-zeroth+wanda": {"scorer": "zeroth", "pruner": "wanda"},
}


def build(args: argparse.Namespace) -> CausalLMAdapter:
    overrides = {"num_hidden_layers": args.blocks} if args.blocks else None
    return CausalLMAdapter(arch=args.arch, init="random", tokenizer="bytes", seed=0, arch_overrides=overrides)


def outputs(adapter: CausalLMAdapter, held_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last block's output and the logits on the held-out sequences."""
    last = list(adapter.blocks())[-1].module
    seen: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        logits = adapter.model(input_ids=held_out).logits
    hook.remove()
    return torch.cat(seen).float(), logits.float()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="llama_tiny")
    parser.add_argument("--blocks", type=int, default=None, help="blocks to build (default: the architecture's)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 259, (2 * args.samples, args.seqlen), generator=generator)
    calibration, held_out = list(tokens[: args.samples]), tokens[args.samples :]
    dense_block, dense_logits = outputs(build(args), held_out)
    rows = []
    for name in args.methods.split(","):
        walls, cpus = [], []
        for _ in range(args.repeats):
            adapter = build(args)
            wall, cpu = time.perf_counter(), time.process_time()
            report = prune(adapter, calibration, sparsity=args.sparsity, **METHODS[name])
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        block, logits = outputs(adapter, held_out)
        rows.append((name, report.achieved["overall"], relative(block, dense_block), relative(logits, dense_logits),
                     statistics.median(walls), statistics.median(cpus)))
    wanda = next((r[4] for r in rows if r[0] == "wanda"), rows[0][4])
    print(f"{args.arch} ({args.blocks or 'all'} blocks), sparsity {args.sparsity}, {args.samples} x {args.seqlen} "
          f"tokens, {args.threads} thread(s), median of {args.repeats}")
    print("| method | zeros | last block rel. error | logits rel. error | time (s) | CPU (s) | x Wanda |")
    print("|---|---|---|---|---|---|---|")
    for name, zeros, block_error, logits_error, wall, cpu in rows:
        print(f"| {name} | {zeros:.4f} | {block_error:.4f} | {logits_error:.4f} | {wall:.3f} | {cpu:.3f} | "
              f"{wall / wanda:.2f} |")


if __name__ == "__main__":
    main()
