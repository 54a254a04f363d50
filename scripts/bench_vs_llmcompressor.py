"""Our one-shot pass against llm-compressor's, side by side on the same random LLaMA and calibration.

    python scripts/bench_vs_llmcompressor.py --width 2048
    python scripts/bench_vs_llmcompressor.py --width 2048 --breakdown   # where our pass's memory goes

Builds (once) a separate venv holding llm-compressor 0.14.0 (`--venv`, default .venv-llmcompressor/;
its `pip freeze` goes to <out>/pins.txt, beside results.json and table.md), builds a random LLaMA
(`--blocks` decoder layers, width `--width`, LLaMA's 2.6875 MLP ratio, vocab 32000) saved in
safetensors under `--work` with its calibration and held-out token ids, then prunes it with each
pruner on each side, every run in its own process with one thread: ours with ecoflap_exp.prune
(count=reference: llm-compressor's counting rule), llm-compressor's with `oneshot` and its
WandaPruningModifier / SparseGPTModifier over the decoder layers (its sequential pipeline). Each
child reports the CPU time (time.process_time) and wall time of the pruning call only, its RSS once
the model is loaded and its peak RSS; the parent compares the masks per matrix and the final logits on
the held-out sequences against the dense model's, and prints a markdown table. A third child runs a
plain forward of the same calibration (one sequence a call, no gradients), the floor any pass that
runs the model over its calibration sits on; the table gives each side's peak over that one.

`--breakdown` adds a thread to our child that samples the resident set every millisecond and files
each sample under the innermost ecoflap_exp function then running: the peak each step of our pass
reaches above the loaded model, written to <out>/breakdown.md (the sampling costs CPU time, so a
breakdown run's times are not the table's).

The script runs under llm-compressor's venv too (`--child llmcompressor`), so it imports only the
standard library at the top: ecoflap_exp is not installed there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LLMCOMPRESSOR = "llmcompressor==0.14.0"
PRUNERS = ("wanda", "sparsegpt")
SIDES = ("ours", "llmcompressor")
FORWARD = "forward"  # the child that only runs the model over the calibration
# LLaMA's MLP width over its hidden width (11008 / 4096), rounded to a multiple of 64 as LLaMA's are.
MLP_RATIO = 2.6875
VOCAB = 32000
# Both sides' settings, as llm-compressor 0.14 defaults them: SparseGPT's 128-column blocks and 1%
# dampening of the mean Hessian diagonal, applied always (our damping=ist).
BLOCK_SIZE = 128
DAMPENING = 0.01


def one_thread_env() -> dict[str, str]:
    """The environment of a child: one BLAS/OpenMP thread, no network, no telemetry."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "PYTHONPATH": ""}


def rss_gb() -> float:
    """The process's resident set now (VmRSS), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class RssByFunction:
    """While open, a thread samples the resident set every millisecond and keeps, for each
    innermost ecoflap_exp function the main thread is in, the highest sample above `base` GB."""

    def __init__(self, base: float):
        self.base = base
        self.peaks: dict[str, float] = {}
        self.running = False
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.main = threading.main_thread().ident

    def where(self) -> str:
        frame = sys._current_frames().get(self.main)
        ours = [f for f in traceback.extract_stack(frame) if f"{os.sep}ecoflap_exp{os.sep}" in f.filename]
        if not ours:
            return "(outside ecoflap_exp)"
        parts = Path(ours[-1].filename).with_suffix("").parts
        return f"{'.'.join(parts[parts.index('ecoflap_exp') + 1 :])}.{ours[-1].name}"  # e.g. pruning.masks.smallest

    def sample(self) -> None:
        while self.running:
            added = rss_gb() - self.base
            where = self.where()
            self.peaks[where] = max(self.peaks.get(where, added), added)
            time.sleep(0.001)

    def __enter__(self) -> RssByFunction:
        self.running = True
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


# --- the parent: venv, model, children, comparison -------------------------------------------------


def ensure_venv(venv: Path, pins: Path) -> Path:
    """llm-compressor's own venv (created and filled if missing) and its pins; its python."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # torch comes from this machine's configured index (pip config), as llm-compressor's pin allows
        subprocess.run([str(python), "-m", "pip", "install", LLMCOMPRESSOR], check=True)
    frozen = subprocess.run([str(python), "-m", "pip", "freeze"], check=True, capture_output=True, text=True)
    pins.parent.mkdir(parents=True, exist_ok=True)
    pins.write_text(frozen.stdout)
    return python


