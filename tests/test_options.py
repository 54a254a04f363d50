"""options: a value checked against its parameter's type hint, strictly, in one message naming the
key, the value and a valid example."""

import math

import pytest

from ecoflap_exp.errors import UserError
from ecoflap_exp.options import Count, Fraction, Names, Typed, check_value


@pytest.mark.parametrize(("key", "value", "annotation", "default", "message"), [
    ("x", 1.5, Fraction, 0.5, "x=1.5 is not valid: input should be less than or equal to 1; e.g. x=0.5"),
    ("x", "0.5", Fraction, 0.5, "x='0.5' is not valid: input should be a valid number; e.g. x=0.5"),
    ("x", math.nan, Fraction, 0.5, "x=nan is not valid: input should be a finite number; e.g. x=0.5"),
    ("n", 0, Count, 4, "n=0 is not valid: input should be greater than or equal to 1; e.g. n=4"),
    ("n", True, Count, 4, "n=true is not valid: input should be a valid integer; e.g. n=4"),
    ("t", ["a", "b", "a"], Names, None, "t=[a,b,a] is not valid: a named more than once; e.g. t=[a,b]"),
    ("t", "ab", Names, None, "t='ab' is not valid: input should be a list, not a string; e.g. t=[a,b]"),
])
def test_a_value_its_type_refuses_is_one_message(key, value, annotation, default, message):
    with pytest.raises(UserError) as caught:
        check_value(key, value, annotation, default)
    assert str(caught.value) == message


def test_the_bounds_of_a_fraction_are_allowed():
    for value in (0, 0.0, 1.0):
        check_value("x", value, Fraction, 0.5)


def test_a_typed_plugin_checks_its_arguments_under_its_group():
    class Probe(Typed):
        option_group = "probe"

        def __init__(self, share: Fraction = 0.5):
            self.share = share

    assert Probe(share=1.0).share == 1.0
    with pytest.raises(UserError, match=r"^probe.share=2 is not valid: input should be less than or equal to 1"):
        Probe(2)
