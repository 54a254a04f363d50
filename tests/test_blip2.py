"""BLIP-2 adapters (FlanT5, OPT, ITM): towers and shapes, the engine through T5's position biases,
calibration batches, generation, ITC/ITM against transformers' own forward, weight transfer."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from test_engine import assert_same_pruning, prune_by_full_forwards

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.blip2 import Blip2Adapter, Blip2ITMAdapter, prefix_split
from ecoflap_exp.models.blip_text import blip_caption, blip_question
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer

CAPTIONS = ["A photo of a cat.", "two dogs playing in the park", "a red car", "a plate of food on a table",
            "a mountain lake at dawn", "an old stone building", "a person running", "a bowl of fruit"]
ALL_T5_TOWERS = ["vision", "qformer", "encoder", "decoder"]


def images(n=8, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def tiny(kind="t5", **kw):
    if kind == "itm":
        return Blip2ITMAdapter(arch="blip2_itm_tiny", init="random", tokenizer="bytes", **kw)
    return Blip2Adapter(arch=f"blip2_{kind}_tiny", init="random", tokenizer="bytes", **kw)


def batches(adapter, size=4):
    pairs = list(zip(images(), CAPTIONS, strict=True))
    return [adapter.collate(pairs[i : i + size]) for i in range(0, len(pairs), size)]


def test_shipped_flan_t5_xl_has_the_papers_588_matrices_and_3_70b_weights():
    with torch.device("meta"):
        adapter = Blip2Adapter(arch="blip2_flan_t5_xl", init="random", tokenizer="bytes")
    towers = {t.name: t for t in adapter.towers()}
    assert list(towers) == ["vision", "encoder", "decoder"]  # the Q-Former is not pruned by default
    assert [len(towers[n].blocks) for n in towers] == [39, 24, 24]
    assert [len(towers[n].blocks[0].matrices) for n in towers] == [4, 7, 11]
    # ecoflap.md 1.1: 25.23M per ViT block, 48.2M per encoder block, 65.0M per decoder block
    assert [towers[n].blocks[0].numel for n in towers] == [25_231_360, 48_234_496, 65_011_712]
    assert sum(1 for _ in adapter.matrices()) == 588
    assert sum(m.numel for m in adapter.matrices()) == 3_701_932_032


def test_towers_of_the_tiny_models():
    t5 = tiny("t5", prune_towers=ALL_T5_TOWERS)
    assert [(t.name, len(t.blocks)) for t in t5.towers()] == [("vision", 2), ("qformer", 2), ("encoder", 2),
                                                              ("decoder", 2)]
    qformer_block = t5.towers()[1].blocks[0]
    names = [m.name.removeprefix(qformer_block.name + ".") for m in qformer_block.matrices]
    # the query path only: the text branch (intermediate/output) never runs in the generative model
    assert names == [f"{part}.attention.{p}" for part in ("attention",) for p in ("query", "key", "value")] + [
        "attention.output.dense"] + [f"crossattention.attention.{p}" for p in ("query", "key", "value")] + [
        "crossattention.output.dense", "intermediate_query.dense", "output_query.dense"]
    assert [t.name for t in tiny("opt").towers()] == ["vision", "decoder"]
    assert [t.name for t in tiny("itm").towers()] == ["vision"]
    with pytest.raises(UserError, match="prune_towers=.*must name some of.*vision, qformer, encoder, decoder"):
        tiny("t5", prune_towers=["text"]).towers()


@pytest.mark.parametrize("pruner", [WandaPruner(), SparseGPTPruner(blocksize=16)])
@pytest.mark.parametrize("kind", ["t5", "opt"])
def test_sequential_engine_equals_full_forward_reference(kind, pruner):
    """Block by block with captured inputs (T5: the position biases handed on from block 0, the
    decoder fed by the pruned encoder) gives exactly what hooks in full forwards give."""
    towers = ALL_T5_TOWERS if kind == "t5" else ["vision", "qformer", "decoder"]
    fast, slow = tiny(kind, prune_towers=towers), tiny(kind, prune_towers=towers)
    plan = {b.name: 0.3 + 0.1 * (i % 4) for i, b in enumerate(fast.blocks())}
    SequentialEngine(fast, pruner, plan).run(batches(fast))
    prune_by_full_forwards(slow, pruner, plan, batches(slow))
    assert_same_pruning(fast, slow)


def test_unlisted_qformer_stays_untouched():
    adapter, dense = tiny("t5"), tiny("t5")
    plan = {b.name: 0.5 for b in adapter.blocks()}
    SequentialEngine(adapter, WandaPruner(), plan).run(batches(adapter))
    for (name, p), q in zip(adapter.model.qformer.named_parameters(), dense.model.qformer.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert float((adapter.model.vision_model.encoder.layers[0].mlp.fc1.weight == 0).float().mean()) == 0.5


@pytest.mark.parametrize("kind", ["t5", "opt"])
def test_zeroth_order_prefix_reuse_equals_full_forwards(kind):
    """Skipping a tower's earlier blocks (T5 blocks skipped must still hand on position biases)
    leaves the estimates unchanged."""
    adapter = tiny(kind)
    calib = batches(adapter)
    reuse = ZerothOrderScorer(num_samples=None, seed=3).scores(adapter, calib)
    naive = ZerothOrderScorer(num_samples=None, seed=3, reuse_prefix=False).scores(adapter, calib)
    assert reuse.keys() == naive.keys()
    for name in reuse:
        assert reuse[name] == pytest.approx(naive[name], rel=1e-4), name


def test_prefix_split_is_seeded_and_cuts_in_the_first_half():
    caption = "a man riding a horse on a beach"
    cuts = set()
    for seed in range(200):
        prefix, target = prefix_split(caption, random.Random(seed))
        assert prefix + target == caption
        cuts.add(len(prefix))
    assert cuts == set(range(1, len(caption) // 2 + 1))  # uniform over [1, len/2]: every cut occurs
    assert prefix_split(caption, random.Random(7)) == prefix_split(caption, random.Random(7))
    assert prefix_split("a", random.Random(0)) == ("a", "")


def test_blip_text_processors():
    assert blip_caption('A "Dog" (brown)  runs; fast!\n') == "a dog brown runs fast"
    assert blip_question("What is it? (Hint: a ~cat.)") == "what is it? hint a cat"
    assert blip_caption(" ".join(["w"] * 60)).count("w") == 50


def test_calibration_batches_mask_what_the_loss_must_skip():
    t5 = tiny("t5", seed=1)
    batch = t5.collate(list(zip(images(2), ["A photo of a cat.", "a red car"], strict=True)))
    # bytes tokenizer: each character is one token, the target ends with EOS (id 1); padding -> -100
    assert batch["labels"].shape == batch["input_ids"].shape == (2, 32)  # padded to max_text_tokens
    lengths = batch["decoder_attention_mask"].sum(1).tolist()
    for row, n in zip(batch["labels"], lengths, strict=True):
        assert row[n - 1] == 1 and (row[n:] == -100).all() and (row[:n] >= 0).all()
    opt = tiny("opt", seed=1)
    rng = random.Random(1)
    cut = prefix_split("a photo of a cat", rng)[0]
    batch = opt.collate([(images(1)[0], "A photo of a cat.")])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    assert opt.tokenizer.bos_token_id is None  # the byte tokenizer has no BOS (OPT's would lead the sequence)
    # the prefix is input only; the target and its closing newline are predicted; padding to
    # max_text_tokens (32) is skipped
    end = len("a photo of a cat\n")
    assert len(ids) == 32 and (labels[: len(cut)] == -100).all() and (labels[end:] == -100).all()
    assert torch.equal(labels[len(cut) : end], ids[len(cut) : end])
    assert bytes(int(i) - 3 for i in ids[len(cut) : end]).decode() == "a photo of a cat"[len(cut) :] + "\n"


@pytest.mark.parametrize("kind", ["t5", "opt"])
def test_generation_runs_after_pruning(kind):
    adapter = tiny(kind)
    plan = {b.name: 0.5 for b in adapter.blocks()}
    SequentialEngine(adapter, WandaPruner(), plan).run(batches(adapter))
    answers = adapter.generate(images(3), ["Question: what is it? Short answer:"] * 3, num_beams=3,
                               max_new_tokens=4, min_length=1, length_penalty=-1.0)
    assert len(answers) == 3 and all(isinstance(a, str) and len(a.encode()) <= 4 for a in answers)
    assert torch.isfinite(adapter.loss(batches(adapter)[0]))


def test_itc_and_itm_equal_transformers_own_forward():
    adapter = tiny("itm")
    pics, texts = images(3), CAPTIONS[:3]
    states = adapter.image_states(pics)
    sims = torch.einsum("iqd,td->iqt", adapter.features_from_states(states), adapter.text_features(texts)).amax(1)
    ids, mask = adapter.text_tokens(texts)
    with torch.no_grad():
        pixels = adapter.pixels(pics)
        itc = adapter.model(pixel_values=pixels, input_ids=ids, attention_mask=mask).logits_per_image
        itm = adapter.model(pixel_values=pixels, input_ids=ids, attention_mask=mask,
                            use_image_text_matching_head=True).logits_per_image
    torch.testing.assert_close(sims, itc, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(adapter.itm_scores(states, texts), itm[:, 1], rtol=1e-5, atol=1e-6)
    loss = adapter.loss(adapter.collate(list(zip(pics, texts, strict=True))))
    assert torch.isfinite(loss) and loss > 0


def test_position_embeddings_are_interpolated_as_transformers_does():
    adapter = tiny("itm")
    embeddings = adapter.model.vision_model.embeddings
    old = embeddings.position_embedding.detach()  # 32 px / 8 px patches: 1 + 4x4 positions
    fitted = adapter.fit_weight("vision_model.embeddings.position_embedding", old, torch.Size((1, 37, 32)), "test")
    expected = embeddings.interpolate_pos_encoding(torch.zeros(1, 37, 32), 48, 48)  # 1 + 6x6 positions
    torch.testing.assert_close(fitted, expected)
    with pytest.raises(UserError, match="shape .* the architectures differ"):
        adapter.fit_weight("vision_model.post_layernorm.weight", old[0, 0], torch.Size((16,)), "test")


def test_transfer_into_a_companion_copies_the_named_parts_only():
    pruned, companion = tiny("t5"), tiny("itm", seed=5)
    SequentialEngine(pruned, WandaPruner(), {b.name: 0.5 for b in pruned.blocks()}).run(batches(pruned))
    qformer_before = {k: v.clone() for k, v in companion.model.qformer.state_dict().items()}
    count = companion.load_weights(pruned.model.state_dict(), ["vision_model."], "pruned")
    assert count == len([k for k in pruned.model.state_dict() if k.startswith("vision_model.")])
    for (name, p), q in zip(companion.model.vision_model.named_parameters(), pruned.model.vision_model.parameters(),
                            strict=True):
        assert torch.equal(p, q), name
    for name, tensor in companion.model.qformer.state_dict().items():
        assert torch.equal(tensor, qformer_before[name]), name
    with pytest.raises(UserError, match="language_model.* has no counterpart in Blip2ITMAdapter"):
        companion.load_weights(pruned.model.state_dict(), ["language_model."], "pruned")
