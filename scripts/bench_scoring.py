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
the naive variant's time. `twonn` (issue 16): TwoNN on 2000 and 10000 Gaussian points in 768
dimensions, ours and scikit-dimension's, each in its own child on one thread after a warm-up fit
(the fastest CPU time of three fits; peak RSS during the fits above the RSS before them).

`blip2_t5` and `digits_clip` (issue 16, not in `all`): zeroth-order scoring of a multi-tower model
as the official loop does it (a full forward per perturbed loss), with prefix reuse, and with
prefix reuse plus tower outputs (towers a perturbation cannot reach run once per batch): time,
CPU time, peak RSS, block forwards per tower, and the forwards the last variant cannot avoid
(`forward_bound`). Shapes in `build_towers`.

`id` (issue 13, not in `all`): the ID paper's per-matrix ID (scorer=id_paper: twonn_blocks, whole
token sequences flattened) of one BLIP-2 ViT-g block (random init, 1408 wide, 6144 MLP, 257
tokens, fp32; qkv, projection, fc1, fc2) from --id-samples images in batches of 16, its outputs
held in files under --store-dir (27 GB at 2000 samples). A second child gathers fc2's whole
outputs (samples x 257 x 1408) and estimates the ID from one float64 Gram matrix of them, the
exact full-matrix reference, and from a 64-directions-per-token random projection of them.

    python scripts/bench_scoring.py [--setting memory|time|twonn|id|blip2_t5|digits_clip|all] [--out results.json]
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
from instrumentation import count_block_forwards, plain_forwards  # noqa: E402

from ecoflap_exp.models.causal_lm import CausalLMAdapter  # noqa: E402
from ecoflap_exp.models.seam import Tower  # noqa: E402
from ecoflap_exp.scoring.first import FirstOrderScorer  # noqa: E402
from ecoflap_exp.scoring.id_estimators import twonn, twonn_blocks  # noqa: E402
from ecoflap_exp.scoring.intrinsic_dim import IntrinsicDimensionScorer  # noqa: E402
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer  # noqa: E402
from ecoflap_exp.tower_outputs import TowerOutputs  # noqa: E402

ZEROTH_VARIANTS = {"zeroth_official": {"reuse_prefix": False, "reuse_towers": False},
                   "zeroth_prefix": {"reuse_prefix": True, "reuse_towers": False},
                   "zeroth": {"reuse_prefix": True, "reuse_towers": True}}
#: the multi-tower settings (issue 16): the official full-forward loop, prefix reuse, prefix reuse
#: plus tower outputs, each against a plain forward over the same batches
TOWER_SETTINGS = {"blip2_t5": {"samples": 8, "batch": 8}, "digits_clip": {"samples": 32, "batch": 8}}
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


def build_towers(model: str) -> tuple[Any, list[dict]]:
    """`blip2_t5`: BLIP-2 FlanT5-XL widths (ViT-g 1408 at 257 tokens, the real Q-Former, T5-XL
    2048) with 4 ViT blocks and 2 encoder and 2 decoder blocks, random init, fp32, 8 random 224 px
    images with captions in one batch; `digits_clip`: the shipped trained digits CLIP and its
    calibration (32 samples in batches of 8)."""
    import numpy as np
    from PIL import Image

    from ecoflap_exp.api import composed
    from ecoflap_exp.models.blip2 import Blip2Adapter
    from ecoflap_exp.plugins import build

    setting = TOWER_SETTINGS[model]
    if model == "digits_clip":
        cfg = composed("uniform", "wanda", None, [f"calib.num_samples={setting['samples']}"])
        adapter = build(cfg.model)
        return adapter, build(cfg.calib).batches(adapter)
    adapter = Blip2Adapter(arch="blip2_flan_t5_xl", init="random", tokenizer="bytes",
                           arch_overrides={"vision_config": {"num_hidden_layers": 4},
                                           "text_config": {"num_layers": 2, "num_decoder_layers": 2}})
    rng = np.random.default_rng(0)
    captions = ["a man riding a horse on a sunny beach", "two dogs playing with a red ball in the park",
                "a plate of pasta with tomato sauce", "an old stone bridge over a river at dusk"]
    pairs = [(Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)), captions[i % 4])
             for i in range(setting["samples"])]
    return adapter, [adapter.collate(pairs[i : i + setting["batch"]]) for i in range(0, len(pairs), setting["batch"])]


