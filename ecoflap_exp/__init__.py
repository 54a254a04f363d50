"""ecoflap_exp: one-shot pruning of vision-language and language models, Hydra-configured."""

from ecoflap_exp import resolvers

__version__ = "0.1.0"

resolvers.register()