def word_level_tokenizer() -> Any:
    """A tokenizer of VOCAB made-up words, built here: llm-compressor's oneshot loads a processor from
    the model's folder whenever it is given a dataset, though our calibration arrives as token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0", pad_token="w0", eos_token="w1",
                                   bos_token="w2")


def build_model(folder: Path, width: int, blocks: int, samples: int, seqlen: int, held_out: int, seed: int) -> None:
    """The random LLaMA (safetensors), its calibration and held-out ids and the dense model's held-out
    logits, written once per shape: every run of both sides reads these same files."""
    if (folder / "dense_logits.pt").exists():
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    heads = width // 128  # LLaMA's 128-wide heads
    config = LlamaConfig(hidden_size=width, intermediate_size=int(width * MLP_RATIO) // 64 * 64,
                         num_hidden_layers=blocks, num_attention_heads=heads, num_key_value_heads=heads,
                         vocab_size=VOCAB, max_position_embeddings=max(2048, seqlen), tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    word_level_tokenizer().save_pretrained(folder)
    ids = torch.randint(0, VOCAB, (samples + held_out, seqlen), generator=torch.Generator().manual_seed(seed + 1))
    torch.save(ids[:samples].clone(), folder / "calibration.pt")
    torch.save(ids[samples:].clone(), folder / "held_out.pt")
    with torch.no_grad():
        torch.save(model(ids[samples:]).logits, folder / "dense_logits.pt")


def run_child(python: Path, side: str, pruner: str | None, folder: Path, sparsity: float,
              breakdown: bool = False) -> dict[str, Any]:
    """One side's pruning (or the plain forward: pruner None) in its own one-thread process; its
    measurements."""
    result = folder / f"{side}_{pruner}.json" if pruner else folder / f"{side}.json"
    command = [str(python), str(Path(__file__).resolve()), "--child", side, "--folder", str(folder),
               "--sparsity", str(sparsity)] + (["--pruner", pruner] if pruner else [])
    command += ["--breakdown"] if breakdown else []
    done = subprocess.run(command, env=one_thread_env(), cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the {side} {pruner} child failed (exit {done.returncode}); its stderr is above")
    return json.loads(result.read_text())


def compare(folder: Path, pruner: str) -> dict[str, Any]:
    """Mask agreement per matrix and overall, and each side's relative error of the held-out logits."""
    import torch

    masks = {side: torch.load(folder / f"{side}_{pruner}_masks.pt") for side in SIDES}
    if masks["ours"].keys() != masks["llmcompressor"].keys():
        raise SystemExit(f"the sides pruned different matrices: {sorted(masks['ours'])} vs "
                         f"{sorted(masks['llmcompressor'])}")
    per_matrix = {name: float((masks["ours"][name] == masks["llmcompressor"][name]).float().mean())
                  for name in masks["ours"]}
    equal = sum(int((masks["ours"][n] == masks["llmcompressor"][n]).sum()) for n in masks["ours"])
    total = sum(m.numel() for m in masks["ours"].values())
    dense = torch.load(folder / "dense_logits.pt")
    errors = {side: float((torch.load(folder / f"{side}_{pruner}_logits.pt") - dense).norm() / dense.norm())
              for side in SIDES}
    sparsities = {side: sum(int(m.sum()) for m in masks[side].values()) / total for side in SIDES}
    # Wanda's input statistics: which columns' squared norms differ between the sides, and by how much
    statistics = {side: torch.load(folder / f"{side}_{pruner}_statistics.pt") for side in SIDES}
    differing = {name: {"columns": int((ours != statistics["llmcompressor"][name]).sum()), "of": ours.numel(),
                        "max_abs": float((ours - statistics["llmcompressor"][name]).abs().max())}
                 for name, ours in statistics["ours"].items()}
    return {"agreement": equal / total, "per_matrix": per_matrix, "logit_error": errors, "sparsity": sparsities,
            "statistics_differing": differing}


