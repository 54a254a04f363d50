"""Run records -> results/tables/<experiment>.{md,csv,tex} and results/plots/<experiment>*.png.

    python scripts/make_tables.py [--results results/runs] [--out results] [--wandb entity/project ...]

Records come from the local results store and, with --wandb, also from W&B projects through the
public API (needs `wandb login` or WANDB_API_KEY); a run in both is taken from the local store.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ecoflap_exp.errors import UserError
from ecoflap_exp.results.tables import write_tables


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/runs", type=Path, help="folder of run records")
    parser.add_argument("--out", default="results", type=Path, help="tables/ and plots/ are written here")
    parser.add_argument("--wandb", action="append", default=[], metavar="ENTITY/PROJECT",
                        help="also read the runs of this W&B project (repeatable)")
    args = parser.parse_args()
    try:
        tables = write_tables(args.results, args.out, args.wandb)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not tables:
        sources = " or ".join([str(args.results), *args.wandb])
        print(f"no run records in {sources}; run some experiments first (make run)")
    for name in tables:
        print(f"\n{(args.out / 'tables' / f'{name}.md').read_text()}")


if __name__ == "__main__":
    main()
