"""Products of block scores: raw factors, per-tower normalisation, each factor reading its own samples."""

import pytest
from torch import nn

from ecoflap_exp.allocation.base import Groups
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import Block, PrunableMatrix, Tower
from ecoflap_exp.scoring import intrinsic_dim as ID
from ecoflap_exp.scoring.base import BlockScorer
from ecoflap_exp.scoring.combined import ProductScorer
from ecoflap_exp.scoring.first import FirstOrderScorer
from tests.scoring.test_intrinsic_dim import batches_for, llama


class FixedScores(BlockScorer):
    def __init__(self, scores):
        self.fixed = scores

    def scores(self, adapter, batches, extended=None, redraw=None, outputs=None):
        return self.fixed


class TwoTowers(ModelAdapter):
    """Two towers of single-Linear blocks: vision (2 blocks of 8x8), text (2 blocks of 8x16)."""

    def __init__(self):
        self.model = nn.ModuleDict({n: nn.Linear(8, 8 if n[0] == "v" else 16) for n in ("v0", "v1", "t0", "t1")})

    def all_towers(self):
        def block(n):
            lin = self.model[n]
            return Block(n, lin, [PrunableMatrix(f"{n}.weight", lin.weight, lin)])

        return [Tower("vision", [block("v0"), block("v1")]), Tower("text", [block("t0"), block("t1")])]

    def collate(self, samples):
        return {}

    def forward(self, batch):
        return None

    def loss_terms(self, batch):
        return []

    def save(self, path):
        pass


def test_product_of_raw_factors_and_per_tower_normalisation():
    adapter = TwoTowers()  # vision blocks of 64 weights, text blocks of 128
    a = FixedScores({"v0": 1.0, "v1": 3.0, "t0": 10.0, "t1": 30.0})
    b = FixedScores({"v0": 128.0, "v1": 128.0, "t0": 640.0, "t1": 1920.0})  # an ID x size: IDs 2, 2, 5, 15
    # default: n_g x (a_g / n_g) x (b_g / n_g) = a_g x ID_g
    assert ProductScorer([a, b]).scores(adapter, []) == pytest.approx({"v0": 2.0, "v1": 6.0, "t0": 50.0, "t1": 450.0})
    combined = ProductScorer([a, b], normalise="tower_mean").scores(adapter, [])
    # a / tower mean: 0.5, 1.5, 0.5, 1.5;  b / tower mean: 1, 1, 0.5, 1.5
    assert combined == pytest.approx({"v0": 0.5, "v1": 1.5, "t0": 0.25, "t1": 2.25})


def test_id_factor_reads_its_own_samples_and_the_others_the_pruners():
    adapter = llama(blocks=2)
    extended = batches_for(adapter, samples=48, batch=8)
    batches = extended[:2]
    product = ProductScorer([FirstOrderScorer(), ID.IntrinsicDimensionScorer(num_samples=48)])
    assert product.samples_needed == 48
    combined = product.scores(adapter, batches, extended)
    first = FirstOrderScorer().scores(adapter, batches)
    ids = ID.IntrinsicDimensionScorer().scores(adapter, extended)
    sizes = Groups.of(adapter).sizes
    assert combined == pytest.approx({g: first[g] * ids[g] / sizes[g] for g in first}, rel=1e-9)
    assert product.info["intrinsic_dim"] == pytest.approx({g: ids[g] / sizes[g] for g in ids}, rel=1e-12)
