"""Time and peak memory of the block scorers relative to one plain forward pass.

Each pass runs in its own child process so that its peak RSS (ru_maxrss) is its own; model
construction is the same in every child, so peak RSS ratios compare like with like.

Two settings, both random-init LLaMA shapes on the CPU in fp32:
- `memory`: LLaMA-7B width (4096 hidden, 11008 MLP), 4 blocks. zeroth perturbs only block 0's
  matrices (the largest matrices are there too; the peak does not grow with more of them), so the
  run stays short; first and id score the whole model.
- `time`: a narrower LLaMA (1024 hidden, 2816 MLP) with 8 blocks, where zeroth-order scoring of
  every matrix with and without prefix reuse finishes in minutes.

Goals (issue 3): zeroth peak memory <= 1.10x the plain forward's; zeroth with prefix reuse <= 0.6x
the naive variant's time; TwoNN on 2000 x 768 points >= 10x faster than scikit-dimension's.

`id` (issue 13, not in `all`): the ID paper's per-matrix ID (scorer=id_paper: twonn_blocks, whole
token sequences flattened) of one BLIP-2 ViT-g block (random init, 1408 wide, 6144 MLP, 257
tokens, fp32; qkv, projection, fc1, fc2) from --id-samples images in batches of 16, its outputs
held in files under --store-dir (27 GB at 2000 samples). A second child gathers fc2's whole
outputs (samples x 257 x 1408) and estimates the ID from one float64 Gram matrix of them, the
exact full-matrix reference, and from a 64-directions-per-token random projection of them.

    python scripts/bench_scoring.py [--setting memory|time|twonn|id|all] [--out results.json]
        [--id-samples 2000] [--store-dir /tmp/id_store] [--device cpu|cuda]
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
from ecoflap_exp.models.seam import Tower  # noqa: E402
from ecoflap_exp.scoring.first import FirstOrderScorer  # noqa: E402
from ecoflap_exp.scoring.intrinsic_dim import (  # noqa: E402
    IntrinsicDimensionScorer,
    gram_distances,
    twonn,
    twonn_blocks_of_distances,
)
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer, count_block_forwards  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    "memory": {"overrides": {"num_hidden_layers": 4}, "samples": 8, "seqlen": 128, "batch": 8,
               "passes": ["forward", "zeroth_block0", "first", "id"]},
    "time": {"overrides": {"num_hidden_layers": 8, "hidden_size": 1024, "intermediate_size": 2816,
                           "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 8000},
             "samples": 16, "seqlen": 64, "batch": 8, "passes": ["forward", "zeroth", "zeroth_naive", "id", "first"]},
}


def build(setting: dict[str, Any]) -> tuple[CausalLMAdapter, list[dict]]:
    adapter = CausalLMAdapter(arch="llama_7b", init="random", tokenizer="bytes", arch_overrides=setting["overrides"])
    ids = torch.randint(3, 259, (setting["samples"], setting["seqlen"]), generator=torch.Generator().manual_seed(0))
    size = setting["batch"]
    batches = [adapter.collate(list(ids[i : i + size])) for i in range(0, setting["samples"], size)]
    return adapter, batches


class FirstBlockOnly(CausalLMAdapter):
    """The same model, but only block 0's matrices are scored (the others still run)."""

    def all_towers(self) -> list[Tower]:
        (tower,) = super().all_towers()  # built anew on every call, so trimming it here is local
        tower.blocks = tower.blocks[:1]
        return [tower]


