"""uniform: every block's score is its count of prunable weights."""

from ecoflap_exp.scoring.uniform import UniformScorer


def test_a_blocks_score_is_its_weight_count(tiny_llama):
    cfg = tiny_llama.model.config
    h, i, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * cfg.head_dim
    per_block = 2 * h * h + 2 * h * kv + 3 * h * i  # q and o, k and v, gate, up and down
    assert per_block == 36864  # llama_tiny: h=64, kv=32, i=128
    scores = UniformScorer().scores(tiny_llama, [])
    assert scores == {f"model.layers.{n}": float(per_block) for n in range(cfg.num_hidden_layers)}
    assert UniformScorer.non_uniform is False
