"""The ID paper's cubic sparsity schedule against its formula, and the values it refuses."""

import pytest

from ecoflap_exp.errors import UserError
from ecoflap_exp.finetune.schedule import CubicSchedule
from ecoflap_exp.finetune.trainer import IterativePruning, MaskedFineTuning


def test_cubic_schedule_equals_the_formula_at_the_warmup_edges_and_midpoints():
    s = CubicSchedule(total_steps=100, initial_warmup_steps=10, final_warmup_steps=20, steps_per_epoch=25,
                      delta_t=10, initial_ratio=1.0, final_ratio=0.2)
    assert s.at(1) == (1.0, False) and s.at(10) == (1.0, False)  # initial warm-up: no masking
    ratio, mask = s.at(11)
    assert ratio == pytest.approx(0.2 + 0.8 * (69 / 70) ** 3) and not mask
    assert s.at(45) == (pytest.approx(0.2 + 0.8 * 0.5**3), False)  # halfway through the 70 pruning steps
    assert s.at(50) == (pytest.approx(0.2 + 0.8 * (30 / 70) ** 3), True)  # every delta_t steps
    assert s.at(75)[1] and not s.at(74)[1]  # at an epoch's end
    assert s.at(80) == (pytest.approx(0.2), True)
    assert s.at(81) == (0.2, True) and s.at(100) == (0.2, True)  # final warm-up: every step
    no_final = CubicSchedule(total_steps=33, initial_warmup_steps=0, final_warmup_steps=0, steps_per_epoch=33,
                             delta_t=10, initial_ratio=1.0, final_ratio=0.5)
    assert no_final.at(33) == (pytest.approx(0.5), True)  # the last step always masks


def test_schedule_and_trainer_refuse_bad_values_with_one_message():
    with pytest.raises(UserError, match="warm-ups leave no steps"):
        CubicSchedule(total_steps=20, initial_warmup_steps=10, final_warmup_steps=10, steps_per_epoch=10,
                      delta_t=10, initial_ratio=1.0, final_ratio=0.2)
    with pytest.raises(UserError, match="warm-ups leave no epochs"):
        IterativePruning(epochs=2, initial_warmup=1, final_warmup=1)
    with pytest.raises(UserError, match="finetune.lr=0 is not valid: input should be greater than 0"):
        MaskedFineTuning(lr=0)
    with pytest.raises(UserError, match="finetune.score='platonic' is unknown"):
        IterativePruning(score="platonic")