def statistics_note(rows: list[dict[str, Any]]) -> str:
    """Per Wanda row, the matrices whose input statistics differ between the sides."""
    lines = []
    for row in rows:
        if row["statistics_differing"]:
            differing = [f"{name.removeprefix('model.layers.').removesuffix('.weight')} {d['columns']}/{d['of']} "
                         f"(max {d['max_abs']:.2g})" for name, d in row["statistics_differing"].items() if d["columns"]]
            lines.append(f"- width {row['width']}, {row['pruner']}: Wanda statistics equal bit for bit in "
                         f"{len(row['statistics_differing']) - len(differing)} of {len(row['statistics_differing'])} "
                         f"matrices; columns that differ: {', '.join(differing) or 'none'}")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| width | pruner | side | CPU s | wall s | RSS loaded GB | peak RSS GB | added GB | peak / forward's "
             "| sparsity | logit rel. error | mask agreement |", "|" + "---|" * 12]
    widths_done = set()
    for row in rows:
        run = row[FORWARD]
        if row["width"] not in widths_done:  # the plain forward once per width, every row's denominator
            widths_done.add(row["width"])
            lines.append(f"| {row['width']} | none | {FORWARD} | {run['cpu_s']:.1f} | {run['wall_s']:.1f} "
                         f"| {run['rss_loaded_gb']:.2f} | {run['peak_rss_gb']:.2f} "
                         f"| {run['peak_rss_gb'] - run['rss_loaded_gb']:.2f} | 1.00 | | | |")
        for side in SIDES:
            run = row[side]
            lines.append(f"| {row['width']} | {row['pruner']} | {side} | {run['cpu_s']:.1f} | {run['wall_s']:.1f} "
                         f"| {run['rss_loaded_gb']:.2f} | {run['peak_rss_gb']:.2f} "
                         f"| {run['peak_rss_gb'] - run['rss_loaded_gb']:.2f} "
                         f"| {run['peak_rss_gb'] / row[FORWARD]['peak_rss_gb']:.2f} | {row['sparsity'][side]:.4f} "
                         f"| {row['logit_error'][side]:.4f} | {row['agreement']:.6f} |")
    return "\n".join(lines)


def breakdown_table(rows: list[dict[str, Any]], top: int = 8) -> str:
    """Per width and pruner, the functions of our pass whose samples reached highest above the loaded
    model (their callers show the same level while they run: read it as a profile, not a sum)."""
    lines = []
    for row in rows:
        peaks = sorted(row["ours"]["breakdown"].items(), key=lambda item: -item[1])[:top]
        added = {side: row[side]["peak_rss_gb"] - row[side]["rss_loaded_gb"] for side in ("ours", FORWARD)}
        lines += [f"### width {row['width']}, {row['pruner']}: peak {added['ours']:.2f} GB above the loaded model "
                  f"(plain forward: {added[FORWARD]:.2f})", "",
                  "| innermost ecoflap_exp function | highest sample, GB above loaded |", "|---|---|"]
        lines += [f"| `{where}` | {added:.3f} |" for where, added in peaks] + [""]
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> None:
    out = Path(args.out)
    python = ensure_venv(Path(args.venv), out / "pins.txt")
    rows = []
    for width in args.width:
        folder = Path(args.work) / f"llama_w{width}_b{args.blocks}_{args.samples}x{args.seqlen}"
        build_model(folder, width, args.blocks, args.samples, args.seqlen, args.held_out, args.seed)
        forward = run_child(Path(sys.executable), FORWARD, None, folder, args.sparsity)
        for pruner in args.pruners:
            runs = {"ours": run_child(Path(sys.executable), "ours", pruner, folder, args.sparsity, args.breakdown),
                    "llmcompressor": run_child(python, "llmcompressor", pruner, folder, args.sparsity)}
            rows.append({"width": width, "pruner": pruner, FORWARD: forward, **runs, **compare(folder, pruner)})
            print(json.dumps(rows[-1], indent=1), file=sys.stderr)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "table.md").write_text(table(rows) + "\n\n" + statistics_note(rows) + "\n")
    print(table(rows) + "\n\n" + statistics_note(rows))
    if args.breakdown:
        (out / "breakdown.md").write_text(breakdown_table(rows))
        print(breakdown_table(rows))


