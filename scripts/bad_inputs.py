"""Run each bad input of docs/troubleshooting.md through run.py (the default digits model, one torch
thread, a fresh results folder) and print the table: what the user sees, the exit status, the
seconds it took, whether it left a record and whether it ended as listed.

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

#: (what is wrong, the command line's overrides, what the `error:` line must say: `<tmp>` is the run's
#: root; Hydra's own message for an unknown config option has no `error:`)
BAD_INPUTS = [
    ("sparsity outside [0, 1)", ["sparsity=1.5"],
     "sparsity=1.5 is not valid: input should be less than 1"),
    ("sparsity negative", ["sparsity=-0.1"],
     "sparsity=-0.1 is not valid: input should be greater than or equal to 0"),
    ("sparsity 1", ["sparsity=1.0"],
     "sparsity=1.0 is not valid: input should be less than 1"),
    ("sparsity not a number", ["sparsity=abc"],
     "sparsity='abc' is not valid: input should be a valid number"),
    ("a negative tower-output budget", ["cache_gb=-1"],
     "cache_gb=-1 is not valid: input should be greater than or equal to 0"),
    ("N:M with N >= M", ["nm=4:2"],
     "nm=4:2: N:M keeps N of every M weights, so it needs 0 < N < M (e.g. 2:4, 4:8)"),
    ("N:M not of the form N:M", ["nm=2-4"],
     "nm='2-4' is not of the form N:M (e.g. nm=2:4)"),
    ("explicit sparsity beside N:M", ["nm=2:4", "sparsity=0.3"],
     "nm=2:4 fixes the sparsity at 0.5, but sparsity=0.3"),
    ("N:M with a non-uniform scorer", ["nm=2:4", "scorer=zeroth"],
     "nm=2:4 fixes every matrix at 0.5"),
    ("unknown model", ["model=llama_huge"],
     "In 'config': Could not find 'model/llama_huge'"),
    ("unknown pruner", ["pruner=obs"],
     "In 'config': Could not find 'pruner/obs'"),
    ("a key nothing reads", ["+foo=1"],
     "foo is not a key anything reads"),
    ("a typo in a plugin option", ["scorer=zeroth", "+scorer.epz=0.001"],
     "scorer.epz is not a key anything reads"),
    ("scorer granularity typo", ["scorer=zeroth", "scorer.granularity=blok"],
     "scorer.granularity='blok' is unknown"),
    ("first-order granularity typo", ["scorer=first", "scorer.granularity=blok"],
     "scorer.granularity='blok' is unknown"),
    ("pruner group typo", ["pruner.group=col"],
     "pruner.group='col' is unknown"),
    ("pruner count typo", ["pruner.count=approx"],
     "pruner.count='approx' is unknown"),
    ("allocation scope typo", ["allocation.scope=tower"],
     "allocation.scope='tower' is unknown"),
    ("global base score typo", ["allocation=global", "scorer=uniform", "allocation.use_id=false",
                                "allocation.base_score=snip"],
     "allocation.base_score='snip' is unknown"),
    ("ID estimator typo", ["scorer=id", "scorer.estimator=levina"],
     "scorer.estimator='levina' is unknown"),
    ("model dtype typo", ["model.dtype=float64"],
     "model.dtype='float64' is unknown"),
    ("eps not positive", ["scorer=zeroth", "scorer.eps=0"],
     "scorer.eps=0 is not valid: input should be greater than 0"),
    ("scorer samples 0", ["scorer=zeroth", "scorer.num_samples=0"],
     "scorer.num_samples=0 is not valid: input should be greater than or equal to 1"),
    ("scorer samples below one batch", ["scorer=zeroth", "scorer.num_samples=1"],
     "scorer.num_samples=1 is not a whole number of calibration batches (calib.batch_size=8)"),
    ("calibration samples 0", ["calib.num_samples=0"],
     "calib.num_samples=0 is not valid: input should be greater than or equal to 1"),
    ("calibration batch larger than the set", ["calib.num_samples=4", "calib.batch_size=8"],
     "calib.num_samples=4 is fewer than one batch (calib.batch_size=8)"),
    ("more calibration samples than the source holds", ["calib.num_samples=5000"],
     "calibration source DigitsCalibration holds 1437 samples, fewer than the 5000 asked for"
     " (calib.num_samples=5000, or the scorer's num_samples)"),
    ("max_sparsity below sparsity", ["max_sparsity=0.3"],
     "max_sparsity=0.3 must lie in [sparsity=0.5, 1]"),
    ("device=cuda without CUDA", ["device=cuda"],
     "device=cuda but no CUDA device is available"),
    ("unknown device", ["device=tpu"],
     "device='tpu' is unknown"),
    ("wrong tower names", ["model.prune_towers=[image]"],
     "model.prune_towers=['image'] must name some of OpenCLIPAdapter's towers: vision, text"),
    ("a suite the model cannot run", ["suite=blip2_paper", "evals.okvqa.lemmatiser=lemminflect"],
     "evals.vqav2 (VQAAccuracy) needs a model with GeneratesFromImages (generate), which OpenCLIPAdapter lacks"),
    ("a missing benchmark file", ["model=llama_tiny", "calib=shipped_text", "suite=llama"],
     "text file '<tmp>/data/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet' does not exist"),
    ("a missing calibration file", ["model=llama_tiny", "calib=c4", "suite=shipped_text"],
     "text file '<tmp>/data/c4/c4-train.00000-of-01024.json.gz' does not exist"),
    ("a missing local checkpoint", ["model=llama_tiny", "calib=shipped_text", "suite=shipped_text",
                                    "model.init=pretrained", "model.checkpoint=/nowhere/llama"],
     "model checkpoint path '/nowhere/llama' does not exist"),
    ("a hub checkpoint not cached, offline", ["model=llama_7b", "calib=shipped_text", "suite=shipped_text"],
     "checkpoint 'huggyllama/llama-7b' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"),
    ("a companion checkpoint not cached, offline", ["model=blip2_t5_tiny", "suite=blip2_paper",
                                                    "evals.okvqa.lemmatiser=lemminflect"],
     "checkpoint 'Salesforce/blip2-flan-t5-xl-coco' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"),
    ("too few points for the block TwoNN", ["scorer=id", "scorer.estimator=twonn_blocks", "calib.num_samples=16"],
     "estimator twonn_blocks splits the samples into up to 20 blocks and needs at least 100 samples (got 16)"),
    ("a results folder that is a file", ["paths.results_dir=/etc/hostname"],
     "the results folder /etc/hostname is not writable (File exists)"),
    # issue 27: values of the wrong type, out of range, NaN, duplicates, empty paths
    ("max_sparsity not a number", ["max_sparsity=abc"],
     "max_sparsity='abc' is not valid: input should be a valid number; e.g. max_sparsity=0.5 or null"),
    ("seed not a number", ["seed=abc"],
     "seed='abc' is not valid: input should be a valid integer; e.g. seed=0"),
    ("seed negative", ["seed=-1"],
     "seed=-1 is not valid: input should be greater than or equal to 0; e.g. seed=0"),
    ("eps not a number", ["scorer=zeroth", "scorer.eps=abc"],
     "scorer.eps='abc' is not valid: input should be a valid number; e.g. scorer.eps=0.001"),
    ("sparsity quoted as a string", ['sparsity="0.5"'],
     "sparsity='0.5' is not valid: input should be a valid number; e.g. sparsity=0.5"),
    ("tower names as a string", ["model.prune_towers=vision"],
     "model.prune_towers='vision' is not valid: input should be a list, not a string;"
     " e.g. model.prune_towers=[a,b] or null"),
    ("a tower named twice", ["model.prune_towers=[vision,vision]"],
     "model.prune_towers=[vision,vision] is not valid: vision named more than once;"
     " e.g. model.prune_towers=[a,b] or null"),
    ("calibration samples fractional", ["calib.num_samples=8.5"],
     "calib.num_samples=8.5 is not valid: input should be a valid integer; e.g. calib.num_samples=128"),
    ("a sequence length of 0", ["model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "calib.seqlen=0"],
     "calib.seqlen=0 is not valid: input should be greater than or equal to 1; e.g. calib.seqlen=1"),
    ("a negative eval limit", ["evals.digits.limit=-5"],
     "evals.digits.limit=-5 is not valid: input should be greater than or equal to 1;"
     " e.g. evals.digits.limit=1 or null"),
    ("an eval batch of 0", ["evals.digits.batch_size=0"],
     "evals.digits.batch_size=0 is not valid: input should be greater than or equal to 1;"
     " e.g. evals.digits.batch_size=128"),
    ("a tower-output budget of NaN", ["cache_gb=nan"],
     "cache_gb=nan is not valid: input should be a finite number; e.g. cache_gb=4"),
    ("a tower-output budget of infinity", ["cache_gb=inf"],
     "cache_gb=inf is not valid: input should be a finite number; e.g. cache_gb=4"),
    ("force neither true nor false", ["force=maybe"],
     "force='maybe' is not valid: input should be a valid boolean; e.g. force=false"),
    ("force as a number", ["force=1"],
     "force=1 is not valid: input should be a valid boolean; e.g. force=false"),
    ("offload as yes", ["offload=yes"],
     "offload='yes' is not valid: input should be a valid boolean; e.g. offload=false"),
    ("an empty root folder", ["paths.root="],
     "paths.root='' is not valid: string should have at least 1 character; e.g. paths.root=."),
    ("an empty results folder", ["paths.results_dir="],
     "paths.results_dir='' is not valid: string should have at least 1 character; e.g. paths.results_dir=results/runs"),
    ("threads 0", ["threads=0"],
     "threads=0 is not valid: input should be 'auto' or input should be greater than or equal to 1; e.g. threads=auto"),
    ("threads not a number", ["threads=many"],
     "threads='many' is not valid: input should be 'auto' or input should be a valid integer; e.g. threads=auto"),
    ("a negative p_max margin", ["max_sparsity_delta=-0.1"],
     "max_sparsity_delta=-0.1 is not valid: input should be greater than or equal to 0; e.g. max_sparsity_delta=0.1"),
    ("an empty experiment name", ["experiment_name="],
     "experiment_name='' is not valid: string should have at least 1 character; e.g. experiment_name=default"),
    ("a bad-image share above 1", ["calib=cc3m", "calib.max_bad_fraction=1.5"],
     "calib.max_bad_fraction=1.5 is not valid: input should be less than or equal to 1;"
     " e.g. calib.max_bad_fraction=0.05"),
    ("model init typo", ["model.init=rand"],
     "model.init='rand' is unknown; use one of pretrained, random"),
    ("SparseGPT damping of 0", ["pruner=sparsegpt", "pruner.percdamp=0"],
     "pruner.percdamp=0 is not valid: input should be greater than 0; e.g. pruner.percdamp=0.01"),
    ("SparseGPT damping typo", ["pruner=sparsegpt", "pruner.damping=always"],
     "pruner.damping='always' is unknown; use one of ist, ecoflap"),
    ("a learning rate of 0", ["finetune=masked", "finetune.lr=0"],
     "finetune.lr=0 is not valid: input should be greater than 0; e.g. finetune.lr=1e-05"),
    ("a mixed precision typo", ["finetune=masked", "finetune.mixed_precision=fp8"],
     "finetune.mixed_precision='fp8' is unknown; use one of no, fp16, bf16"),
    ("PLATON beta above 1", ["finetune=iterative", "finetune.beta1=2"],
     "finetune.beta1=2 is not valid: input should be less than or equal to 1; e.g. finetune.beta1=0.85"),
    ("a W&B tag twice", ["logger=wandb", "logger.tags=[a,a]"],
     "logger.tags=[a,a] is not valid: a named more than once; e.g. logger.tags=[a,b] or null"),
    ("an N:M pattern as a number", ["nm=4"],
     "nm=4 is not of the form N:M (e.g. nm=2:4); use nm=null for unstructured"),
    ("redraw neither true nor false", ["redraw_calibration=sometimes"],
     "redraw_calibration='sometimes' is not valid: input should be a valid boolean; e.g. redraw_calibration=false"),
    ("scorer samples fractional", ["scorer=zeroth", "scorer.num_samples=8.5"],
     "scorer.num_samples=8.5 is not valid: input should be a valid integer; e.g. scorer.num_samples=32 or null"),
    ("ID discard fraction above 1", ["scorer=id", "scorer.discard_fraction=1.5"],
     "scorer.discard_fraction=1.5 is not valid: input should be less than or equal to 1;"
     " e.g. scorer.discard_fraction=0.1"),
    ("ID estimator as a number", ["scorer=id", "scorer.estimator=3"],
     "scorer.estimator=3 is unknown; use one of twonn, mle, twonn_blocks"),
    ("OWL lambda negative", ["scorer=owl", "allocation.lam=-1"],
     "allocation.lam=-1 is not valid: input should be greater than or equal to 0; e.g. allocation.lam=0.08"),
    ("OWL outlier factor 0", ["scorer=owl", "scorer.outlier_factor=0"],
     "scorer.outlier_factor=0 is not valid: input should be greater than 0; e.g. scorer.outlier_factor=5.0"),
    ("global ranking with no quantiles", ["allocation=global", "scorer=uniform", "allocation.use_id=false",
                                          "allocation.quantiles=0"],
     "allocation.quantiles=0 is not valid: input should be greater than or equal to 1; e.g. allocation.quantiles=4096"),
    ("SparseGPT block size 0", ["pruner=sparsegpt", "pruner.blocksize=0"],
     "pruner.blocksize=0 is not valid: input should be greater than or equal to 1; e.g. pruner.blocksize=128"),
    ("pruner count as a boolean", ["pruner.count=true"],
     "pruner.count=true is unknown; use one of exact, reference"),
    ("a calibration batch of 0", ["calib.batch_size=0"],
     "calib.batch_size=0 is not valid: input should be greater than or equal to 1; e.g. calib.batch_size=8"),
    ("a calibration seed fractional", ["calib.seed=1.5"],
     "calib.seed=1.5 is not valid: input should be a valid integer; e.g. calib.seed=0"),
    ("a model seed negative", ["model.seed=-2"],
     "model.seed=-2 is not valid: input should be greater than or equal to 0; e.g. model.seed=0"),
    ("fine-tuning for 0 epochs", ["finetune=masked", "finetune.epochs=0"],
     "finetune.epochs=0 is not valid: input should be greater than 0; e.g. finetune.epochs=1"),
    ("a fine-tuning batch of 0", ["finetune=masked", "finetune.batch_size=0"],
     "finetune.batch_size=0 is not valid: input should be greater than or equal to 1; e.g. finetune.batch_size=8"),
    ("negative data-loader workers", ["finetune=masked", "finetune.num_workers=-1"],
     "finetune.num_workers=-1 is not valid: input should be greater than or equal to 0; e.g. finetune.num_workers=0"),
    ("a checkpoint every 0 steps", ["finetune=masked", "finetune.checkpoint_every=0"],
     "finetune.checkpoint_every=0 is not valid: input should be greater than or equal to 1;"
     " e.g. finetune.checkpoint_every=500 or null"),
    ("masking every 0 steps", ["finetune=iterative", "finetune.delta_t=0"],
     "finetune.delta_t=0 is not valid: input should be greater than or equal to 1; e.g. finetune.delta_t=10"),
    ("an initial sparsity above 1", ["finetune=iterative", "finetune.initial_sparsity=1.5"],
     "finetune.initial_sparsity=1.5 is not valid: input should be less than or equal to 1;"
     " e.g. finetune.initial_sparsity=0.0"),
    ("W&B tags as a string", ["logger=wandb", "logger.tags=a"],
     "logger.tags='a' is not valid: input should be a list, not a string; e.g. logger.tags=[a,b] or null"),
    ("an eval limit fractional", ["evals.digits.limit=2.5"],
     "evals.digits.limit=2.5 is not valid: input should be a valid integer; e.g. evals.digits.limit=1 or null"),
    ("max_sparsity above 1", ["max_sparsity=1.5"],
     "max_sparsity=1.5 is not valid: input should be less than or equal to 1; e.g. max_sparsity=0.5 or null"),
    ("max_sparsity NaN", ["max_sparsity=nan"],
     "max_sparsity=nan is not valid: input should be a finite number; e.g. max_sparsity=0.5 or null"),
    ("pads_in_stats as yes", ["pads_in_stats=yes"],
     "pads_in_stats='yes' is not valid: input should be a valid boolean; e.g. pads_in_stats=false"),
    ("save_model as a number", ["save_model=0"],
     "save_model=0 is not valid: input should be a valid boolean; e.g. save_model=false"),
    # issue 27: data files, read before the model loads (write_bad_data writes them under <tmp>/data)
    ("a calibration TSV that is missing", ["calib=cc3m"],
     "caption file '<tmp>/data/cc3m/cc3m.tsv' does not exist"),
    ("a calibration TSV with only its header", ["calib=cc3m", "calib.annotations=<tmp>/data/bad/header_only.tsv"],
     "<tmp>/data/bad/header_only.tsv holds a header and no image-caption rows"),
    ("a calibration TSV with other columns", ["calib=cc3m", "calib.annotations=<tmp>/data/bad/other_columns.tsv"],
     "<tmp>/data/bad/other_columns.tsv: its header ['file', 'text'] lacks the 'image' and 'caption' columns"),
    ("a Latin-1 calibration TSV", ["calib=cc3m", "calib.annotations=<tmp>/data/bad/latin1.tsv"],
     "<tmp>/data/bad/latin1.tsv is not UTF-8 (byte 0xe9"),
    ("calibration images that are missing", ["calib=cc3m", "calib.annotations=<tmp>/data/bad/missing_images.tsv"],
     "images tried fail to decode (first: <tmp>/data/bad/images/missing.jpg"),
    ("a truncated calibration image", ["calib=cc3m", "calib.annotations=<tmp>/data/bad/truncated.tsv",
                                       "calib.max_bad_fraction=0"],
     "1 of 1 images tried fail to decode (first: <tmp>/data/bad/images/truncated.jpg"),
    ("a caption JSON of the wrong shape", ["calib=cc3m", "calib.annotations=<tmp>/data/bad/wrong_shape.json"],
     "<tmp>/data/bad/wrong_shape.json: neither a COCO caption file"),
    ("a caption JSON that does not parse", ["calib=cc3m", "calib.annotations=<tmp>/data/bad/broken.json"],
     "<tmp>/data/bad/broken.json: not valid JSON"),
    ("an empty calibration text", ["model=llama_tiny", "calib=c4", "calib.source=<tmp>/data/bad/empty.txt",
                                   "suite=shipped_text"],
     "calibration text '<tmp>/data/bad/empty.txt' holds no text"),
    ("a Latin-1 calibration text", ["model=llama_tiny", "calib=c4", "calib.source=<tmp>/data/bad/latin1.txt",
                                    "suite=shipped_text"],
     "<tmp>/data/bad/latin1.txt is not UTF-8 (byte 0xe9"),
]


def write_bad_data(root: Path) -> None:
    """The broken data files the inputs above name, under root/data/bad (root: the runs' <tmp>)."""
    from PIL import Image

    bad = root / "data" / "bad"
    (bad / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (200, 40, 40)).save(bad / "images" / "good.jpg")
    (bad / "images" / "truncated.jpg").write_bytes((bad / "images" / "good.jpg").read_bytes()[:60])
    header = "image\tcaption\n"
    (bad / "header_only.tsv").write_text(header)
    (bad / "other_columns.tsv").write_text("file\ttext\nimages/good.jpg\ta red square\n")
    (bad / "latin1.tsv").write_bytes((header + "images/good.jpg\tun caf\u00e9\n").encode("latin-1"))
    (bad / "missing_images.tsv").write_text(header + "images/missing.jpg\ta cat\n" * 8)
    (bad / "truncated.tsv").write_text(header + "images/truncated.jpg\ta red square\n")
    (bad / "wrong_shape.json").write_text('{"captions": 3}')
    (bad / "broken.json").write_text('[{"image": "images/good.jpg", "caption": ')
    (bad / "empty.txt").write_text("\n\n")
    (bad / "latin1.txt").write_bytes("un caf\u00e9 ".encode("latin-1") * 50)


def shown(text: str) -> str:
    """Our `error:` line, else the first line (Hydra's own message for an unknown config option)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("error: ")), lines[0] if lines else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    rows = ["| bad input | overrides | what the user sees | exit | s | record | as expected |",
            "|---|---|---|---|---|---|---|"]
    clear = expected_count = 0
    with tempfile.TemporaryDirectory() as tmp:
        write_bad_data(Path(tmp))
        for what, overrides, expected in BAD_INPUTS:
            overrides = [o.replace("<tmp>", tmp) for o in overrides]
            runs = Path(tmp) / "results" / "runs"
            before = set(runs.glob("*.json")) if runs.is_dir() else set()
            start = time.perf_counter()
            device = [] if any(o.startswith("device=") for o in overrides) else ["device=cpu"]
            done = subprocess.run([sys.executable, str(ROOT / "run.py"), f"paths.root={tmp}", *device, *overrides],
                                  capture_output=True, text=True, cwd=tmp, env=env, timeout=900)
            seconds = time.perf_counter() - start
            after = set(runs.glob("*.json")) if runs.is_dir() else set()
            seen = shown(done.stderr)
            one_line = seen.startswith("error: ") and "Traceback" not in done.stderr
            clear += one_line
            as_expected = expected.replace("<tmp>", tmp) in seen and not after - before
            expected_count += as_expected
            seen = seen.replace("|", "\\|")
            shown_overrides = " ".join(overrides).replace(tmp, "<tmp>")
            rows.append(f"| {what} | `{shown_overrides}` | {seen} | {done.returncode} | {seconds:.1f} | "
                        f"{'yes' if after - before else 'no'} | {'yes' if as_expected else 'NO'} |")
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    summary = (f"{clear} of {len(BAD_INPUTS)} bad inputs end in one `error:` line; {expected_count} as expected "
               f"(the message listed for it, no record)")
    print(f"\n{table}\n\n{summary}")
    if args.out:
        args.out.write_text(f"{table}\n\n{summary}\n")
    if expected_count < len(BAD_INPUTS):
        sys.exit(1)


if __name__ == "__main__":
    main()
