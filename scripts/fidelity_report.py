"""How far the official-code choices move scores, plans and masks: the figures behind issue 11.

Sections (all on the CPU, random-init tiny BLIP-2 or the shipped trained digits CLIP; run with
OMP_NUM_THREADS=1 for figures that repeat):

- `zeroth`: ECoFLaP zeroth-order block scores of the tiny BLIP-2 (FlanT5 and OPT, 2-block towers)
  in fp32 and bf16 (the same weights rounded), 32 calibration pairs in batches of 8 (the paper's
  zeroth-order setting), and how many matrices score exactly 0; Spearman of the bf16 block scores
  with the fp32 ones. Uses only APIs that older commits have too, so `PYTHONPATH=<old checkout>`
  measures the code before the fp32 loss.
- `padding`: the tiny BLIP-2 FlanT5 pruned at 50% from 32 pairs (batches of 8) with the pads
  left out of the statistics (now) and with texts padded to 32 tokens whose pads enter them (as
  before): the share of each tower's weights whose Wanda mask differs, SparseGPT's relative weight
  change, and the plan the ID scorer gives (block sparsities).
- `fused`: the digits CLIP with open_clip's in_proj as one matrix (now, ECoFLaP's unit) and as q,
  k, v slices (before): zeroth-order block scores, the ECoFLaP plan at 50% (p_max 0.6), the share of
  in_proj weights whose SparseGPT mask differs, and zero-shot accuracy after ECoFLaP zeroth + Wanda
  and after SparseGPT.

- `choices`: per paper experiment and method, each official choice of the pruning pass as the run's
  config and the model's towers set it, beside what ECoFLaP's code does (no model is run: the configs
  compose and the tiny stand-ins give the towers' Wanda groups).

    OMP_NUM_THREADS=1 python scripts/fidelity_report.py [--section zeroth|padding|fused|choices|all]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

import numpy as np
import scipy.stats
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecoflap_exp.models.blip2 import Blip2Adapter  # noqa: E402
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer  # noqa: E402

CAPTIONS = ["a photo of a cat on a sofa", "two dogs playing in the park", "a red car parked on the street",
            "a plate of food on a wooden table", "a mountain lake at dawn", "an old stone building",
            "a person running along the beach", "a bowl of fresh fruit"]


def pairs(n: int = 32) -> list[tuple[Image.Image, str]]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]
    return list(zip(images, (CAPTIONS * n)[:n], strict=True))


def blip2(kind: str, dtype: torch.dtype, seed: int = 0) -> tuple[Blip2Adapter, list]:
    adapter = Blip2Adapter(arch=f"blip2_{kind}_tiny", init="random", tokenizer="bytes", seed=seed)
    adapter.model.to(dtype)
    samples = pairs()
    return adapter, [adapter.collate(samples[i : i + 8]) for i in range(0, len(samples), 8)]


def zeroth() -> None:
    for kind in ("t5", "opt"):
        scores, zero = {}, {}
        for dtype in (torch.float32, torch.bfloat16):
            adapter, batches = blip2(kind, dtype)
            per_matrix = ZerothOrderScorer(num_samples=None, granularity="matrix").scores(adapter, batches)
            zero[dtype] = sum(v == 0 for v in per_matrix.values()), len(per_matrix)
            owner = {m.name: b.name for b in adapter.blocks() for m in b.matrices}
            scores[dtype] = {}
            for name, value in per_matrix.items():
                scores[dtype][owner[name]] = scores[dtype].get(owner[name], 0.0) + value
        blocks = list(scores[torch.float32])
        rho = scipy.stats.spearmanr([scores[torch.float32][b] for b in blocks],
                                    [scores[torch.bfloat16][b] for b in blocks]).statistic
        print(f"\nzeroth-order block scores, tiny BLIP-2 {kind}, 32 pairs in batches of 8")
        print(f"{'block':44s} {'fp32':>10s} {'bf16':>10s}")
        for b in blocks:
            print(f"{b:44s} {scores[torch.float32][b]:10.3f} {scores[torch.bfloat16][b]:10.3f}")
        print(f"matrices scoring exactly 0: fp32 {zero[torch.float32][0]}/{zero[torch.float32][1]}, "
              f"bf16 {zero[torch.bfloat16][0]}/{zero[torch.bfloat16][1]}; Spearman(bf16, fp32) = {rho:.3f}")


def padded_to(batch: dict, width: int) -> dict:
    """The batch's texts right-padded to `width` tokens (pad id 0, mask 0, label -100)."""
    out = dict(batch)
    for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100), ("decoder_attention_mask", 0)):
        extra = width - batch[key].shape[1]
        out[key] = torch.nn.functional.pad(batch[key], (0, extra), value=fill)
    return out


