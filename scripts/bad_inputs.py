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

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: (what is wrong, the command line's overrides, what the `error:` line must say), from bad_inputs.yaml
BAD_INPUTS = [(row["what"], row["overrides"], row["error"])
              for row in yaml.safe_load((Path(__file__).with_suffix(".yaml")).read_text())]


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
