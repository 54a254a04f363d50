"""resolvers: the values the shipped configs' rules resolve to."""

import pytest

from ecoflap_exp.resolvers import calibration_augment, half_on, sparsity_of


@pytest.mark.parametrize(("nm", "expected"), [("2:4", 0.5), ("1:4", 0.75), ("4:8", 0.5), ("3:5", 0.4),
                                              (None, 0.3), ("none", 0.3), ("2-4", 0.3), ("1:0", 0.3)])
def test_sparsity_of_an_nm_pattern_else_the_default(nm, expected):
    assert sparsity_of(nm, 0.3) == pytest.approx(expected)


def test_half_precision_only_on_cuda_and_the_official_calibration_view():
    assert half_on("cpu") == "float32" and half_on("cuda") == half_on("cuda:1") == "float16"
    assert calibration_augment("ecoflap_exp.models.blip2.Blip2Adapter") == "train"
    assert calibration_augment("ecoflap_exp.models.causal_lm.CausalLMAdapter") == "eval"