def run_pass(name: str, setting: dict[str, Any]) -> dict[str, Any]:
    adapter, batches = build(setting)
    samples = setting["samples"]
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if name == "forward":
        with torch.no_grad():
            for batch in batches:
                adapter.forward(batch)
    elif name.startswith("zeroth"):
        if name == "zeroth_block0":
            adapter.__class__ = FirstBlockOnly
        with count_block_forwards(adapter) as counter:
            ZerothOrderScorer(num_samples=samples, reuse_prefix=name != "zeroth_naive").scores(adapter, batches)
        extra["block_forwards"] = counter.real
    elif name == "first":
        FirstOrderScorer().scores(adapter, batches)
    elif name == "id":
        IntrinsicDimensionScorer().scores(adapter, batches)
    seconds = time.perf_counter() - start
    return {"pass": name, "seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            **extra}


def blip2_vit_block(device: str) -> Any:
    """BLIP-2 (FlanT5-XL) with one ViT-g block and a minimal rest; the vision tower is pruned."""
    from ecoflap_exp.models.blip2 import Blip2Adapter

    adapter = Blip2Adapter(arch="blip2_flan_t5_xl", init="random", tokenizer="bytes", prune_towers=["vision"],
                           arch_overrides={"vision_config": {"num_hidden_layers": 1},
                                           "qformer_config": {"num_hidden_layers": 1},
                                           "text_config": {"num_layers": 1, "num_decoder_layers": 1, "d_model": 64,
                                                           "d_ff": 128, "num_heads": 2, "d_kv": 32}})
    adapter.model.to(device)
    return adapter


def id_batches(adapter: Any, samples: int) -> list[dict]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pairs = [(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)), f"a photo number {i}")
             for i in range(samples)]
    return [adapter.collate(pairs[i : i + 16]) for i in range(0, samples, 16)]


