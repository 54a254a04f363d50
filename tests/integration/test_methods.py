"""RIA, DSnoT and AlphaPruning on every model family through run.py, and every allocation driving
RIA and DSnoT: each run reaches exactly the target over the towers it prunes (count=exact), every
tower pruned, the sequential engine feeding each block the pruned blocks before it."""

from __future__ import annotations

import pytest

from ecoflap_exp.runner import run
from tests.integration.test_run import config

#: each family's tiny model, calibrated on what it reads without fixture files
FAMILIES = {
    "llama_tiny": ["calib=shipped_text"], "opt_tiny": ["calib=shipped_text"],
    "vit_tiny": ["calib=synthetic_images"], "timm_vit_tiny": ["calib=synthetic_images"],
    **{family: ["calib=digits"] for family in (
        "blip2_t5_tiny", "blip2_opt_tiny", "blip2_itm_tiny", "blip_caption_tiny", "clip_tiny", "hf_clip_tiny",
        "llava_tiny", "qwen2vl_tiny", "qwen25vl_tiny", "internvl3_tiny", "gemma3_tiny",
        "onevision_tiny")},
}
METHODS = {"ria": ["pruner=ria"], "dsnot": ["pruner=dsnot"], "alpha": ["scorer=alpha"]}


def pruned(tmp_path, *overrides):
    record = run(config(tmp_path, "suite=none", "sparsity=0.5", "calib.num_samples=4", "calib.batch_size=2",
                        *overrides))
    assert record.achieved.overall == 0.5
    return record


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_new_method_prunes_every_family_to_exactly_the_target(tmp_path, family, method):
    record = pruned(tmp_path, f"model={family}", *FAMILIES[family], *METHODS[method])
    towers = {m.tower for m in record.matrices}
    assert towers == set(record.achieved.per_tower) and all(m.pruned > 0 for m in record.matrices)


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["ria", "dsnot"])
@pytest.mark.parametrize("allocation", [["scorer=zeroth", "scorer.num_samples=4"], ["scorer=owl"], ["scorer=alpha"],
                                        ["allocation=global"]])
def test_every_allocation_drives_the_new_pruners(tmp_path, pruner, allocation):
    record = pruned(tmp_path, "model=llama_tiny", "calib=shipped_text", f"pruner={pruner}", *allocation)
    assert len(set(record.plan.values())) > 1  # the allocation's plan, not a uniform one