def forward_bound(adapter: Any, batches: list[dict]) -> dict[str, int]:
    """Block forwards per tower that zeroth-order scoring with prefix and tower reuse cannot do
    without: each perturbed loss of block i of tower T runs T's blocks i.. and every tower that
    reads T; each tower's walk re-runs its blocks once per batch; each tower whose output another
    tower's loss or capture is served computes it once per batch."""
    towers, B = adapter.towers(), len(batches)
    with TowerOutputs(adapter, 0.0) as outputs:
        readers = {t.name: [u for u in adapter.all_towers() if u.name != t.name and outputs.reads(u.name, t.name)]
                   for t in towers}
        served = {u for t in adapter.all_towers() for u in outputs.unchanged_by(t.name)} | {
            u for t in towers for u in outputs.capturing(t.name)}
    bound = {t.name: 0 for t in adapter.all_towers()}
    for t in towers:
        n = len(t.blocks)
        for i, block in enumerate(t.blocks):
            losses = 2 * B * len(block.matrices)
            bound[t.name] += losses * (n - i)
            for u in readers[t.name]:
                bound[u.name] += losses * len(u.blocks)
        bound[t.name] += n * B
    for u in adapter.all_towers():
        if u.name in served:
            bound[u.name] += len(u.blocks) * B
    return {name: count for name, count in bound.items() if count}


