"""Gemma 3 (a tiny random model of the real class, one sliding-window block with a window of 8 and one
global block over conversations of about 100 tokens): each language block gets the mask and rotary table
of its own kind, as the model's forward hands them over, the image's tokens attending both ways; the
projector's transposed matrix pruned by Wanda as by hand; the engine equals the full-forward reference in
every tower; Gemma's chat template with the loss on the answers; runs through run.py."""

import pytest
import torch

from ecoflap_exp.data.caption_pairs import ImageCaptionCalibration
from ecoflap_exp.data.conversations import ConversationCalibration
from ecoflap_exp.models.adapter import IGNORE
from ecoflap_exp.models.gemma3 import Gemma3Adapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.runner import run
from ecoflap_exp.scoring.first import first_order_matrix_scores
from tests.fixtures import write_caption_pairs, write_llava_conversations
from tests.integration.test_run import config
from tests.integration.test_vlm_runs import tower_sparsity
from tests.models.test_chat import (
    SAMPLES,
    answers_of,
    pruned_and_reloaded,
    real_tokens_of,
    recorded_inputs,
    walked_as_the_model_hands_them,
)
from tests.pruning.test_engine import assert_same_pruning, prune_by_full_forwards

ALL_TOWERS = ["vision", "projector", "language"]
#: the tiny architecture's window (models/arch/gemma3_tiny.json) and Gemma 3's rotary bases
#: (Gemma3TextConfig.default_theta: local 10k, global 1M)
WINDOW, LOCAL_BASE, GLOBAL_BASE = 8, 10_000.0, 1_000_000.0


def make(dtype="float32", towers=ALL_TOWERS):
    return Gemma3Adapter(arch="gemma3_tiny", init="random", tokenizer="bytes", dtype=dtype, max_tokens=512,
                         prune_towers=list(towers))


def batches_of(adapter):
    return [adapter.collate(SAMPLES[i : i + 2]) for i in (0, 2)]


def language_tower(adapter):
    return next(t for t in adapter.towers() if t.name == "language")


def expected_mask(batch, window=None):
    """Gemma 3's attention by hand: a real key at or before the query (within the window for a
    sliding block), or any key of the same image when the query is one of that image's tokens."""
    real = batch["attention_mask"].bool()
    image = batch["token_type_ids"] == 1
    starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
    group = torch.where(image, starts.cumsum(1), -1)
    q = torch.arange(real.shape[1])[:, None]
    k = torch.arange(real.shape[1])[None, :]
    same_image = (group[:, :, None] == group[:, None, :]) & image[:, :, None]
    allowed = (k <= q) | same_image
    if window is not None:
        allowed &= k > q - window
    return (allowed & real[:, None, :])[:, None]


def rotary_by_hand(positions, base, dim):
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    angles = positions[..., None].float() * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def test_each_language_block_gets_the_mask_and_rotary_table_of_its_kind():
    """Block 0 slides (window 8, local base), block 1 is global (global base), as the model's own
    forward hands them; the sequence outruns the window and holds an image, so the two kinds differ,
    and a block handed the other kind's mask or table computes something else."""
    adapter = make()
    batch = adapter.collate(SAMPLES[:2])
    assert batch["input_ids"].shape[1] > 4 * WINDOW
    text = adapter.model.config.text_config
    assert text.layer_types == ["sliding_attention", "full_attention"]
    # the image's soft tokens are marked, nothing else (pads 0)
    image_id = adapter.tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert torch.equal(batch["token_type_ids"] == 1, batch["input_ids"] == image_id)
    assert (batch["token_type_ids"] == 1).sum(1).tolist() == [adapter.model.config.mm_tokens_per_image] * 2
    tower = language_tower(adapter)
    sliding, full = (recorded_inputs(adapter, tower, batch)[b.name] for b in tower.blocks)
    assert torch.equal(sliding.kwargs["attention_mask"], expected_mask(batch, WINDOW))
    assert torch.equal(full.kwargs["attention_mask"], expected_mask(batch))
    positions = torch.arange(batch["input_ids"].shape[1])[None]
    for inp, base in ((sliding, LOCAL_BASE), (full, GLOBAL_BASE)):
        cos, sin = inp.kwargs["position_embeddings"]
        want_cos, want_sin = rotary_by_hand(positions, base, text.head_dim)
        torch.testing.assert_close(cos, want_cos)
        torch.testing.assert_close(sin, want_sin)
    with torch.no_grad():
        for block, own, other in ((tower.blocks[0], sliding, full), (tower.blocks[1], full, sliding)):
            out = block.module(own.hidden, **own.kwargs)
            for key in ("attention_mask", "position_embeddings"):
                swapped = block.module(own.hidden, **(own.kwargs | {key: other.kwargs[key]}))
                assert not torch.allclose(out, swapped), (block.name, key)


