"""ecoflap_exp: one-shot pruning of vision-language and language models, Hydra-configured.

    from ecoflap_exp import prune
    report = prune(model, calibration, scorer="zeroth", pruner="wanda", sparsity=0.6)
"""

from ecoflap_exp import resolvers

__version__ = "0.1.0"

resolvers.register()

from ecoflap_exp.api import PruneReport, prune  # noqa: E402 - after the resolvers the configs use

__all__ = ["PruneReport", "prune"]
