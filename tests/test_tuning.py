"""tuning: the plan iterative pruning arrived at, and the kept weights training left at exactly zero
widening a matrix's allowance of other zeros."""

from ecoflap_exp.record import MatrixReport
from ecoflap_exp.tuning import iterative_plan, zeroed_in_training


def test_iterative_pruning_counts_become_the_plan_and_its_reports(tiny_llama):
    matrices = list(tiny_llama.matrices())
    pruned = {m.name: m.numel // 4 for m in matrices} | {matrices[0].name: 1024}  # q_proj: 1024 of 64 x 64
    plan, reports = iterative_plan(tiny_llama, pruned)
    assert plan[matrices[0].name] == 0.25 and plan[matrices[1].name] == 0.25  # 512 of k_proj's 32 x 64
    first = reports[0]
    assert (first.name, first.block, first.tower, first.rows, first.cols, first.pruned, first.zeros_before) == (
        "model.layers.0.self_attn.q_proj", "model.layers.0", "decoder", 64, 64, 1024, 0)
    assert [r.name for r in reports] == [m.name for m in matrices]


def test_zeros_training_left_beyond_the_pruned_ones_widen_the_allowance(tiny_llama):
    matrices = list(tiny_llama.matrices())
    first, second = matrices[0], matrices[1]
    first.weight.view(-1)[:10] = 0  # pruned 6, 1 zero before pruning, 3 left at zero by training
    second.weight.view(-1)[:4] = 0  # exactly its pruned 4
    reports = [MatrixReport(m.name, "b", "decoder", *m.shape, 0.0, pruned, before, None)
               for m, pruned, before in ((first, 6, 1), (second, 4, 0))]
    widened, total = zeroed_in_training(tiny_llama, reports)
    assert total == 3
    assert [r.zeros_before for r in widened] == [4, 0] and [r.pruned for r in widened] == [6, 4]
    assert reports[0].zeros_before == 1  # the reports given are left as they were
