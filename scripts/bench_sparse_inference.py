"""Dense vs 2:4 semi-structured forward time of a LLaMA-shaped model (random init) on the same
inputs: prune every block's linears to 2:4 (magnitude), convert them with
torch.sparse.to_sparse_semi_structured, time both forwards. The 2:4 kernels exist only on CUDA
(Ampere or later, fp16/bf16); elsewhere the script says "unsupported" with the reason.

    python scripts/bench_sparse_inference.py [--device cuda] [--layers 2] [--hidden 4096] [--mlp 11008]
        [--batch 8] [--seqlen 512] [--repeats 10] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from ecoflap_exp import prune  # noqa: E402
from ecoflap_exp.models.causal_lm import CausalLMAdapter  # noqa: E402


def timed_forward(model: nn.Module, ids: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward pass (after one warm-up)."""
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if ids.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            if ids.is_cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def to_semi_structured(model: nn.Module) -> int:
    """Replace every decoder linear's weight by its 2:4 semi-structured form; how many."""
    from torch.sparse import to_sparse_semi_structured

    count = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".layers." in name:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight), requires_grad=False)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--mlp", type=int, default=11008)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args()
    dtype = "float16" if args.device.startswith("cuda") else "float32"
    adapter = CausalLMAdapter(arch="llama_7b", init="random", tokenizer="bytes", dtype=dtype, arch_overrides={
        "num_hidden_layers": args.layers, "hidden_size": args.hidden, "intermediate_size": args.mlp,
        "num_attention_heads": args.hidden // 128, "num_key_value_heads": args.hidden // 128})
    adapter.to(args.device)
    ids = torch.randint(3, 259, (args.batch, args.seqlen), generator=torch.Generator().manual_seed(0)).to(args.device)
    report = prune(adapter, [ids[:1]], pruner="magnitude", nm="2:4")
    result: dict[str, Any] = {"device": args.device, "dtype": dtype, "shape": vars(args), "torch": torch.__version__,
                              "sparsity": report.achieved["overall"]}
    result["dense_s"] = timed_forward(adapter.model, ids, args.repeats)
    try:
        result["converted_linears"] = to_semi_structured(adapter.model)
        result["semi_structured_s"] = timed_forward(adapter.model, ids, args.repeats)
        result["speedup"] = result["dense_s"] / result["semi_structured_s"]
        result["status"] = "ok"
    except (RuntimeError, NotImplementedError, ValueError, AssertionError) as err:
        result["status"] = f"unsupported on {args.device}: {type(err).__name__}: {str(err).splitlines()[0]}"
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
