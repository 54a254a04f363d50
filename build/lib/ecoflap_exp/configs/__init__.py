"""The Hydra configs shipped with the package (a package so that Hydra finds them as pkg://ecoflap_exp.configs)."""
