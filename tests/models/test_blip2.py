"""BLIP-2 adapters (FlanT5, OPT, ITM): towers and shapes, the engine through T5's position biases,
calibration batches, generation, ITC/ITM against transformers' own forward, weight transfer."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.blip2 import Blip2Adapter, Blip2ITMAdapter, T5Head, prefix_split
from ecoflap_exp.models.blip_text import blip_caption, blip_question
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer
from tests.pruning.test_engine import all_tokens, assert_same_pruning, prune_by_full_forwards

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


def language_real_tokens(adapter):
    """The real tokens of each matrix's input, picked by name from the batch's own masks (not the
    adapter's towers): the LM's input is 32 query outputs then the text; T5's decoder reads its
    targets, and its cross-attention k and v read the encoder's tokens."""
    queries = adapter.model.config.num_query_tokens

    def tokens(batch, matrix, x):
        if not matrix.name.startswith("language_model."):
            return all_tokens(batch, matrix, x)
        text = batch["attention_mask"].bool()
        mask = torch.cat([torch.ones(len(text), queries, dtype=torch.bool), text], dim=1)
        if ".decoder.block." in matrix.name and not matrix.name.endswith(("EncDecAttention.k", "EncDecAttention.v")):
            mask = batch["decoder_attention_mask"].bool()
        return (x[mask.reshape(-1)] if x.dim() == 2 else x[mask]), len(mask)

    return tokens


def official_group(block_name):
    """ECoFLaP's BLIP-2 Wanda: the EVA ViT per whole matrix, everything else per output row."""
    return "matrix" if block_name.startswith("vision_model.") else "row"


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
    decoder fed by the pruned encoder; pads left out by each tower's token masks; Wanda's group per
    tower) gives exactly what hooks in full forwards give."""
    towers = ALL_T5_TOWERS if kind == "t5" else ["vision", "qformer", "decoder"]
    fast, slow = tiny(kind, prune_towers=towers), tiny(kind, prune_towers=towers)
    plan = {b.name: 0.3 + 0.1 * (i % 4) for i, b in enumerate(fast.blocks())}
    SequentialEngine(fast, pruner, plan).run(batches(fast))
    prune_by_full_forwards(slow, pruner, plan, batches(slow), group_of=official_group,
                           tokens=language_real_tokens(slow))
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
    lengths = batch["decoder_attention_mask"].sum(1).tolist()
    prefix_lengths = batch["attention_mask"].sum(1).tolist()
    # padded to the longest of the batch (LAVIS's padding="longest"), not to max_text_tokens
    assert batch["labels"].shape == (2, max(lengths)) and batch["input_ids"].shape == (2, max(prefix_lengths))
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
    assert len(ids) == end and (labels[: len(cut)] == -100).all()
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


def test_companions_receive_exactly_the_official_key_set():
    """ECoFLaP's evaluation loads the pruned `visual_encoder` (and, for the captioner, the whole
    `t5_model`) into the COCO-finetuned companion; `ln_vision` (transformers'
    vision_model.post_layernorm) is not part of it, so the companion keeps its own, as its Q-Former."""
    pruned = tiny("t5")
    SequentialEngine(pruned, WandaPruner(), {b.name: 0.5 for b in pruned.blocks()}).run(batches(pruned))
    with torch.no_grad():
        pruned.model.vision_model.post_layernorm.weight.fill_(2.0)
    state = pruned.model.state_dict()
    for companion in (tiny("itm", seed=5), tiny("t5", seed=5)):
        own = {k: v.clone() for k, v in companion.model.state_dict().items()}
        companion.load_weights(state, companion.transfer_prefixes, "pruned")
        after = companion.model.state_dict()
        received = {k for k in after if not torch.equal(after[k], own[k])}
        expected = {k for k in own if k.startswith(("vision_model.embeddings.", "vision_model.encoder."))}
        if isinstance(companion, Blip2Adapter):
            expected |= {k for k in own if k.startswith("language_model.")}
        assert received <= expected and {k for k in expected if not torch.equal(after[k], state[k])} == set()
        assert torch.equal(after["vision_model.post_layernorm.weight"], own["vision_model.post_layernorm.weight"])
        assert all(torch.equal(after[k], own[k]) for k in own if k.startswith(("qformer.", "query_tokens")))
    with pytest.raises(UserError, match="language_model.* has no counterpart in Blip2ITMAdapter"):
        tiny("itm").load_weights(state, ["language_model."], "pruned")


def dense_column_norms(adapter, block_name):
    """Sum over calibration tokens (real ones) of each squared input column of a block's matrices,
    hooked in full forwards of a dense model."""
    norms, current, tokens = {}, [], language_real_tokens(adapter)
    targets = next(b for b in adapter.blocks() if b.name == block_name).matrices

    def hook(m, args):
        x, _ = tokens(current[0], m, m.input_of(args, {}))
        norms[m.name] = norms.get(m.name, 0) + x.float().pow(2).sum(0)

    handles = [m.input_module.register_forward_hook(lambda mod, args, out, m=m: hook(m, args)) for m in targets]
    with torch.no_grad():
        for batch in batches(adapter):
            current[:] = [batch]
            adapter.forward(batch)
    for h in handles:
        h.remove()
    return {m.name: (m.weight.abs() * norms[m.name].sqrt(), m) for m in targets}


@pytest.mark.parametrize(("block", "group"), [("vision_model.encoder.layers.0", "matrix"),
                                              ("language_model.encoder.block.0", "row"),
                                              ("language_model.decoder.block.0", "row")])
def test_wanda_compares_the_vit_per_matrix_and_t5_per_row_as_the_official_code(block, group):
    """Against an independent selection from column norms hooked in full forwards of a dense twin:
    a ViT block loses the round(n p) smallest |W| ||X|| of each whole matrix, a T5 block the cols p
    smallest of every row (real tokens only)."""
    adapter = tiny("t5")
    plan = {b.name: 0.5 if b.name == block else 0.0 for b in adapter.blocks()}
    reports = SequentialEngine(adapter, WandaPruner(), plan).run(batches(adapter))
    assert {r.group for r in reports if r.block == block} == {group}
    pruned = {m.name: m.weight for m in adapter.matrices()}
    for name, (metric, _) in dense_column_norms(tiny("t5"), block).items():
        expected = torch.zeros_like(metric, dtype=torch.bool)
        if group == "matrix":
            expected.view(-1)[torch.sort(metric.flatten(), stable=True).indices[: round(metric.numel() * 0.5)]] = True
            assert len(set((pruned[name] == 0).sum(1).tolist())) > 1  # rows lose different counts
        else:
            expected.scatter_(1, torch.sort(metric, dim=1, stable=True).indices[:, : metric.shape[1] // 2], True)
        assert torch.equal(pruned[name] == 0, expected), name


def test_each_tower_declares_its_group_and_the_option_overrides_all():
    assert {t.name: t.wanda_group for t in tiny("t5").towers()} == {"vision": "matrix", "encoder": "row",
                                                                    "decoder": "row"}
    assert {t.name: t.wanda_group for t in tiny("opt").towers()} == {"vision": "matrix", "decoder": "row"}
    adapter = tiny("t5")
    reports = SequentialEngine(adapter, WandaPruner("row"), {b.name: 0.5 for b in adapter.blocks()}).run(
        batches(adapter))
    assert {r.group for r in reports} == {"row"}
    with pytest.raises(UserError, match="pruner.group='col' is unknown; use one of row, matrix"):
        WandaPruner("col")


def test_evaluation_prompts_are_not_truncated():
    """LAVIS truncates calibration text at max_txt_len (32) but never an evaluation prompt: a long
    question keeps its "Short answer:"."""
    for kind in ("t5", "opt"):
        adapter = tiny(kind)
        question = "Question: " + "is this a long question about the picture " * 2 + "? Short answer:"
        assert len(adapter.encode([question], truncate=False)[0]) > 40
        seen = []
        lm = adapter.model.language_model
        original = lm.generate
        lm.generate = lambda seen=seen, original=original, **kw: seen.append(kw["inputs_embeds"].shape[1]) or original(
            **kw)
        adapter.generate(images(1), [question], num_beams=1, max_new_tokens=2)
        queries = adapter.model.config.num_query_tokens
        t5 = isinstance(adapter.head, T5Head)
        bos = 0 if t5 or adapter.tokenizer.bos_token_id is None else 1
        eos = 1 if t5 else 0
        assert seen == [queries + len(question) + bos + eos]  # bytes tokenizer: a token per character
        assert len(adapter.encode([question])[0]) == 32  # calibration text is still cut at max_text_tokens


def test_calibration_images_get_lavis_training_view_seeded():
    from ecoflap_exp.data.base import CalibrationSource

    class Pairs(CalibrationSource):
        kind = "image_captions"

        def __init__(self, augment, seed):
            super().__init__(num_samples=4, batch_size=2, seed=seed)
            self.augment = augment

        def samples(self, adapter, count=None):
            return list(zip(images(4, size=48), CAPTIONS[:4], strict=True))

    adapter = tiny("t5")
    assert adapter.calibration_augment == "train"  # ECoFLaP's CC3M calibration view

    def pixels(augment, seed):
        return torch.cat([b["pixel_values"] for b in Pairs(augment, seed).batches(adapter)])

    assert torch.equal(pixels("train", 0), pixels("train", 0))
    assert not torch.equal(pixels("train", 0), pixels("train", 1))
    assert torch.equal(pixels("eval", 0), torch.stack([adapter.preprocess(i) for i in images(4, size=48)]))
    assert not torch.equal(pixels("train", 0), pixels("eval", 0))
    state = torch.random.get_rng_state()
    pixels("train", 3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's own random stream is untouched


def test_pads_enter_the_statistics_only_where_the_official_run_lets_them():
    """pads_in_stats (ECoFLaP's zeroth-order run, batches of 8 hooked at every position): the T5 encoder's
    statistics equal every token's, pads included; by default the real tokens' only."""
    from ecoflap_exp.input_stats import ColumnNorms
    from ecoflap_exp.walk import capture_inputs, collect_stats

    adapter = tiny("t5")
    encoder = next(t for t in adapter.towers() if t.name == "encoder")
    block = encoder.blocks[0]
    data = batches(adapter)
    inputs = capture_inputs(adapter, encoder, data)
    assert any(not b["attention_mask"].all() for b in data)  # the captions are padded
    q = block.matrices[0]
    seen = []
    handle = q.input_module.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for inp in inputs:
            encoder.run_block(block, inp)
    handle.remove()
    every = torch.cat(seen).float().pow(2).sum(0) / 8
    with_pads = collect_stats(encoder, block, inputs, ColumnNorms, adapter.device, pads=True)[q]
    torch.testing.assert_close(with_pads.sq_norms, every, rtol=1e-5, atol=1e-6)
    without = collect_stats(encoder, block, inputs, ColumnNorms, adapter.device)[q]
    assert not torch.allclose(without.sq_norms, every)
