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


def tower_record(plan):
    def matrix(name, block, tower, rows, cols):
        return {"name": name, "block": block, "tower": tower, "rows": rows, "cols": cols,
                "planned_sparsity": plan.get(name, plan.get(block, 0.0)), "pruned": 0, "zeros_before": 0}

    return RunRecord.load({
        "id": "r", "status": "ok", "model": "tiny_vlm", "method": "id-ecoflap+wanda", "config": {"sparsity": 0.5},
        "target": {"sparsity": 0.5, "max_sparsity": 0.6}, "plan": plan,
        "scorer_info": {"intrinsic_dim": {"v0.a": 4.0, "v0.b": 8.0, "v1.a": 5.0, "l0.a": 9.0}},
        "achieved": {"overall": 0.5, "prunable_params": 36, "per_block": {"v0": 0.6, "v1": 0.5, "l0": 0.4}},
        "matrices": [matrix("v0.a", "v0", "vision", 2, 2), matrix("v0.b", "v0", "vision", 2, 6),
                     matrix("v1.a", "v1", "vision", 2, 2), matrix("l0.a", "l0", "language", 4, 4)]})


def test_the_tower_profile_averages_a_blocks_matrices_by_hand():
    from ecoflap_exp.results.plots import block_profiles

    profiles = block_profiles(tower_record({"v0.a": 0.25, "v0.b": 0.75, "v1.a": 0.5, "l0.a": 0.4}))
    assert list(profiles) == ["vision", "language"]
    assert profiles["vision"]["id"] == [6.0, 5.0]  # (4 + 8) / 2: the mean of the block's matrices' IDs
    assert profiles["vision"]["planned"] == [0.625, 0.5]  # (0.25 x 4 + 0.75 x 12) / 16 weights
    assert profiles["vision"]["achieved"] == [0.6, 0.5] and profiles["language"] == {
        "id": [9.0], "planned": [0.4], "achieved": [0.4]}


def test_the_tower_figure_has_a_column_per_tower_and_is_drawn_for_the_run_nearest_half(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ecoflap_exp.results.plots import plot_tower_profiles, tower_profile_records

    near = tower_record({"v0": 0.6, "v1": 0.5, "l0": 0.4})
    far = near.model_copy(update={"id": "far", "target": near.target.model_copy(update={"sparsity": 0.7})})
    uniform = near.model_copy(update={"id": "uniform", "plan": {"v0": 0.5, "v1": 0.5, "l0": 0.5}})
    assert tower_profile_records([far, uniform, near]) == [near]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_tower_profiles(plt, near, tmp_path / "towers.png")
    [fig] = figures
    assert [ax.get_title() for ax in fig.axes[:2]] == ["vision (2 blocks)", "language (1 block)"]
    assert len(fig.axes) == 4 and (tmp_path / "towers.png").stat().st_size > 1000
