"""The plan figure: a panel per point, blocks in model order, a legend."""

from ecoflap_exp.record import RunRecord


def plan_record(method, sparsity, plan):
    matrices = [{"name": f"{g}.w", "block": g, "tower": "vision" if g.startswith("v") else "text", "rows": 1, "cols": 2,
                 "planned_sparsity": p, "pruned": 1, "zeros_before": 0} for g, p in plan.items()]
    return {"id": f"{method}{sparsity}", "status": "ok", "model": "m", "method": f"{method}+wanda",
            "config": {"sparsity": sparsity, "nm": None, "experiment_name": "e"},
            "target": {"sparsity": sparsity, "max_sparsity": 1.0},
            "achieved": {"overall": sparsity, "prunable_params": 8}, "plan": plan, "matrices": matrices,
            "metrics": {"acc": 50.0}}


def test_the_plan_figure_has_a_panel_per_point_blocks_in_model_order_and_a_legend(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ecoflap_exp.results.plots import plans_by_point, plot_plans

    records = [plan_record(method, p, {"v0": p - 0.1, "v1": p + 0.1, "t0": p, "t1": p})
               for p in (0.7, 0.5) for method in ("ecoflap-zeroth", "owl")]
    records.append(plan_record("ecoflap-zeroth", 0.5, {"v0": 0.1, "v1": 0.9, "t0": 0.5, "t1": 0.5}))  # a second run
    plans = plans_by_point([RunRecord.load(r) for r in records])
    assert list(plans) == ["p0.5", "p0.7"] and [len(v) for v in plans.values()] == [2, 2]  # one plan per method
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_plans(plt, plans, tmp_path / "plans.png")
    [fig] = figures
    top = fig.axes[0]
    assert [t.get_text() for t in top.get_xticklabels()] == ["vis0", "vis1", "tex0", "tex1"]
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["ecoflap-zeroth", "owl", "target"]
    assert len(fig.axes) == 2 and (tmp_path / "plans.png").stat().st_size > 1000
