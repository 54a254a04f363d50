"""config_schema: a key nothing reads is named with the nearest known one, the top level's schema is
configs/config.yaml's, and top-level values are checked against their types."""

import inspect
from pathlib import Path

import pytest

from ecoflap_exp.config_schema import TOP_LEVEL_KEYS, check_config, top_level
from ecoflap_exp.errors import UserError
from ecoflap_exp.preflight import validate
from tests.integration.test_reliability import ROOT, config


@pytest.mark.parametrize(("overrides", "message"), [
    (["+foo=1"], "foo is not a key anything reads; known keys: allocation, cache_gb, calib"),
    (["+sparsty=0.3"], "sparsty is not a key anything reads; did you mean sparsity?"),
    (["scorer=zeroth", "+scorer.epz=0.001"], "scorer.epz is not a key anything reads; did you mean eps?"),
    (["scorer=id_zeroth", "+scorer.factors.0.epz=0.001"], "scorer.factors.0.epz is not a key .* did you mean eps?"),
    (["+pruner.blocksize=64"], "pruner.blocksize is not a key anything reads"),  # wanda has no blocksize
    (["+evals.digits.batchsize=4"], "evals.digits.batchsize is not a key .* did you mean batch_size?"),
    (["+paths.result_dir=x"], "paths.result_dir is not a key .* did you mean results_dir?"),
])
def test_a_key_nothing_reads_is_an_error_naming_the_nearest(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        validate(config(tmp_path, *overrides))


def test_the_known_top_level_keys_are_the_primary_configs():
    cfg = config(Path("/tmp"))
    assert tuple(cfg.keys()) == TOP_LEVEL_KEYS
    # the schema's defaults are configs/config.yaml's values (device=cpu is this test's override)
    defaults = {p.name: p.default for p in inspect.signature(top_level).parameters.values()}
    assert {k: v for k, v in defaults.items() if k != "device"} == {k: cfg[k] for k in defaults if k != "device"}
    for experiment in (ROOT / "configs" / "experiment").glob("*.yaml"):
        check_config(config(Path("/tmp"), f"experiment={experiment.stem}"))  # every shipped experiment passes


def test_a_cache_budget_below_zero_or_not_a_number_is_refused(tmp_path):
    for bad, why in (("-1", "greater than or equal to 0"), ("'lots'", "a valid number"), ("nan", "a finite number"),
                     ("inf", "a finite number")):
        with pytest.raises(UserError, match=f"cache_gb={bad} is not valid: input should be {why}; e.g. cache_gb=4"):
            validate(config(tmp_path, f"cache_gb={bad.strip(chr(39))}"))
    validate(config(tmp_path, "cache_gb=0"))  # 0 stores nothing: a valid choice