# --- the children: one side's pruning each ---------------------------------------------------------


def load(folder: Path) -> tuple[Any, Any]:
    """The saved model (float32, eval) and its calibration ids."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # the weights arrive memory-mapped and page in when first read: read them all now, so that the RSS
    # once loaded holds the whole model and the pruning call's added memory is its own
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.sum()
    return model, torch.load(folder / "calibration.pt")


def prune_ours(model: Any, ids: Any, pruner: str, sparsity: float) -> dict[str, Any]:
    """Our pass; for Wanda, the input statistics each matrix was pruned with, by parameter name."""
    from ecoflap_exp import prune
    from ecoflap_exp.pruning.wanda import WandaPruner

    names = {p.data_ptr(): name for name, p in model.named_parameters()}
    seen: dict[str, Any] = {}
    pruning = WandaPruner.prune

    def keeping_statistics(self: WandaPruner, weight: Any, stats: Any, *args: Any) -> Any:
        seen[names[weight.data_ptr()]] = stats.sq_norms.clone()
        return pruning(self, weight, stats, *args)

    WandaPruner.prune = keeping_statistics  # type: ignore[method-assign]
    overrides = ["pruner.count=reference"]  # llm-compressor's rule: int(cols x p) per row / "<= threshold" per block
    if pruner == "sparsegpt":
        overrides += [f"pruner.blocksize={BLOCK_SIZE}", f"pruner.percdamp={DAMPENING}", "pruner.damping=ist"]
    # one sequence a batch, as llm-compressor's calibration loader (batch_size=1)
    prune(model, [ids[i : i + 1] for i in range(len(ids))], pruner=pruner, sparsity=sparsity, batch_size=1,
          overrides=overrides)
    return seen


def prune_llmcompressor(model: Any, ids: Any, pruner: str, sparsity: float) -> dict[str, Any]:
    """llm-compressor's pass; for Wanda, the input statistics (its row scalars) each matrix was pruned
    with, by parameter name."""
    import llmcompressor.modifiers.pruning.wanda.base as wanda_base
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    names = {module: f"{name}.weight" for name, module in model.named_modules()}
    seen: dict[str, Any] = {}
    sparsify = wanda_base.sparsify_weight

    def keeping_statistics(module: Any, row_scalars_dict: dict[Any, Any], **kwargs: Any) -> Any:
        seen[names[module]] = row_scalars_dict[module].clone()
        return sparsify(module=module, row_scalars_dict=row_scalars_dict, **kwargs)

    wanda_base.sparsify_weight = keeping_statistics

    # the decoder layers: their Linear matrices are pruned, lm_head (outside them) is not
    layers = [r"re:model\.layers\.\d+$"]
    modifier = (WandaPruningModifier(sparsity=sparsity, mask_structure="0:0", targets=layers) if pruner == "wanda"
                else SparseGPTModifier(sparsity=sparsity, mask_structure="0:0", targets=layers,
                                       block_size=BLOCK_SIZE, dampening_frac=DAMPENING))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    oneshot(model=model, dataset=data, recipe=[modifier], num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, batch_size=1, pipeline="sequential")
    return seen


def plain_forward(model: Any, ids: Any) -> None:
    """The model over the calibration as the pruning sees it: one sequence a call, no gradients."""
    import torch

    with torch.no_grad():
        for i in range(len(ids)):
            model(ids[i : i + 1])


def child(args: argparse.Namespace) -> None:
    import torch

    # each side's libraries are imported first, so that neither the RSS once loaded nor the pruning
    # call's times count them; the plain forward imports ours too, so that its peak and ours hold the
    # same libraries and their ratio is the pass's own
    if args.child in ("ours", FORWARD):
        import ecoflap_exp.api  # noqa: F401
    else:
        import datasets  # noqa: F401
        import llmcompressor  # noqa: F401
    folder = Path(args.folder)
    model, ids = load(folder)
    loaded = rss_gb()
    sampler = RssByFunction(loaded) if args.breakdown else None
    start, cpu_start = time.perf_counter(), time.process_time()
    statistics = None
    with sampler or contextlib.nullcontext():
        if args.child == FORWARD:
            plain_forward(model, ids)
        else:
            statistics = (prune_ours if args.child == "ours" else prune_llmcompressor)(model, ids, args.pruner,
                                                                                       args.sparsity)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = peak_rss_gb()
    measured = {"cpu_s": cpu, "wall_s": wall, "rss_loaded_gb": loaded, "peak_rss_gb": peak,
                "threads": torch.get_num_threads(), "torch": torch.__version__,
                "breakdown": sampler.peaks if sampler else None}
    if args.child == FORWARD:
        (folder / f"{FORWARD}.json").write_text(json.dumps(measured))
        return
    # masks of the decoder layers' 2-D weights, named by the model's own parameter names on both sides
    masks = {name: (p == 0).cpu() for name, p in model.named_parameters() if ".layers." in name and p.dim() == 2}
    torch.save(masks, folder / f"{args.child}_{args.pruner}_masks.pt")
    torch.save(statistics, folder / f"{args.child}_{args.pruner}_statistics.pt")
    with torch.no_grad():
        torch.save(model(torch.load(folder / "held_out.pt")).logits, folder / f"{args.child}_{args.pruner}_logits.pt")
    (folder / f"{args.child}_{args.pruner}.json").write_text(json.dumps(measured))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, nargs="+", default=[2048], help="hidden widths (multiples of 128)")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--held-out", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--pruners", nargs="+", choices=PRUNERS, default=list(PRUNERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--venv", default=str(ROOT / ".venv-llmcompressor"))
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_vs_llmcompressor"),
                        help="where pins.txt and results.json go")
    # the models (1 GB at width 2048), ids, logits and masks: under results/models/, which git ignores
    parser.add_argument("--work", default=str(ROOT / "results" / "models" / "bench_vs_llmcompressor"))
    parser.add_argument("--breakdown", action="store_true",
                        help="sample our pass's memory per function (costs CPU time) into <out>/breakdown.md")
    parser.add_argument("--child", choices=(*SIDES, FORWARD), help=argparse.SUPPRESS)
    parser.add_argument("--pruner", choices=PRUNERS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bad = ([f"--width {w}: not a positive multiple of 128 (LLaMA's head width); use e.g. 2048"
            for w in args.width if w <= 0 or w % 128]
           + [f"--{name} {getattr(args, name.replace('-', '_'))}: must be at least 1"
              for name in ("blocks", "samples", "seqlen", "held-out") if getattr(args, name.replace("-", "_")) < 1]
           + ([f"--sparsity {args.sparsity}: must lie in (0, 1); use e.g. 0.5"] if not 0 < args.sparsity < 1 else []))
    if bad:
        parser.error(bad[0])
    return args


if __name__ == "__main__":
    arguments = parse()
    child(arguments) if arguments.child else parent(arguments)
