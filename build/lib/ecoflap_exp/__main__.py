"""`python -m ecoflap_exp ...`: the same command line as `ecoflap` (ecoflap_exp/cli.py)."""

from ecoflap_exp.cli import main

main()