def padding() -> None:
    from ecoflap_exp.allocation.base import Groups
    from ecoflap_exp.allocation.waterfill import WaterFilling
    from ecoflap_exp.models.seam import Tower
    from ecoflap_exp.pruning.engine import SequentialEngine
    from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
    from ecoflap_exp.pruning.wanda import WandaPruner
    from ecoflap_exp.scoring.intrinsic_dim import IntrinsicDimensionScorer

    def prepared(pads_in: bool) -> tuple[Blip2Adapter, list]:
        adapter, batches = blip2("t5", torch.float32)
        if pads_in:
            adapter.all_towers = lambda original=adapter.all_towers: [unmasked(t) for t in original()]
            batches = [padded_to(b, 32) for b in batches]
        return adapter, batches

    def unmasked(tower: Tower) -> Tower:
        tower._token_masks = None
        return tower

    batches = prepared(False)[1]
    enc, dec = (1 - float(sum(b[key].sum() for b in batches)) / (32 * 32)
                for key in ("attention_mask", "decoder_attention_mask"))
    print(f"\npadding: pads would be {enc:.0%} of the encoder's text positions and {dec:.0%} of the decoder's "
          f"at 32 tokens")
    for name, pruner in (("wanda", WandaPruner()), ("sparsegpt", SparseGPTPruner())):
        models = {}
        for pads_in in (False, True):
            adapter, batches = prepared(pads_in)
            SequentialEngine(adapter, pruner, {b.name: 0.5 for b in adapter.blocks()}).run(batches)
            models[pads_in] = adapter
        flips, sizes, change = {}, {}, {}
        for tower_now, tower_before in zip(models[False].towers(), models[True].towers(), strict=True):
            for m, n in zip((m for b in tower_now.blocks for m in b.matrices),
                            (m for b in tower_before.blocks for m in b.matrices), strict=True):
                flips[tower_now.name] = flips.get(tower_now.name, 0) + int(((m.weight == 0) != (n.weight == 0)).sum())
                sizes[tower_now.name] = sizes.get(tower_now.name, 0) + m.numel
                rel = float((m.weight - n.weight).norm() / n.weight.norm())
                change[tower_now.name] = max(change.get(tower_now.name, 0.0), rel)
        print(f"{name}: weights whose mask differs (pads out vs pads in): "
              + ", ".join(f"{t} {flips[t] / sizes[t]:.1%}" for t in flips)
              + ("; largest relative weight change per matrix: " + ", ".join(f"{t} {change[t]:.3f}" for t in change)
                 if name == "sparsegpt" else ""))
    plans = {}
    for pads_in in (False, True):
        adapter, batches = prepared(pads_in)
        scores = IntrinsicDimensionScorer().scores(adapter, batches)
        plans[pads_in] = WaterFilling().plan(scores, Groups.of(adapter), 0.5, 0.6)
    print("ID (TwoNN of flattened block outputs) + water-filling at 50%, block sparsity pads out / pads in:")
    for block in plans[False]:
        print(f"  {block:44s} {plans[False][block]:.4f} / {plans[True][block]:.4f}")


