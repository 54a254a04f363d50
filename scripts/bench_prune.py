"""Time and peak memory of the pruning pass against one plain forward pass over the same calibration
set.

`--model llama` (default): LLaMA-7B width (4096 hidden, 11008 MLP, 32000 vocab) with 2 blocks,
random init, fp32 on the CPU, 16 calibration sequences of 512 tokens in batches of 1 (Wanda's and
SparseGPT's setting); passes wanda, sparsegpt, magnitude. Goals (issue 2): the Wanda pass at most
2.5x the plain forward's time and at most 1.3x its peak memory.

`--model blip2_t5`: BLIP-2 FlanT5-XL shapes (ViT-g width 1408, FlanT5-XL width 2048, the real
Q-Former and vocabulary) with `--blocks` blocks per pruned tower (vision, T5 encoder, decoder),
random 224 px images and captions; passes wanda (uniform), zeroth (ECoFLaP zeroth-order block
scores, then Wanda) and first (first-order scores, then Wanda), each the whole run's path: score,
allocate (water-filling, p_max = p + 0.1), prune. `--zeroth-blocks 1` perturbs only the first
block of each tower (the memory peak does not grow with more blocks; the time does, per matrix).
Issue 4 anchors on one GPU at full size: Wanda 8.87 GB, zeroth 8.93 GB, first-order 22.4 GB.

`--model llava_15_7b` / `qwen2_vl_7b` / `qwen2_5_vl_7b` / `internvl3_8b` / `gemma3_4b` /
`llava_onevision_7b`: the chat VLMs' real widths and vocabularies (LLaVA-1.5-7B: CLIP ViT-L/14-336 and
Vicuna-7B; Qwen2-VL-7B and Qwen2.5-VL-7B: their ViTs, mergers and Qwen2(.5)-7B; InternVL3-8B:
InternViT-300M and Qwen2.5-7B; gemma-3-4b-it: SigLIP-so400m at 896 px and Gemma 3 4B;
llava-onevision-qwen2-7b-ov: SigLIP-so400m at 384 px and Qwen2-7B) with `--blocks` blocks in the
vision tower and the language model (Qwen2.5-VL's last ViT block with full attention, the others
windowed; Gemma 3's last language layer global, the others sliding), random init, byte-tokenized
one-round conversations about random square images (336 px for LLaVA and the Qwens: 576 image tokens
for LLaVA, 144 for Qwen2(.5)-VL; 448 px, one tile, 256 tokens for InternVL3; 896 px, 256 tokens for
Gemma 3; 384 px, two crops for LLaVA-OneVision), loss on the answers; the same passes as BLIP-2's
(the projector stays dense, as the models' configs default).

`--passes forward,sparsegpt_reference_count,ist_sparsegpt` puts our SparseGPT (counting as the
reference does, so the masks can agree) beside IST-DASLab/sparsegpt's algorithm as its code
runs it: one Hessian accumulated per Linear (q, k and v each their own), `fasterprune` per matrix
with its own inverse and the broadcast rank-1 update, fed by the same block walk. Both print a
digest of the pruned weights' zero pattern and the summed relative reconstruction error
tr(dW H dW^T) / tr(W H W^T) of every matrix on its calibration inputs (first 128 rows).

Each pass runs in its own child process so that its peak RSS is its own; model construction is
identical in every child, so the ratios to the plain forward's figures compare like with like.
Only the pass itself is timed. With a GPU (`--device cuda`), peak GPU memory is reported instead;
`--blocks 0` builds every block of the released model (LLaMA-7B's 32, BLIP-2's 39 ViT and 24 + 24 T5
blocks, LLaVA-1.5's 24 ViT and 32 language blocks). `--offload` keeps the model on the CPU and brings
each block to the GPU in turn (the run's `offload=true`), for pruning passes only; `--gpu-cap-gb`
caps what torch may allocate on the GPU (`torch.cuda.set_per_process_memory_fraction`), so that a model
larger than the cap shows the offload path on any card. `scripts/gpu_checks.sh` runs the full-size
checks on a lent GPU (two calls of the device tool).

    python scripts/bench_prune.py [--model llama|blip2_t5|llava_15_7b|qwen2_vl_7b|qwen2_5_vl_7b|internvl3_8b|
                                           gemma3_4b|llava_onevision_7b] [--blocks 2] [--samples 16]
                                   [--out bench.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from instrumentation import plain_forwards  # noqa: E402
from PIL import Image  # noqa: E402

from ecoflap_exp.allocation.base import Groups  # noqa: E402
from ecoflap_exp.allocation.waterfill import WaterFilling  # noqa: E402
from ecoflap_exp.models.adapter import ModelAdapter  # noqa: E402
from ecoflap_exp.models.blip2 import Blip2Adapter  # noqa: E402
from ecoflap_exp.models.causal_lm import CausalLMAdapter  # noqa: E402
from ecoflap_exp.models.gemma3 import Gemma3Adapter  # noqa: E402
from ecoflap_exp.models.internvl import InternVLAdapter  # noqa: E402
from ecoflap_exp.models.llava import LlavaAdapter  # noqa: E402
from ecoflap_exp.models.llava_onevision import LlavaOnevisionAdapter  # noqa: E402
from ecoflap_exp.models.qwen2_5_vl import Qwen2_5_VLAdapter  # noqa: E402
from ecoflap_exp.models.qwen2_vl import Qwen2VLAdapter  # noqa: E402
from ecoflap_exp.models.seam import Batch, Tower  # noqa: E402
from ecoflap_exp.pruning.engine import SequentialEngine  # noqa: E402
from ecoflap_exp.pruning.magnitude import MagnitudePruner  # noqa: E402
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner  # noqa: E402
from ecoflap_exp.pruning.wanda import WandaPruner  # noqa: E402
from ecoflap_exp.scoring.first import FirstOrderScorer  # noqa: E402
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer  # noqa: E402
from ecoflap_exp.walk import walk_tower  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.pruning.test_sparsegpt import ist_fasterprune  # noqa: E402  (the reference's code, as the tests transcribe it)

PRUNERS = {"wanda": WandaPruner, "sparsegpt": SparseGPTPruner, "magnitude": MagnitudePruner}
CAPTIONS = ["a man riding a horse on a sunny beach", "two dogs playing with a red ball in the park",
            "a plate of pasta with tomato sauce", "an old stone bridge over a river at dusk"]


class LeadingBlocksScored:
    """Mixed into an adapter class: the same model, but while `scored` is set only the first
    `scored` blocks of each tower are listed, so the zeroth-order scorer perturbs only those
    (every block still runs)."""

    scored: int | None = None

    def all_towers(self) -> list[Tower]:
        towers = super().all_towers()  # built anew on every call, so trimming them here is local
        for tower in towers:
            tower.blocks = tower.blocks[: self.scored] if self.scored else tower.blocks
        return towers


def scored_leading(adapter_class: type[ModelAdapter]) -> type[ModelAdapter]:
    return type(f"LeadingBlocksScored{adapter_class.__name__}", (LeadingBlocksScored, adapter_class), {})


#: the chat VLMs: adapter class, architecture, image side, and the layer counts of `--blocks` blocks
#: per tower (LLaVA-1.5 reads its ViT's second-to-last layer, so it gets one layer more)
CHAT_VLMS = {
    "llava_15_7b": (LlavaAdapter, 336, lambda n: {"vision_config": {"num_hidden_layers": n + 1},
                                                  "text_config": {"num_hidden_layers": n}}),
    "qwen2_vl_7b": (Qwen2VLAdapter, 336, lambda n: {"vision_config": {"depth": n},
                                                    "text_config": {"num_hidden_layers": n}}),
    # the last ViT block with full attention, the others windowed (the released model: 7, 15, 23, 31 of 32)
    "qwen2_5_vl_7b": (Qwen2_5_VLAdapter, 336, lambda n: {
        "vision_config": {"depth": n, "fullatt_block_indexes": [n - 1]}, "text_config": {"num_hidden_layers": n}}),
    # one 448 px tile per square image
    "internvl3_8b": (InternVLAdapter, 448, lambda n: {"vision_config": {"num_hidden_layers": n},
                                                      "text_config": {"num_hidden_layers": n}}),
    # the last language layer global, the others sliding-window (the released model: every sixth global)
    "gemma3_4b": (Gemma3Adapter, 896, lambda n: {
        "vision_config": {"num_hidden_layers": n},
        "text_config": {"num_hidden_layers": n, "layer_types": ["sliding_attention"] * (n - 1) + ["full_attention"]}}),
    # a square image: the whole-image crop and one grid crop (2 x 729 patches)
    "llava_onevision_7b": (LlavaOnevisionAdapter, 384, lambda n: {"vision_config": {"num_hidden_layers": n},
                                                                  "text_config": {"num_hidden_layers": n}}),
}
QUESTIONS = ["What is the man doing?", "How many dogs are there?", "What is on the plate?", "When was this taken?"]


def build(args: argparse.Namespace) -> tuple[ModelAdapter, list[Batch]]:
    full = args.blocks == 0  # the released model's own layer counts
    if args.model == "llama":
        adapter = CausalLMAdapter(arch="llama_7b", init="random", tokenizer="bytes", dtype=args.dtype,
                                  arch_overrides={} if full else {"num_hidden_layers": args.blocks})
        ids = torch.randint(3, 259, (args.samples, args.seqlen), generator=torch.Generator().manual_seed(0))
        samples = list(ids)
    elif args.model in CHAT_VLMS:
        adapter_class, side, layers = CHAT_VLMS[args.model]
        extra = {"max_pixels": side * side} if issubclass(adapter_class, Qwen2VLAdapter) else {}
        adapter = scored_leading(adapter_class)(arch=args.model, init="random", tokenizer="bytes", dtype=args.dtype,
                                                arch_overrides={} if full else layers(args.blocks), **extra)
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (args.samples, side, side, 3), generator=generator, dtype=torch.uint8)
        samples = [(Image.fromarray(p.numpy()), (("human", QUESTIONS[i % 4]), ("gpt", CAPTIONS[i % 4])))
                   for i, p in enumerate(pixels)]
    else:
        adapter = scored_leading(Blip2Adapter)(
            arch="blip2_flan_t5_xl", init="random", tokenizer="bytes", precision=args.dtype,
            arch_overrides={} if full else {"vision_config": {"num_hidden_layers": args.blocks},
                                            "text_config": {"num_layers": args.blocks,
                                                            "num_decoder_layers": args.blocks}})
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (args.samples, 224, 224, 3), generator=generator, dtype=torch.uint8)
        samples = [(Image.fromarray(p.numpy()), CAPTIONS[i % len(CAPTIONS)]) for i, p in enumerate(pixels)]
    if args.device.startswith("cuda") and not args.offload:
        adapter.to(args.device)
    return adapter, [adapter.collate(samples[i : i + args.batch]) for i in range(0, args.samples, args.batch)]


def ist_add_batch(state: dict[str, Any], inp: torch.Tensor) -> None:
    """IST-DASLab's `SparseGPT.add_batch`: a running mean of 2 x x^T over batch entries."""
    inp = inp.unsqueeze(0) if inp.dim() == 2 else inp
    entries = inp.shape[0]
    inp = inp.reshape(-1, inp.shape[-1]).t()
    state["H"] *= state["n"] / (state["n"] + entries)
    state["n"] += entries
    inp = math.sqrt(2 / state["n"]) * inp.float()
    state["H"] += inp.matmul(inp.t())