def run_tower_pass(name: str, model: str) -> dict[str, Any]:
    adapter, batches = build_towers(model)
    out: dict[str, Any] = {"pass": name, "model": model, "threads": torch.get_num_threads()}
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad(), TowerOutputs(adapter, 4.0) as outputs:
        if name == "forward":
            plain_forwards(adapter, batches)
        else:
            scorer = ZerothOrderScorer(num_samples=TOWER_SETTINGS[model]["samples"], **ZEROTH_VARIANTS[name])
            with count_block_forwards(adapter) as counter:
                scorer.scores(adapter, batches, outputs=outputs)
            out["block_forwards"] = counter.by_tower
            out["stored_gb"] = outputs.bytes / 2**30
    out["seconds"], out["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if name == "zeroth":
        out["bound"] = forward_bound(adapter, batches)
    return out


def bench_towers(model: str) -> list[dict[str, Any]]:
    rows = []
    for name in ("forward", "zeroth_official", "zeroth_prefix", "zeroth"):
        out = subprocess.run([sys.executable, __file__, "--tower-child", model, name], capture_output=True,
                             text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(model, rows[-1], flush=True)
    return rows


def run_pass(name: str, setting: dict[str, Any]) -> dict[str, Any]:
    adapter, batches = build(setting)
    samples = setting["samples"]
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if name == "forward":
        plain_forwards(adapter, batches)
    elif name.startswith("zeroth"):
        if name == "zeroth_block0":
            adapter.__class__ = FirstBlockOnly
        with count_block_forwards(adapter) as counter:
            ZerothOrderScorer(num_samples=samples, reuse_prefix=name != "zeroth_naive",
                              reuse_towers=name != "zeroth_naive").scores(adapter, batches)
        extra["block_forwards"] = counter.real
        if name == "zeroth":
            extra["bound"] = sum(forward_bound(adapter, batches).values())
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
    else:  # fc2's whole outputs gathered as one vector per sample, and a random projection of them
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
        g = torch.Generator().manual_seed(0)
        projection = torch.randn(1408, 64, generator=g) / 8
        P = (X.reshape(len(X), -1, 1408) @ projection).reshape(len(X), -1)
        out["exact"] = twonn_blocks(X)
        del X
        out["projected_64"] = twonn_blocks(P)
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


def run_twonn_pass(name: str, points: int) -> dict[str, Any]:
    """One TwoNN fit of `points` Gaussian points in 768 dimensions on one thread: ours or
    scikit-dimension's (its nearest-neighbour search limited to one thread too)."""
    import numpy as np
    import skdim
    from threadpoolctl import threadpool_limits

    def fit(X: np.ndarray) -> float:
        return twonn(torch.from_numpy(X)) if name == "ours" else skdim.id.TwoNN().fit(X).dimension_

    rng = np.random.default_rng(0)
    X = rng.standard_normal((points, 768)).astype(np.float32)
    torch.set_num_threads(1)
    with threadpool_limits(1):
        fit(rng.standard_normal((200, 768)).astype(np.float32))  # warm-up: both libraries' first-call costs
        before = current_rss_gb()
        seconds = []
        for _ in range(3):  # the fastest of three CPU times: what the code costs, not the machine's load
            start = time.process_time()
            value = fit(X)
            seconds.append(time.process_time() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"pass": name, "points": points, "seconds": min(seconds), "dimension": value, "peak_rss_gb": peak,
            "fit_rss_gb": peak - before}


def current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def bench_twonn() -> list[dict[str, Any]]:
    rows = []
    for points in (2000, 10000):
        runs = {}
        for name in ("ours", "skdim"):
            out = subprocess.run([sys.executable, __file__, "--twonn-child", name, str(points)], capture_output=True,
                                 text=True, check=True).stdout
            runs[name] = json.loads(out.strip().splitlines()[-1])
        ours, ref = runs["ours"], runs["skdim"]
        rows.append({"points": points, "ours_s": ours["seconds"], "skdim_s": ref["seconds"],
                     "speedup": ref["seconds"] / ours["seconds"], "ours": ours["dimension"], "skdim": ref["dimension"],
                     "relative_difference": abs(ours["dimension"] / ref["dimension"] - 1),
                     "ours_rss_gb": ours["fit_rss_gb"], "skdim_rss_gb": ref["fit_rss_gb"]})
        print("twonn", rows[-1], flush=True)
    return rows


def print_towers(model: str, rows: list[dict[str, Any]]) -> None:
    by = {r["pass"]: r for r in rows}
    print(f"{model}, {rows[0]['threads']} threads: time (CPU time), peak RSS, block forwards per tower")
    for r in rows:
        counts = ", ".join(f"{k} {v}" for k, v in r.get("block_forwards", {}).items())
        ratio = by["zeroth_official"]["seconds"] / r["seconds"] if r["pass"] != "forward" else float("nan")
        print(f"  {r['pass']:16} {r['seconds']:8.1f} s ({r['cpu_seconds']:8.1f} s)  {r['peak_rss_gb']:6.2f} GB  "
              f"x{ratio:5.2f} vs official  {counts}")
    bound = by["zeroth"]["bound"]
    print(f"  bound for zeroth: {', '.join(f'{k} {v}' for k, v in bound.items())}; "
          f"stored tower outputs {by['zeroth']['stored_gb']:.3f} GB; "
          f"peak RSS {by['zeroth']['peak_rss_gb'] / by['forward']['peak_rss_gb']:.3f}x the plain forward's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="all", choices=["memory", "time", "twonn", "id", *TOWER_SETTINGS, "all"])
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "PASS"), help=argparse.SUPPRESS)
    parser.add_argument("--id-child", help=argparse.SUPPRESS)
    parser.add_argument("--twonn-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--tower-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--id-samples", type=int, default=2000)
    parser.add_argument("--store-dir", default="/tmp/id_store", help="where the id setting keeps a block's outputs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_pass(args.child[1], SETTINGS[args.child[0]])))
        return
    if args.tower_child:
        print(json.dumps(run_tower_pass(args.tower_child[1], args.tower_child[0])))
        return
    if args.twonn_child:
        print(json.dumps(run_twonn_pass(args.twonn_child[0], int(args.twonn_child[1]))))
        return
    if args.id_child:
        print(json.dumps(run_id_pass(args.id_child, args.id_samples, args.store_dir, args.device)))
        return
    results: dict[str, Any] = {}
    for setting in (["memory", "time"] if args.setting == "all" else [args.setting]):
        if setting in ("twonn", "id", *TOWER_SETTINGS):
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
    if args.setting in TOWER_SETTINGS:
        results[args.setting] = bench_towers(args.setting)
    print(f"{'setting':8} {'pass':14} {'seconds':>9} {'x fwd':>7} {'peak RSS GB':>12} {'x fwd':>7} {'block fwds':>10} "
          f"{'bound':>7}")
    for setting, rows in results.items():
        if setting in ("twonn", "id", *TOWER_SETTINGS):
            continue
        for r in rows:
            print(f"{setting:8} {r['pass']:14} {r['seconds']:9.2f} {r['time_x_forward']:7.2f} "
                  f"{r['peak_rss_gb']:12.2f} {r['rss_x_forward']:7.3f} {r.get('block_forwards', ''):>10} "
                  f"{r.get('bound', ''):>7}")
    if "time" in results:
        by = {r["pass"]: r for r in results["time"]}
        print(f"zeroth prefix reuse / naive time: {by['zeroth']['seconds'] / by['zeroth_naive']['seconds']:.3f}")
    for model in TOWER_SETTINGS:
        if model in results:
            print_towers(model, results[model])
    for t in results.get("twonn", []):
        print(f"TwoNN {t['points']}x768, one thread, CPU time: ours {t['ours_s']:.3f} s, scikit-dimension "
              f"{t['skdim_s']:.3f} s, "
              f"speedup {t['speedup']:.2f}x; fit's peak RSS {t['ours_rss_gb']:.3f} vs {t['skdim_rss_gb']:.3f} GB; "
              f"estimates {t['ours']:.6f} vs {t['skdim']:.6f} (relative difference {t['relative_difference']:.1e})")
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
