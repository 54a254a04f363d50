"""What every block scorer shares: the granularity option."""

import pytest

from ecoflap_exp.errors import UserError
from ecoflap_exp.scoring.first import FirstOrderScorer
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer


def test_granularity_layer_is_read_as_matrix_with_a_warning(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        scorer = ZerothOrderScorer(granularity="layer")
    assert scorer.granularity == "matrix" and "now called scorer.granularity=matrix" in caplog.text
    with pytest.raises(UserError, match="scorer.granularity='blok' is unknown; use one of block, matrix"):
        FirstOrderScorer(granularity="blok")
