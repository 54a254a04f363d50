"""Results store -> results/tables/<experiment>.{md,csv,tex} and results/plots/<experiment>*.png.

    python scripts/make_tables.py [--results results/runs] [--out results]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ecoflap_exp.tables import write_tables


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/runs", type=Path, help="folder of run records")
    parser.add_argument("--out", default="results", type=Path, help="tables/ and plots/ are written here")
    args = parser.parse_args()
    tables = write_tables(args.results, args.out)
    if not tables:
        print(f"no run records in {args.results}; run some experiments first (make run)")
    for name in tables:
        print(f"\n{(args.out / 'tables' / f'{name}.md').read_text()}")


if __name__ == "__main__":
    main()
