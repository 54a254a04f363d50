"""seam: a model's block list and its Linear matrices found by type, a matrix as a view into its
parameter, and a tower's default plumbing."""

import pytest
import torch
from torch import nn

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.seam import PrunableMatrix, Tower, blocks_of, find_block_list


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4)

    def forward(self, x, scale=1.0):
        return self.down(self.act(self.up(x))) * scale, "extra"


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.ModuleList([nn.Linear(4, 4)])  # shorter: not the block list
        self.heads = nn.ModuleList([nn.ReLU(), nn.ReLU(), nn.ReLU()])  # longer, but holds no Linear
        self.layers = nn.ModuleList([Layer(), Layer()])


def test_the_block_list_is_the_longest_list_of_blocks_with_linears_and_its_matrices_are_found_by_type():
    net = Net()
    path, layers = find_block_list(net)
    assert path == "layers" and layers is net.layers
    blocks = blocks_of(path, layers)
    assert [b.name for b in blocks] == ["layers.0", "layers.1"]
    assert [(m.name, m.shape) for m in blocks[1].matrices] == [("layers.1.up", (8, 4)), ("layers.1.down", (4, 8))]
    assert blocks[0].numel == 2 * 32
    with pytest.raises(UserError, match="ReLU has no list of blocks with Linear layers to prune"):
        find_block_list(nn.ReLU())


def test_a_row_slice_is_a_view_whose_writes_reach_the_parameter():
    fused = nn.Linear(4, 12)  # q, k, v stacked as one in_proj
    k = PrunableMatrix("attn.k", fused.weight, fused, rows=slice(4, 8))
    assert k.shape == (4, 4) and k.numel == 16
    k.weight.zero_()
    assert int((fused.weight == 0).sum()) == 16 and bool((fused.weight[4:8] == 0).all())


def test_the_towers_default_plumbing_hands_the_first_output_on():
    net = Net()
    tower = Tower("decoder", blocks_of("layers", net.layers))
    x = torch.randn(2, 3, 4)
    by_name = tower.split_input((), {"hidden_states": x, "scale": 2.0})
    positional = tower.split_input((x,), {"scale": 2.0})
    assert by_name.hidden is positional.hidden is x and by_name.kwargs == positional.kwargs == {"scale": 2.0}
    out = tower.run_block(tower.blocks[0], positional)
    nxt = tower.next_input(out, positional)
    assert torch.equal(nxt.hidden, net.layers[0](x, scale=2.0)[0]) and nxt.kwargs == {"scale": 2.0}
    assert tower.passthrough((x,), {}) is x
    assert tower.token_masks({}) == {} and tower.sample_sizes({}) is None and tower.wanda_group == "row"