def fused() -> None:
    from ecoflap_exp.allocation.base import Groups
    from ecoflap_exp.allocation.waterfill import WaterFilling
    from ecoflap_exp.data.digits import DigitsCalibration
    from ecoflap_exp.evals.digits import DigitsEval
    from ecoflap_exp.models.open_clip import OpenCLIPAdapter
    from ecoflap_exp.pruning.engine import SequentialEngine
    from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
    from ecoflap_exp.pruning.wanda import WandaPruner

    def digits(split_qkv: bool) -> OpenCLIPAdapter:
        return OpenCLIPAdapter("digits_clip", pretrained="shipped:digits_clip", split_qkv=split_qkv)

    calibration = DigitsCalibration(num_samples=128, batch_size=8, seed=0)
    scores, plans, accuracy, masks = {}, {}, {}, {}
    for split in (False, True):
        adapter = digits(split)
        batches = calibration.batches(adapter)
        scores[split] = ZerothOrderScorer(num_samples=32).scores(adapter, batches)
        plans[split] = WaterFilling().plan(scores[split], Groups.of(adapter), 0.5, 0.6)
        SequentialEngine(adapter, WandaPruner(), plans[split]).run(batches)
        accuracy[split, "zeroth+wanda"] = DigitsEval().evaluate(adapter)["acc"]
        adapter = digits(split)
        SequentialEngine(adapter, SparseGPTPruner(), {b.name: 0.5 for b in adapter.blocks()}).run(batches)
        accuracy[split, "sparsegpt"] = DigitsEval().evaluate(adapter)["acc"]
        masks[split] = [b.module.attn.in_proj_weight == 0 for b in adapter.blocks()]
    print("\ndigits CLIP, open_clip in_proj fused (one matrix) vs split (q, k, v)")
    print(f"{'block':36s} {'zeroth fused':>12s} {'split':>10s} {'change':>8s} {'plan fused':>10s} {'split':>8s}")
    for block in scores[False]:
        change = scores[True][block] / scores[False][block] - 1
        print(f"{block:36s} {scores[False][block]:12.3f} {scores[True][block]:10.3f} {change:8.1%} "
              f"{plans[False][block]:10.4f} {plans[True][block]:8.4f}")
    differ = sum(int((a != b).sum()) for a, b in zip(masks[False], masks[True], strict=True))
    total = sum(a.numel() for a in masks[False])
    print(f"SparseGPT 50%: in_proj weights whose mask differs: {differ / total:.1%}")
    for method in ("zeroth+wanda", "sparsegpt"):
        print(f"zero-shot accuracy (%) after {method} at 50%: fused {accuracy[False, method]:.2f}, "
              f"split {accuracy[True, method]:.2f}")


#: what ECoFLaP's code does (ylsung/ECoFLaP 59dac0a): SparseGPT's damping, Wanda's group per tower, whether pads
#: enter the statistics, the calibration images' view (and whether each pass draws it anew), CLIP's text out_proj
#: statistics, BLIP-2's precision
BLIP2_ROW = {"groups": "vision=matrix encoder=row decoder=row", "pads": False, "view": "train", "redraw": True,
             "precision": "official"}
OFFICIAL = {
    ("table1_blip2", "wanda"): BLIP2_ROW,
    ("table1_blip2", "sparsegpt"): {**{k: v for k, v in BLIP2_ROW.items() if k != "groups"}, "damping": "ecoflap"},
    ("table1_blip2", "ecoflap_first"): BLIP2_ROW,
    ("table1_blip2", "ecoflap_zeroth_blip2"): {**BLIP2_ROW, "pads": True},
    ("table2_clip", "wanda"): {"groups": "vision=row text=row", "view": "eval", "redraw": False,
                               "text_attention": "unmasked"},
    ("table2_clip", "sparsegpt_ecoflap"): {"damping": "ecoflap", "view": "eval", "redraw": False,
                                           "text_attention": "unmasked"},
}
TINY = {"blip2_t5": "blip2_t5_tiny", "clip_vitb16": "clip_tiny"}


def choices() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ecoflap_exp.pruning.wanda import WandaPruner

    root = Path(__file__).resolve().parents[1] / "configs"
    wanda = WandaPruner()
    groups: dict[str, str] = {}  # per model, its tiny stand-in's Wanda group per tower
    print(f"\n{'experiment':14s} {'method':18s} {'choice':15s} {'ours':40s} official")
    for (experiment, method), official in OFFICIAL.items():
        point = [f"+experiment/method={method}"] if experiment == "table1_blip2" else [f"pruner={method}"]
        with initialize_config_dir(config_dir=str(root), version_base="1.3"):
            cfg = compose("config", [f"experiment={experiment}", *point])
            if cfg.model.name not in groups:
                tiny = instantiate(compose("config", [f"model={TINY[cfg.model.name]}"]).model)
                groups[cfg.model.name] = " ".join(f"{t.name}={wanda.group_for(t)}" for t in tiny.towers())
        # a calibration with no augment option has no training view
        ours = {"damping": cfg.pruner.get("damping"), "pads": cfg.pads_in_stats,
                "view": cfg.calib.get("augment") or "eval", "redraw": cfg.redraw_calibration,
                "precision": cfg.model.get("precision"),
                "text_attention": cfg.model.get("text_attention_stats"), "groups": groups[cfg.model.name]}
        for key, expected in official.items():
            mark = "" if ours[key] == expected else "  <- differs"
            print(f"{experiment:14s} {method:18s} {key:15s} {str(ours[key]):40s} {expected}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=["zeroth", "padding", "fused", "choices", "all"], default="all")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    random.seed(0)
    torch.manual_seed(0)
    for name, section in (("zeroth", zeroth), ("padding", padding), ("fused", fused), ("choices", choices)):
        if args.section in (name, "all"):
            section()


if __name__ == "__main__":
    main()
