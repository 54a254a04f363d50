"""plugins: everything but the model built from the config (a plugin's UserError coming through as
itself), and the method named as the papers name it."""

import pytest
from omegaconf import OmegaConf

from ecoflap_exp.errors import UserError
from ecoflap_exp.plugins import Plugins, build
from ecoflap_exp.preflight import validate
from tests.integration.test_run import config


def test_build_lets_a_plugins_own_message_through_unwrapped():
    node = OmegaConf.create({"_target_": "ecoflap_exp.pruning.magnitude.MagnitudePruner", "group": "col"})
    with pytest.raises(UserError, match=r"^pruner.group='col' is unknown; use one of row, matrix$"):
        build(node)
    assert build(OmegaConf.create({"_target_": "ecoflap_exp.pruning.magnitude.MagnitudePruner",
                                   "group": "row"})).group == "row"


@pytest.mark.parametrize(("overrides", "method"), [
    ([], "wanda"), (["scorer=zeroth"], "ecoflap-zeroth+wanda"), (["scorer=first", "pruner=sparsegpt"],
                                                                 "ecoflap-first+sparsegpt"),
    (["scorer=id", "allocation=global"], "id-global-wanda+wanda"), (["scorer=owl"], "owl+wanda"),
    (["allocation=global", "allocation.base_score=magnitude", "allocation.use_id=false", "pruner=magnitude"],
     "global-magnitude+magnitude"),
    (["scorer=id_zeroth", "pruner=magnitude"], "ecoflap-zerothxid+magnitude"), (["sparsity=0"], "dense"),
    (["nm=2:4", "pruner=sparsegpt"], "sparsegpt"),
])
def test_the_plugins_name_the_method(tmp_path, overrides, method):
    cfg = config(tmp_path, *overrides)
    assert Plugins.build(cfg).method_name(validate(cfg).sparsity) == method
    assert cfg.model.name == "llama_tiny"
