"""Qwen2-VL (a tiny random model of the real class): M-RoPE inputs of its language blocks, image boundaries
of its vision blocks, IDs measured per image."""

import torch

from tests.models.test_chat import SAMPLES, make, recorded_inputs


def test_qwen2vl_language_blocks_get_m_rope_and_vision_blocks_the_image_boundaries():
    """Checked against M-RoPE's definition: an image's tokens take (t, h, w) grid positions from the
    position after the text before it, and the text after the image continues from that start plus
    the largest grid side; cu_seqlens are the cumulative patch counts of the images."""
    adapter = make("qwen2vl_tiny")
    batch = adapter.collate(SAMPLES[:2])
    config = adapter.model.config
    towers = {t.name: t for t in adapter.towers()}
    vision = recorded_inputs(adapter, towers["vision"], batch)
    grid = batch["image_grid_thw"]
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.int64), grid.prod(-1).cumsum(0)]).to(torch.int32)
    for inp in vision.values():
        assert torch.equal(inp.kwargs["cu_seqlens"].to(torch.int32), cu_seqlens)
        assert inp.hidden.shape == (int(grid.prod(-1).sum()), config.vision_config.embed_dim)
    language = recorded_inputs(adapter, towers["language"], batch)
    merge = config.vision_config.spatial_merge_size
    positions = []
    for row, (ids, mask) in enumerate(zip(batch["input_ids"], batch["attention_mask"], strict=True)):
        t, h, w = grid[row].tolist()
        h, w = h // merge, w // merge
        ids = ids[mask.bool()].tolist()
        first = ids.index(config.image_token_id)
        count = sum(i == config.image_token_id for i in ids)
        assert count == t * h * w
        rows = [list(range(first)) for _ in range(3)]
        rows[0] += [first + i // (h * w) for i in range(count)]
        rows[1] += [first + (i // w) % h for i in range(count)]
        rows[2] += [first + i % w for i in range(count)]
        after = first + max(t, h, w)
        for r in rows:
            r += list(range(after, after + len(ids) - first - count))
        padded = torch.ones(3, len(mask), dtype=torch.long)
        padded[:, mask.bool()] = torch.tensor(rows)
        positions.append(padded)
    position_ids = torch.stack(positions, dim=1)  # (3, batch, tokens)
    rotary = adapter.model.model.language_model.rotary_emb
    first_block = towers["language"].blocks[0].name
    hidden = language[first_block].hidden
    cos, sin = rotary(hidden, position_ids)
    got_cos, got_sin = language[first_block].kwargs["position_embeddings"]
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got_cos[real], cos[real])
    torch.testing.assert_close(got_sin[real], sin[real])
    plain_cos, _ = rotary(hidden, torch.arange(hidden.shape[1]).expand(3, len(hidden), -1))
    assert not torch.allclose(got_cos[real], plain_cos[real])  # 1-D positions would be wrong


def test_qwen2vl_vision_ids_are_measured_per_image_not_per_patch(monkeypatch):
    """The ViT's blocks see all of a batch's patches as one sequence; the ID store gets one vector
    per image (the flattened patches of each, the shorter padded), each image's rows its own."""
    from ecoflap_exp.scoring import id_estimators
    from ecoflap_exp.scoring.intrinsic_dim import IntrinsicDimensionScorer, representation

    rows = torch.arange(12.0).reshape(6, 2)
    flat = representation(rows, "flatten", sizes=(16, 8))  # shares 2:1 of 6 rows -> 4 and 2
    assert torch.equal(flat, torch.tensor([[[0.0, 1], [2, 3], [4, 5], [6, 7]], [[8, 9], [10, 11], [0, 0], [0, 0]]]))
    means = representation(rows, "mean", sizes=(16, 8))
    assert torch.equal(means, torch.stack([rows[:4].mean(0), rows[4:].mean(0)]))
    adapter = make("qwen2vl_tiny", towers=["vision", "projector"])
    added = []
    original = id_estimators.VectorStore.add
    monkeypatch.setattr(id_estimators.VectorStore, "add", lambda self, v: added.append(v.shape) or original(self, v))
    batches = [adapter.collate(SAMPLES[i : i + 2]) for i in range(0, 4, 2)] * 3  # 12 images for TwoNN
    IntrinsicDimensionScorer(granularity="matrix").scores(adapter, batches)
    assert added and all(shape[0] == 2 for shape in added)  # two images per batch, in every tower
