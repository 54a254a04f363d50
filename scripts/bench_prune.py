"""Time and peak memory of the pruning pass (Wanda, SparseGPT, magnitude) against one plain forward
pass over the same calibration set.

Default shape: LLaMA-7B width (4096 hidden, 11008 MLP, 32000 vocab) with 2 blocks, random init,
fp32 on the CPU, 16 calibration sequences of 512 tokens in batches of 1 (Wanda's and SparseGPT's
setting). Each pass runs in its own child process so that its peak RSS is its own; model
construction is identical in every child, so the ratios to the plain forward's figures compare
like with like. Only the pass itself is timed.

Goals (issue 2): the Wanda pass at most 2.5x the plain forward's time and at most 1.3x its peak
memory. With a GPU (`--device cuda`), the full 32-block shape in fp16 reports time and peak GPU
memory (`--blocks 32 --dtype float16 --device cuda`).

    python scripts/bench_prune.py [--blocks 2] [--samples 16] [--seqlen 512] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ecoflap_exp.models.causal_lm import CausalLMAdapter  # noqa: E402
from ecoflap_exp.pruning.engine import SequentialEngine  # noqa: E402
from ecoflap_exp.pruning.magnitude import MagnitudePruner  # noqa: E402
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner  # noqa: E402
from ecoflap_exp.pruning.wanda import WandaPruner  # noqa: E402

PRUNERS = {"wanda": WandaPruner, "sparsegpt": SparseGPTPruner, "magnitude": MagnitudePruner}


def run_pass(name: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    adapter = CausalLMAdapter(arch=args.model_arch, init="random", tokenizer="bytes", dtype=args.dtype,
                              arch_overrides={"num_hidden_layers": args.blocks})
    if device.type == "cuda":
        adapter.to(device)
    ids = torch.randint(3, 259, (args.samples, args.seqlen), generator=torch.Generator().manual_seed(0))
    batches = [adapter.collate(list(ids[i : i + args.batch])) for i in range(0, args.samples, args.batch)]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if name == "forward":
        with torch.no_grad():
            for batch in batches:
                adapter.forward(batch)
    else:
        plan = {block.name: 0.5 for block in adapter.blocks()}
        SequentialEngine(adapter, PRUNERS[name](), plan, device=device).run(batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"pass": name, "seconds": seconds, "peak_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-arch", default="llama_7b")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--passes", default="forward,wanda,sparsegpt,magnitude")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_pass(args.child, args)))
        return
    passes = args.passes.split(",")
    forwarded = [f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
                 if key not in ("out", "child", "passes")]
    rows = []
    for name in passes:
        out = subprocess.run([sys.executable, __file__, *forwarded, "--child", name], capture_output=True, text=True,
                             check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    base = next((r for r in rows if r["pass"] == "forward"), rows[0])
    memory = "peak GPU GB" if args.device.startswith("cuda") else "peak RSS GB"
    print(f"{args.model_arch} x {args.blocks} blocks, {args.samples} x {args.seqlen} tokens, "
          f"{args.dtype}, {args.device}")
    print(f"{'pass':10} {'seconds':>9} {'x forward':>10} {memory:>12} {'x forward':>10}")
    for r in rows:
        r["time_x_forward"] = r["seconds"] / base["seconds"]
        r["memory_x_forward"] = r["peak_gb"] / base["peak_gb"]
        print(f"{r['pass']:10} {r['seconds']:9.2f} {r['time_x_forward']:10.2f} {r['peak_gb']:12.2f} "
              f"{r['memory_x_forward']:10.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