def test_captured_block_inputs_are_what_the_model_hands_its_blocks():
    """walk_tower's inputs of every block, all towers, against pre-hooks on the model's own forward."""
    adapter = make()
    assert sum(1 for _ in walked_as_the_model_hands_them(adapter, batches_of(adapter))) > 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sequential_engine_equals_full_forward_reference(dtype):
    """Wanda around 0.5 in every block of every tower, projector included, padded batches."""
    fast, slow = make(dtype), make(dtype)
    plan = {b.name: s for b, s in zip(fast.blocks(), [0.3, 0.6, 0.5, 0.4, 0.7], strict=True)}
    SequentialEngine(fast, WandaPruner(), plan).run(batches_of(fast))
    prune_by_full_forwards(slow, WandaPruner(), plan, batches_of(slow), tokens=real_tokens_of(slow))
    assert_same_pruning(fast, slow)
    assert all((m.weight == 0).any() for m in fast.matrices())


def test_projector_is_pruned_per_text_output_as_wanda_by_hand():
    """The projection x @ W with W (vision width 32, text width 48): Wanda keeps, in each of the 48
    output columns of W, the half of its 32 weights with the largest |W| x ||x|| over the RMSNorm's
    outputs, the matmul's input recorded during the model's own forward."""
    adapter = make(towers=["projector"])
    projector = adapter.model.model.multi_modal_projector
    weight = projector.mm_input_projection_weight.detach().clone()
    assert weight.shape == (32, 48)
    batches = batches_of(adapter)
    normed = []
    handle = projector.mm_soft_emb_norm.register_forward_hook(lambda m, args, out: normed.append(out))
    with torch.no_grad():
        for batch in batches:
            adapter.forward(batch)
    handle.remove()
    x = torch.cat([n.reshape(-1, 32) for n in normed])
    metric = weight.abs() * x.pow(2).sum(0).sqrt()[:, None]  # (inputs, outputs)
    pruned = metric.argsort(dim=0)[:16]  # the 16 lowest of each output's 32
    want = torch.zeros_like(weight, dtype=torch.bool).scatter_(0, pruned, True)
    SequentialEngine(adapter, WandaPruner(), {"model.multi_modal_projector": 0.5}).run(batches)
    after = projector.mm_input_projection_weight.detach()
    assert torch.equal(after == 0, want)
    assert torch.equal(after[~want], weight[~want])
    # the model's projection is the matmul with the pruned parameter
    with torch.no_grad():
        features = adapter.model.model.get_image_features(batches[0]["pixel_values"]).pooler_output
        vision = adapter.model.model.vision_tower(pixel_values=batches[0]["pixel_values"]).last_hidden_state
    normed.clear()
    handle = projector.mm_soft_emb_norm.register_forward_hook(lambda m, args, out: normed.append(out))
    with torch.no_grad():
        projector(vision)
    handle.remove()
    torch.testing.assert_close(features, normed[0] @ after)


def test_first_order_score_of_the_projector_reads_its_gradient_in_the_matrix_orientation():
    """sum |W| |dL/dW| over the calibration batches' mean, by autograd on the parameter as it is."""
    adapter = make(towers=["projector"])
    batches = batches_of(adapter)
    param = adapter.model.model.multi_modal_projector.mm_input_projection_weight
    want = 0.0
    for batch in batches:
        (grad,) = torch.autograd.grad(adapter.loss(batch), param)
        want += float((param.detach().abs() * grad.abs()).sum()) / len(batches)
    got = first_order_matrix_scores(adapter, batches)
    assert got == {"model.multi_modal_projector.mm_input_projection_weight": pytest.approx(want, rel=1e-5)}