def run_id_pass(name: str, samples: int, store_dir: str, device: str) -> dict[str, Any]:
    adapter = blip2_vit_block(device)
    batches = id_batches(adapter, samples)
    start = time.perf_counter()
    out: dict[str, Any] = {"pass": name, "samples": samples, "threads": torch.get_num_threads(), "device": device}
    if name == "id":
        scorer = IntrinsicDimensionScorer(estimator="twonn_blocks", granularity="matrix", num_samples=samples,
                                          store_dir=store_dir)
        scorer.scores(adapter, batches)
        out["ids"] = scorer.info["intrinsic_dim"]
    else:  # fc2's whole outputs in memory: the exact full-matrix reference, and a random projection
        (block,) = adapter.towers()[0].blocks
        fc2 = block.module.mlp.fc2
        rows: list[torch.Tensor] = []
        hook = fc2.register_forward_hook(lambda _m, _a, y: rows.append(y.float().reshape(len(y), -1).cpu()))
        with torch.no_grad():
            for batch in batches:
                adapter.model.vision_model(pixel_values=batch["pixel_values"])
        hook.remove()
        X = torch.cat(rows)
        del rows
        out["gathered_gb"] = X.numel() * 4 / 2**30
        centred = X.double()
        centred -= centred.mean(0)
        D = gram_distances(centred @ centred.t())
        out["exact"] = twonn_blocks_of_distances(D)  # random images: no copies to drop
        del centred
        g = torch.Generator().manual_seed(0)
        projection = torch.randn(1408, 64, generator=g) / 8
        P = (X.reshape(len(X), -1, 1408) @ projection).reshape(len(X), -1).double()
        P -= P.mean(0)
        out["projected_64"] = twonn_blocks_of_distances(gram_distances(P @ P.t()))
    if device == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def bench_id(samples: int, store_dir: str, device: str) -> dict[str, Any]:
    rows = {}
    for name in ("id", "id_exact"):
        out = subprocess.run([sys.executable, __file__, "--id-child", name, "--id-samples", str(samples),
                              "--store-dir", store_dir, "--device", device], capture_output=True, text=True,
                             check=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
        print("id", {k: v for k, v in rows[name].items() if k != "ids"}, flush=True)
    ours = next(v for k, v in rows["id"]["ids"].items() if k.endswith("mlp.fc2"))
    rows["fc2"] = {"ours": ours, "exact": rows["id_exact"]["exact"], "projected_64": rows["id_exact"]["projected_64"],
                   "ours_error": abs(ours / rows["id_exact"]["exact"] - 1),
                   "projection_error": abs(rows["id_exact"]["projected_64"] / rows["id_exact"]["exact"] - 1)}
    return rows


def bench_twonn() -> dict[str, Any]:
    import numpy as np
    import skdim

    X = np.random.default_rng(0).standard_normal((2000, 768)).astype(np.float32)
    T = torch.from_numpy(X)
    twonn(T)  # warm-up
    start = time.perf_counter()
    ours = twonn(T)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = skdim.id.TwoNN().fit(X).dimension_
    ref_s = time.perf_counter() - start
    return {"ours_s": ours_s, "skdim_s": ref_s, "speedup": ref_s / ours_s, "ours": ours, "skdim": ref,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="all", choices=["memory", "time", "twonn", "id", "all"])
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "PASS"), help=argparse.SUPPRESS)
    parser.add_argument("--id-child", help=argparse.SUPPRESS)
    parser.add_argument("--id-samples", type=int, default=2000)
    parser.add_argument("--store-dir", default="/tmp/id_store", help="where the id setting keeps a block's outputs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_pass(args.child[1], SETTINGS[args.child[0]])))
        return
    if args.id_child:
        print(json.dumps(run_id_pass(args.id_child, args.id_samples, args.store_dir, args.device)))
        return
    results: dict[str, Any] = {}
    for setting in (["memory", "time"] if args.setting == "all" else [args.setting]):
        if setting in ("twonn", "id"):
            continue
        rows = []
        for name in SETTINGS[setting]["passes"]:
            out = subprocess.run([sys.executable, __file__, "--child", setting, name], capture_output=True,
                                 text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(setting, rows[-1], flush=True)
        base = rows[0]
        for row in rows:
            row["time_x_forward"] = row["seconds"] / base["seconds"]
            row["rss_x_forward"] = row["peak_rss_gb"] / base["peak_rss_gb"]
        results[setting] = rows
    if args.setting in ("twonn", "all"):
        results["twonn"] = bench_twonn()
    if args.setting == "id":
        results["id"] = bench_id(args.id_samples, args.store_dir, args.device)
    print(f"{'setting':8} {'pass':14} {'seconds':>9} {'x fwd':>7} {'peak RSS GB':>12} {'x fwd':>7} {'block fwds':>10}")
    for setting, rows in results.items():
        if setting in ("twonn", "id"):
            continue
        for r in rows:
            print(f"{setting:8} {r['pass']:14} {r['seconds']:9.2f} {r['time_x_forward']:7.2f} "
                  f"{r['peak_rss_gb']:12.2f} {r['rss_x_forward']:7.3f} {r.get('block_forwards', ''):>10}")
    if "time" in results:
        by = {r["pass"]: r for r in results["time"]}
        print(f"zeroth prefix reuse / naive time: {by['zeroth']['seconds'] / by['zeroth_naive']['seconds']:.3f}")
    if "twonn" in results:
        t = results["twonn"]
        print(f"TwoNN 2000x768: ours {t['ours_s']:.3f} s, scikit-dimension {t['skdim_s']:.3f} s, "
              f"speedup {t['speedup']:.2f}x ({t['threads']} threads); estimates {t['ours']:.4f} vs {t['skdim']:.4f}")
    if "id" in results:
        r, fc2 = results["id"], results["id"]["fc2"]
        print(f"per-matrix ID of one BLIP-2 ViT-g block, {r['id']['samples']} samples, {r['id']['threads']} threads, "
              f"{r['id']['device']}: {r['id']['seconds']:.1f} s, peak RSS {r['id']['peak_rss_gb']:.2f} GB"
              + (f", peak GPU {r['id']['peak_gpu_gb']:.2f} GB" if "peak_gpu_gb" in r["id"] else ""))
        print(f"fc2 ID: ours {fc2['ours']:.4f}, exact full-matrix {fc2['exact']:.4f} (relative error "
              f"{fc2['ours_error']:.2e}); 64-direction projection {fc2['projected_64']:.4f} (error "
              f"{fc2['projection_error']:.2%}); the full-matrix pass peaked at {r['id_exact']['peak_rss_gb']:.2f} GB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