def relative_error(dense: torch.Tensor, pruned: torch.Tensor, H: torch.Tensor, rows: int = 128) -> float:
    """tr(dW H dW^T) / tr(W H W^T) over the first `rows` rows (each row's error is its own): the
    matrix's output error on its calibration inputs."""
    dW, W = (dense[:rows] - pruned[:rows]).float(), dense[:rows].float()
    return float((dW @ H * dW).sum() / (W @ H * W).sum())


def sparsegpt_pass(adapter: ModelAdapter, batches: list[Batch], name: str, args: argparse.Namespace
                   ) -> dict[str, Any]:
    """Our SparseGPT (reference counting) or IST-DASLab's, block by block along the same walk.
    `prune_seconds` is each side's own work on a block (statistics pass and pruning); the
    Hessians behind the error figure are gathered outside it."""
    torch.set_grad_enabled(False)
    digest, errors, seconds = hashlib.sha1(), [], 0.0
    engine = SequentialEngine(adapter, SparseGPTPruner(count="reference"), {b.name: 0.5 for b in adapter.blocks()},
                              device=args.device)
    for tower in adapter.towers():
        for block, inputs in walk_tower(adapter, tower, batches, torch.device(args.device)):
            start = time.process_time()
            states = {m: {"H": torch.zeros(m.shape[1], m.shape[1], device=args.device), "n": 0}
                      for m in block.matrices}
            handles = [m.input_module.register_forward_hook(
                lambda _mod, inp, _out, st=states[m]: ist_add_batch(st, inp[0].data)) for m in block.matrices]
            for inp in inputs:
                tower.run_block(block, inp)
            for h in handles:
                h.remove()
            dense = {m: m.weight.detach().clone() for m in block.matrices}
            if name == "ist_sparsegpt":
                for m in block.matrices:
                    weight = m.input_module.weight
                    weight.data = ist_fasterprune(weight.data, states[m]["H"], 0.5, blocksize=128)
                seconds += time.process_time() - start
            else:
                start = time.process_time()
                engine.prune_block(tower, block, inputs)
                seconds += time.process_time() - start
            for m in block.matrices:
                digest.update((m.weight == 0).cpu().numpy().tobytes())
                errors.append(relative_error(dense[m], m.weight.detach(), states[m]["H"]))
    return {"masks_sha1": digest.hexdigest(), "relative_error": sum(errors), "prune_cpu_seconds": seconds}