def test_llava_conversations_and_cc3m_pairs_in_gemmas_template_with_the_loss_on_the_answers(tmp_path):
    """LLaVA's instruction file and a CC3M pair file as the calibration sources read them: rendered in
    Gemma 3's chat template (the assistant is `model`, every turn closed by <end_of_turn> and a newline,
    the image expanded by the processor where <start_of_image> is), the targets exactly each answer and
    its <end_of_turn>."""
    adapter = make()
    llava = ConversationCalibration(str(write_llava_conversations(tmp_path / "llava")), num_samples=2,
                                    batch_size=2, shuffle=False)
    pairs = write_caption_pairs(tmp_path / "cc3m")
    cc3m = ImageCaptionCalibration(str(pairs["tsv"]), num_samples=1, batch_size=1)
    batch = adapter.collate(llava.samples(adapter) + cc3m.samples(adapter))
    image = ("\n\n<start_of_image>" + "<image_soft_token>" * 4 + "<end_of_image>\n\n")
    texts = [adapter.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["input_ids"],
                                                                             batch["attention_mask"], strict=True)]
    assert texts == [
        f"<bos><start_of_turn>user\n{image}What are the colors of the bus in the image?<end_of_turn>\n"
        "<start_of_turn>model\nThe bus in the image is white and red.<end_of_turn>\n"
        "<start_of_turn>user\nWhat feature can be seen on the back of the bus?<end_of_turn>\n"
        "<start_of_turn>model\nThe back of the bus features an advertisement.<end_of_turn>\n",
        f"<bos><start_of_turn>user\n{image}Is the sky dark?\nAnswer the question using a single word or phrase."
        "<end_of_turn>\n<start_of_turn>model\nYes<end_of_turn>\n",
        f"<bos><start_of_turn>user\n{image}Provide a one-sentence caption for the provided image.<end_of_turn>\n"
        "<start_of_turn>model\na photo of a cat<end_of_turn>\n",
    ]
    assert answers_of(adapter, batch) == [
        "The bus in the image is white and red.<end_of_turn>\nThe back of the bus features an advertisement."
        "<end_of_turn>\n", "Yes<end_of_turn>\n", "a photo of a cat<end_of_turn>\n"]
    # each target is its own token (labels are the ids), the answers' runs contiguous per turn
    targets = batch["labels"] != IGNORE
    assert torch.equal(batch["labels"][targets], batch["input_ids"][targets])
    assert not (targets & (batch["attention_mask"] == 0)).any()


@pytest.mark.slow
def test_run_with_zeroth_order_scores_reaches_exactly_the_target(tmp_path):
    """run.py with ECoFLaP's zeroth-order block scores over every tower: the blocks' sparsities differ,
    each matrix prunes its share of the target's exact count, so the model is exactly 0.5 pruned."""
    record = run(config(tmp_path, "model=gemma3_tiny", "suite=none", "calib=digits", "scorer=zeroth",
                        "scorer.num_samples=8", "sparsity=0.5", "calib.num_samples=8", "calib.batch_size=4",
                        "model.prune_towers=[vision,projector,language]"))
    assert record.achieved.overall == 0.5
    per_tower = tower_sparsity(record)
    assert set(per_tower) == set(ALL_TOWERS)
    for tower, (planned, achieved) in per_tower.items():
        assert achieved == pytest.approx(planned, abs=1e-3), tower
    assert len(set(record.plan.values())) > 1


def test_answers_come_from_gemmas_generation_prompt_and_a_pruned_model_reloads(tmp_path):
    """Generation prompts end in `<start_of_turn>model\\n` with one image per prompt; the pruned model and
    its processor reload with transformers' Auto classes, zeros (the projector's too) and logits kept."""
    from tests.models.test_chat import SHORT_ANSWER, image

    adapter = make()
    seen = []
    original = type(adapter.processor).__call__
    spy = {"__call__": lambda self, *args, **kwargs: seen.append(kwargs["text"]) or original(self, *args, **kwargs)}
    adapter.processor.__class__ = type("Spied", (type(adapter.processor),), spy)
    answers = adapter.generate([image(0), image(1, (64, 32))], [SHORT_ANSWER.format("What is it?"), "Why?"],
                               max_new_tokens=3, num_beams=1, min_length=None)
    assert len(answers) == 2
    assert seen[-1] == ["<bos><start_of_turn>user\n<start_of_image>What is it?\nAnswer the question using a single "
                        "word or phrase.<end_of_turn>\n<start_of_turn>model\n",
                        "<bos><start_of_turn>user\n<start_of_image>Why?<end_of_turn>\n<start_of_turn>model\n"]
    adapter = make()
    reloaded = pruned_and_reloaded(adapter, batches_of(adapter), tmp_path / "saved")
    batch = adapter.collate(SAMPLES[:2])
    assert torch.equal(reloaded.collate(SAMPLES[:2])["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.forward(batch), adapter.forward(batch))
    for m in adapter.matrices():  # the projector's matrix is named as its parameter, a Linear's as its module
        saved = reloaded.model.get_parameter(m.name if m.transposed else f"{m.name}.weight")
        assert torch.equal(m.part(saved) == 0, m.weight == 0), m.name
