"""`python run.py ...` in a clone: the same command line as the installed `ecoflap` (ecoflap_exp/cli.py)."""

from ecoflap_exp.cli import main

if __name__ == "__main__":
    main()