def prune(adapter: ModelAdapter, batches: list[Batch], name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One pass along the run's path: block scores (zeroth, first) or none, the plan, the engine."""
    if name in PRUNERS:
        plan = {block.name: 0.5 for block in adapter.blocks()}
        SequentialEngine(adapter, PRUNERS[name](), plan, device=args.device, offload=args.offload).run(batches)
        return {}
    if name in ("sparsegpt_reference_count", "ist_sparsegpt"):
        return sparsegpt_pass(adapter, batches, name, args)
    if name == "zeroth":
        adapter.scored = args.zeroth_blocks
        scores = ZerothOrderScorer(num_samples=args.zeroth_samples).scores(adapter, batches)
        adapter.scored = None  # the plan and the pruning cover every block
        scores.update({b.name: 0.0 for b in adapter.blocks() if b.name not in scores})
    else:
        scores = FirstOrderScorer().scores(adapter, batches)
    plan = WaterFilling().plan(scores, Groups.of(adapter), 0.5, 0.6)
    SequentialEngine(adapter, WandaPruner(), plan, device=args.device).run(batches)
    return {}


def run_pass(name: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda" and args.gpu_cap_gb:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_cap_gb * 2**30 / total), device)
    adapter, batches = build(args)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    extra: dict[str, Any] = {}
    if name == "forward":
        plain_forwards(adapter, batches)
    else:
        extra = prune(adapter, batches, name, args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # CPU time (all threads) as well as wall time: the one that holds when the machine is shared
    return {"pass": name, "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_gb": peak, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["llama", "blip2_t5", *CHAT_VLMS], default="llama")
    parser.add_argument("--blocks", type=int, default=2, help="blocks per tower (0: the released model's)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--offload", action="store_true", help="the model stays on the CPU, each block visits --device")
    parser.add_argument("--gpu-cap-gb", type=float, help="the most torch may allocate on the GPU, in GB")
    parser.add_argument("--seqlen", type=int, default=512, help="LLaMA tokens per sample")
    parser.add_argument("--zeroth-samples", type=int, default=32, help="zeroth-order samples (the paper's 32)")
    parser.add_argument("--zeroth-blocks", type=int, default=None, help="perturb only this many blocks per tower")
    parser.add_argument("--passes", help="default: forward,wanda,sparsegpt,magnitude (llama); "
                                         "forward,wanda,zeroth,first (the VLMs)")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_pass(args.child, args)))
        return
    default = "forward,wanda,sparsegpt,magnitude" if args.model == "llama" else "forward,wanda,zeroth,first"
    passes = (args.passes or default).split(",")
    if args.offload and set(passes) - set(PRUNERS):
        parser.error(f"--offload times the one-shot pruners only ({', '.join(PRUNERS)}), not "
                     f"{', '.join(sorted(set(passes) - set(PRUNERS)))}; e.g. --passes wanda")
    if args.gpu_cap_gb is not None and not args.device.startswith("cuda"):
        parser.error(f"--gpu-cap-gb {args.gpu_cap_gb} caps a GPU's memory; add --device cuda")
    if args.blocks < 0:
        parser.error(f"--blocks {args.blocks}: a number of blocks per tower, or 0 for the released model's")
    forwarded = [f"--{key.replace('_', '-')}" if value is True else f"--{key.replace('_', '-')}={value}"
                 for key, value in vars(args).items()
                 if key not in ("out", "child", "passes") and value is not None and value is not False]
    rows = []
    for name in passes:
        out = subprocess.run([sys.executable, __file__, *forwarded, "--child", name], capture_output=True, text=True,
                             check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    base = next((r for r in rows if r["pass"] == "forward"), rows[0])
    memory = "peak GPU GB" if args.device.startswith("cuda") else "peak RSS GB"
    print(f"{args.model} x {args.blocks or 'every'} blocks per tower, {args.samples} samples in batches of "
          f"{args.batch}, {args.dtype}, {args.device}")
    print(f"{'pass':10} {'seconds':>9} {'CPU s':>9} {'x forward':>10} {memory:>12} {'x forward':>10}")
    for r in rows:
        r["time_x_forward"] = r["seconds"] / base["seconds"]
        r["cpu_x_forward"] = r["cpu_seconds"] / base["cpu_seconds"]
        r["memory_x_forward"] = r["peak_gb"] / base["peak_gb"]
        print(f"{r['pass']:10} {r['seconds']:9.2f} {r['cpu_seconds']:9.2f} {r['cpu_x_forward']:10.2f} "
              f"{r['peak_gb']:12.2f} {r['memory_x_forward']:10.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
