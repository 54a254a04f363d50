"""ecoflap_exp: one-shot pruning of vision-language and language models, Hydra-configured."""

__version__ = "0.1.0"
