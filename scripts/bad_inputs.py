"""Run each bad input of README's troubleshooting table through run.py (the default digits model,
one torch thread, a fresh results folder) and print the table: what the user sees, the exit
status, the seconds it took, and whether it left a record.

    python scripts/bad_inputs.py [--out bad_inputs.md]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (what is wrong, the command line's overrides)
BAD_INPUTS = [
    ("sparsity outside [0, 1)", ["sparsity=1.5"]),
    ("sparsity negative", ["sparsity=-0.1"]),
    ("sparsity 1", ["sparsity=1.0"]),
    ("sparsity not a number", ["sparsity=abc"]),
    ("a negative tower-output budget", ["cache_gb=-1"]),
    ("N:M with N >= M", ["nm=4:2"]),
    ("N:M not of the form N:M", ["nm=2-4"]),
    ("explicit sparsity beside N:M", ["nm=2:4", "sparsity=0.3"]),
    ("N:M with a non-uniform scorer", ["nm=2:4", "scorer=zeroth"]),
    ("unknown model", ["model=llama_huge"]),
    ("unknown pruner", ["pruner=obs"]),
    ("a key nothing reads", ["+foo=1"]),
    ("a typo in a plugin option", ["scorer=zeroth", "+scorer.epz=0.001"]),
    ("scorer granularity typo", ["scorer=zeroth", "scorer.granularity=blok"]),
    ("first-order granularity typo", ["scorer=first", "scorer.granularity=blok"]),
    ("pruner group typo", ["pruner.group=col"]),
    ("pruner count typo", ["pruner.count=approx"]),
    ("allocation scope typo", ["allocation.scope=tower"]),
    ("global base score typo", ["allocation=global", "scorer=uniform", "allocation.use_id=false",
                                "allocation.base_score=snip"]),
    ("ID estimator typo", ["scorer=id", "scorer.estimator=levina"]),
    ("model dtype typo", ["model.dtype=float64"]),
    ("eps not positive", ["scorer=zeroth", "scorer.eps=0"]),
    ("scorer samples 0", ["scorer=zeroth", "scorer.num_samples=0"]),
    ("scorer samples below one batch", ["scorer=zeroth", "scorer.num_samples=1"]),
    ("calibration samples 0", ["calib.num_samples=0"]),
    ("calibration batch larger than the set", ["calib.num_samples=4", "calib.batch_size=8"]),
    ("more calibration samples than the source holds", ["calib.num_samples=5000"]),
    ("max_sparsity below sparsity", ["max_sparsity=0.3"]),
    ("device=cuda without CUDA", ["device=cuda"]),
    ("unknown device", ["device=tpu"]),
    ("wrong tower names", ["model.prune_towers=[image]"]),
    ("a suite the model cannot run", ["suite=blip2_paper"]),
    ("a missing benchmark file", ["model=llama_tiny", "calib=shipped_text", "suite=llama"]),
    ("a missing calibration file", ["model=llama_tiny", "calib=c4", "suite=shipped_text"]),
    ("a missing local checkpoint", ["model=llama_tiny", "calib=shipped_text", "suite=shipped_text",
                                    "model.init=pretrained", "model.checkpoint=/nowhere/llama"]),
    ("a hub checkpoint not cached, offline", ["model=llama_7b", "calib=shipped_text", "suite=shipped_text"]),
    ("a companion checkpoint not cached, offline", ["model=blip2_t5_tiny", "suite=blip2_paper"]),
    ("too few points for the block TwoNN", ["scorer=id", "scorer.estimator=twonn_blocks", "calib.num_samples=16"]),
    ("a results folder that is a file", ["paths.results_dir=/etc/hostname"]),
]


def shown(text: str) -> str:
    """Our `error:` line, else the first line (Hydra's own message for an unknown config option)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("error: ")), lines[0] if lines else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    rows = ["| bad input | overrides | what the user sees | exit | s | record |", "|---|---|---|---|---|---|"]
    clear = 0
    with tempfile.TemporaryDirectory() as tmp:
        for what, overrides in BAD_INPUTS:
            runs = Path(tmp) / "results" / "runs"
            before = set(runs.glob("*.json")) if runs.is_dir() else set()
            start = time.perf_counter()
            device = [] if any(o.startswith("device=") for o in overrides) else ["device=cpu"]
            done = subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides, f"paths.root={tmp}", *device],
                                  capture_output=True, text=True, cwd=tmp, env=env, timeout=900)
            seconds = time.perf_counter() - start
            after = set(runs.glob("*.json")) if runs.is_dir() else set()
            seen = shown(done.stderr)
            one_line = seen.startswith("error: ") and "Traceback" not in done.stderr
            clear += one_line
            seen = seen.replace("|", "\\|")
            rows.append(f"| {what} | `{' '.join(overrides)}` | {seen} | {done.returncode} | {seconds:.1f} | "
                        f"{'yes' if after - before else 'no'} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    summary = f"{clear} of {len(BAD_INPUTS)} bad inputs end in one `error:` line"
    print(f"\n{table}\n\n{summary}")
    if args.out:
        args.out.write_text(f"{table}\n\n{summary}\n")


if __name__ == "__main__":
    main()
