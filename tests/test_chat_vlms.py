"""LLaVA-1.5 and Qwen2-VL (tiny random models of the real classes): calibration conversations
through the processor and chat template with the loss on the answers only; the block inputs the
engine captures are what the model's own forward hands its blocks (rotary embeddings, M-RoPE,
cu_seqlens, masks); the engine equals a slow reference that re-runs the whole model per block
(vision, projector, language; fp32 and bf16; padded batches); zeroth-order prefix reuse across the
image-token splice; runs through run.py; the VQA protocol of chat models and TextVQA."""

import json
from functools import partial

import pytest
import torch
from fixtures import LLAVA_ENTRIES, write_llava_conversations
from fixtures_vqa import TEXTVQA_VAL, write_textvqa
from PIL import Image
from test_engine import assert_same_pruning, prune_by_full_forwards
from test_run import config
from test_vlm_runs import tower_sparsity

from ecoflap_exp.data.conversations import ConversationCalibration, read_conversations
from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.vqa import VQAAccuracy
from ecoflap_exp.models.adapter import IGNORE
from ecoflap_exp.models.llava import LlavaAdapter
from ecoflap_exp.models.qwen2_vl import Qwen2VLAdapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.runner import run
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer, count_block_forwards
from ecoflap_exp.walk import walk_tower

ADAPTERS = {"llava_tiny": LlavaAdapter, "qwen2vl_tiny": Qwen2VLAdapter}
ALL_TOWERS = ["vision", "projector", "language"]
SHORT_ANSWER = "{}\nAnswer the question using a single word or phrase."
#: haotian-liu/LLaVA llava/conversation.py, conv_vicuna_v1.system
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
                 "detailed, and polite answers to the user's questions.")


def make(arch, dtype="float32", towers=ALL_TOWERS, **settings):
    extra = {"min_pixels": 1024, "max_pixels": 4096} if arch == "qwen2vl_tiny" else {}
    return ADAPTERS[arch](arch=arch, init="random", tokenizer="bytes", dtype=dtype, max_tokens=512,
                          prune_towers=list(towers), **extra, **settings)


def image(seed, size=(40, 48)):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (*size, 3), generator=g, dtype=torch.uint8).numpy())


#: conversations of different lengths (so batches are padded), a two-round one, a caption pair
SAMPLES = [
    (image(0), (("human", "<image>\nWhat is on the table?"), ("gpt", "A red cup."), ("human", "And beside it?"),
                ("gpt", "A spoon"))),
    (image(1, (56, 40)), "a dog running on the beach"),
    (image(2), (("human", "Is it raining?\n<image>"), ("gpt", "No"))),
    (image(3, (32, 64)), (("human", "<image>\nDescribe the picture in detail."),
                          ("gpt", "A small boat floats on a calm lake under a grey sky."))),
]


def batches_of(adapter, size=2):
    return [adapter.collate(SAMPLES[i : i + size]) for i in range(0, len(SAMPLES), size)]


def answers_of(adapter, batch):
    """The tokens that carry a target, decoded per sample."""
    return [adapter.tokenizer.decode([t for t, label in zip(ids.tolist(), labels.tolist(), strict=True)
                                      if label != IGNORE])
            for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True)]


def test_labels_are_the_answers_each_ending_its_turn():
    llava, qwen = make("llava_tiny"), make("qwen2vl_tiny")
    batch = llava.collate(SAMPLES)
    # LLaVA's vicuna_v1 closes each answer with "</s>", no space between (llava/conversation.py: message + sep2)
    assert answers_of(llava, batch) == [" A red cup.</s> A spoon</s>", " a dog running on the beach</s>", " No</s>",
                                        " A small boat floats on a calm lake under a grey sky.</s>"]
    assert answers_of(qwen, qwen.collate(SAMPLES)) == [
        "A red cup.<|im_end|>\nA spoon<|im_end|>\n", "a dog running on the beach<|im_end|>\n", "No<|im_end|>\n",
        "A small boat floats on a calm lake under a grey sky.<|im_end|>\n"]
    # the image goes first in the first human turn whatever its place in the text; a caption pair
    # becomes LLaVA-1.5's caption instruction; nothing but the answers is a target
    image_id = llava.processor.image_token_id
    prompts = [llava.tokenizer.decode([t for t, label, real in zip(*rows, strict=True)
                                       if label == IGNORE and real and t != image_id])
               for rows in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                               batch["attention_mask"].tolist(), strict=True)]
    assert prompts[1:3] == [f"{VICUNA_SYSTEM} USER: \nProvide a one-sentence caption for the provided image. "
                            "ASSISTANT:", f"{VICUNA_SYSTEM} USER: \nIs it raining? ASSISTANT:"]
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [16] * 4  # (32 / 8)^2 patches, CLS dropped
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()


@pytest.mark.parametrize("arch", ADAPTERS)
def test_a_padded_batch_has_the_loss_of_its_samples(arch):
    """Token-mean over the answers of the batch = the per-sample losses weighted by answer tokens."""
    adapter = make(arch)
    with torch.no_grad():
        batch = adapter.collate(SAMPLES)
        alone = [adapter.collate([s]) for s in SAMPLES]
        counts = [int((b["labels"][:, 1:] != IGNORE).sum()) for b in alone]
        expected = sum(adapter.loss(b).item() * n for b, n in zip(alone, counts, strict=True)) / sum(counts)
        assert adapter.loss(batch).item() == pytest.approx(expected, rel=1e-5)


def recorded_inputs(adapter, tower, batch):
    """What the model's own forward hands each block of the tower, as the tower splits it."""
    seen = {}

    def keep(module, args, kwargs, name):
        seen[name] = tower.split_input(args, kwargs)

    handles = [b.module.register_forward_pre_hook(partial(keep, name=b.name), with_kwargs=True)
               for b in tower.blocks]
    try:
        with torch.no_grad():
            adapter.forward(batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def assert_same_value(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=where)
    elif isinstance(a, tuple | list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_value(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_value(a[key], b[key], f"{where}.{key}")
    else:
        assert a == b, where


@pytest.mark.parametrize("arch", ADAPTERS)
def test_captured_block_inputs_are_what_the_model_hands_its_blocks(arch):
    adapter = make(arch)
    batches = batches_of(adapter)
    for tower in adapter.towers():
        expected = [recorded_inputs(adapter, tower, batch) for batch in batches]
        with torch.no_grad():
            for block, inputs in walk_tower(adapter, tower, batches, adapter.device):
                for b, (inp, want) in enumerate(zip(inputs, expected, strict=True)):
                    where = f"{block.name} batch {b}"
                    assert_same_value(inp.hidden, want[block.name].hidden, where)
                    assert_same_value(inp.args, want[block.name].args, where)
                    assert_same_value(inp.kwargs, want[block.name].kwargs, where)
                    if tower.name == "language":
                        assert torch.equal(inp.masks["hidden"], batches[b]["attention_mask"].bool())
                    else:
                        assert inp.masks == {}


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


def real_tokens_of(adapter):
    """The slow reference's choice of tokens, written from the models' inputs: the language
    model's non-pad tokens, every vision and projector token (batch entries, or 1 for the
    patch sequence of Qwen2-VL's ViT, count as samples)."""
    language = {m.name for m in next(t for t in adapter.towers() if t.name == "language").blocks[0].matrices}
    prefix = {name.rsplit(".", 3)[0] for name in language}

    def tokens(batch, matrix, x):
        if matrix.name.startswith(tuple(prefix)):
            mask = batch["attention_mask"].bool()
            return x[mask], mask.shape[0]
        return x.reshape(-1, x.shape[-1]), x.shape[0] if x.dim() > 2 else 1

    return tokens


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("pruner", [WandaPruner(), SparseGPTPruner(blocksize=16)], ids=["wanda", "sparsegpt"])
@pytest.mark.parametrize("arch", ADAPTERS)
def test_sequential_engine_equals_full_forward_reference(arch, pruner, dtype):
    """Vision, then projector, then the language model fed the pruned towers' image features."""
    fast, slow = make(arch, dtype), make(arch, dtype)
    plan = {b.name: s for b, s in zip(fast.blocks(), [0.3, 0.6, 0.5, 0.4, 0.7], strict=False)}
    plan |= {b.name: 0.5 for b in fast.blocks() if b.name not in plan}
    SequentialEngine(fast, pruner, plan).run(batches_of(fast))
    prune_by_full_forwards(slow, pruner, plan, batches_of(slow), tokens=real_tokens_of(slow))
    assert_same_pruning(fast, slow)


def test_vision_layers_after_llavas_feature_layer_are_not_blocks():
    """LLaVA-1.5 reads the second-to-last ViT layer: the last one changes nothing and is not a
    block; the deepest block does change the logits."""
    adapter = make("llava_tiny")
    layers = adapter.model.model.vision_tower.encoder.layers
    vision = adapter.towers()[0]
    assert [b.module for b in vision.blocks] == list(layers[:-1])
    batch = adapter.collate(SAMPLES[:2])
    with torch.no_grad():
        before = adapter.forward(batch)
        for p in layers[-1].parameters():
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(adapter.forward(batch), before, rtol=0, atol=0)
        for p in vision.blocks[-1].module.parameters():
            p.add_(torch.randn_like(p))
        assert not torch.allclose(adapter.forward(batch), before)


@pytest.mark.parametrize("arch", ADAPTERS)
def test_zeroth_prefix_reuse_across_the_image_splice_changes_nothing_but_cost(arch):
    adapter = make(arch)
    batches = batches_of(adapter)
    scores, forwards = {}, {}
    for reuse in (True, False):
        with count_block_forwards(adapter) as counter:
            scores[reuse] = ZerothOrderScorer(num_samples=4, granularity="matrix", reuse_prefix=reuse).scores(
                adapter, batches)
        forwards[reuse] = counter.by_tower
    assert scores[True] == pytest.approx(scores[False], rel=1e-5)
    assert all(v > 0 for v in scores[True].values())
    # 2 batches, 2 losses each; naive: every perturbation runs both vision blocks
    matrices = len(list(adapter.matrices()))
    assert forwards[False]["vision"] == matrices * 2 * 2 * 2
    # prefix: vision block 0's m matrices run 2 blocks, block 1's run 1 (m = 6 CLIP, 4 Qwen2-VL
    # with its fused qkv), the walk runs each block once per batch, the projector's capture once
    # more (LLaVA's ViT output is stored then); Qwen2-VL's ViT holds the merger, so it runs while
    # the merger (2 matrices) is perturbed and its output is first stored at the language model's
    # capture; while the language model is perturbed, the vision tower is never run (served)
    per_block = len(adapter.towers()[0].blocks[0].matrices)
    merger = 2 * 2 * 2 * 2 + 4 if arch == "qwen2vl_tiny" else 0
    assert forwards[True]["vision"] == per_block * 2 * 2 * (2 + 1) + 4 + 4 + merger


def test_conversation_file_reader_skips_text_only_entries_and_rejects_malformed_ones(tmp_path):
    path = write_llava_conversations(tmp_path / "llava")
    items = read_conversations(str(path))
    assert [p.relative_to(tmp_path / "llava").as_posix() for p, _ in items] == [
        image for image, _ in LLAVA_ENTRIES if image is not None]
    assert items[0][1][1] == ("gpt", "The bus in the image is white and red.")
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "7", "image": "a.jpg", "conversations": [{"from": "bot", "value": "x"}]}]')
    with pytest.raises(UserError, match="entry 0 .id '7'"):
        read_conversations(str(broken))
    with pytest.raises(UserError, match="llava_v1_5_mix665k"):
        read_conversations(str(tmp_path / "missing.json"))
    source = ConversationCalibration(str(path), num_samples=4, batch_size=2, shuffle=False)
    adapter = make("llava_tiny")
    (first, _) = source.batches(adapter)
    assert answers_of(adapter, first)[0] == (" The bus in the image is white and red.</s> The back of the bus "
                                             "features an advertisement.</s>")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ADAPTERS)
def test_run_from_llava_conversations_reaches_exactly_the_target(tmp_path, arch):
    """run.py as documented, on a file in LLaVA's format: uniform Wanda reaches exactly 0.5 in every
    tower (every row prunes half of an even number of columns)."""
    path = write_llava_conversations(tmp_path / "data" / "llava")
    record = run(config(tmp_path, f"model={arch}", "suite=none", "calib=llava_instruct", f"calib.annotations={path}",
                        "calib.num_samples=4", "calib.batch_size=2", "scorer=uniform", "sparsity=0.5",
                        "model.prune_towers=[vision,projector,language]"))
    assert record["achieved"]["overall"] == 0.5
    assert {t: achieved for t, (_, achieved) in tower_sparsity(record).items()} == {t: 0.5 for t in ALL_TOWERS}


SCORERS = ["zeroth", "first", "id", "id_zeroth", "id_first", "owl", "id_paper"]


@pytest.mark.slow
@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("arch", ADAPTERS)
def test_every_scorer_reaches_the_plan_per_tower(tmp_path, arch, scorer):
    extra = {"zeroth": ["scorer.num_samples=16"], "id_zeroth": ["scorer.factors.0.num_samples=16"],
             # the ID paper's rule: per-matrix IDs, one global threshold over |W| ||X|| x ID
             "id_paper": ["scorer.num_samples=104", "+experiment/method=id_wanda"]}.get(scorer, [])
    record = run(config(tmp_path, f"model={arch}", "suite=none", "calib=digits", f"scorer={scorer}",
                        "sparsity=0.5", "calib.num_samples=16", "calib.batch_size=8", *extra))
    per_tower = tower_sparsity(record)
    assert set(per_tower) == {"vision", "language"}
    for tower, (planned, achieved) in per_tower.items():
        assert achieved == pytest.approx(planned, abs=2e-3), tower
    assert record["achieved"]["overall"] == pytest.approx(0.5, abs=2e-3)
    assert len(set(record["plan"].values())) > 1


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["sparsegpt", "magnitude"])
@pytest.mark.parametrize("arch", ADAPTERS)
def test_other_pruners_run(tmp_path, arch, pruner):
    record = run(config(tmp_path, f"model={arch}", "suite=none", "calib=digits", "scorer=uniform",
                        f"pruner={pruner}", "sparsity=0.5", "calib.num_samples=8", "calib.batch_size=4"))
    assert record["achieved"]["overall"] == pytest.approx(0.5, abs=1e-3)


def test_chat_models_answer_from_their_template_and_textvqa_scores_as_vqa(tmp_path, monkeypatch):
    """The short-answer prompt inside the chat template, the question as written; the generated
    answer is the new tokens only; TextVQA's ten answers scored as VQAv2."""
    files = write_textvqa(tmp_path)
    adapter = make("llava_tiny")
    prompt = SHORT_ANSWER.format("What does the sign say?")
    assert adapter.render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
                          generation_prompt=True) == (f"{VICUNA_SYSTEM} USER: <image>\nWhat does the sign say?\n"
                                                      "Answer the question using a single word or phrase. ASSISTANT:")
    answers = adapter.generate([image(0), image(1, (64, 32))], [prompt, SHORT_ANSWER.format("Why?")],
                               max_new_tokens=4, num_beams=1, min_length=None)
    assert len(answers) == 2 and not any("ASSISTANT" in a or "Answer the" in a for a in answers)
    seen = []

    def canned(images, prompts, **generation):
        seen.extend(prompts)
        return ["dakota", "Copenhagen", "stone ale"][: len(prompts)]

    monkeypatch.setattr(adapter, "generate", canned)
    metrics = VQAAccuracy("textvqa", str(files["annotations"]), str(files["images"]), normaliser="official",
                          prompt=SHORT_ANSWER, clean_question=False, batch_size=4).evaluate(adapter)
    assert seen == [SHORT_ANSWER.format(q) for _, _, q, _ in TEXTVQA_VAL]
    # dakota: 5 of 10 -> 1.0; copenhagen: 9 of 10 -> 1.0; "stone ale": 1 of 10 -> mean over the ten
    # leave-one-out subsets of min(matches / 3, 1) = (9 * 1/3 + 0) / 10 = 0.3
    assert metrics["accuracy"] == pytest.approx(100 * (1 + 1 + 0.3) / 3)


@pytest.mark.parametrize("arch", ADAPTERS)
def test_a_pruned_model_saves_in_transformers_format_with_its_processor(tmp_path, arch):
    import transformers

    adapter = make(arch)
    SequentialEngine(adapter, WandaPruner(), {b.name: 0.5 for b in adapter.blocks()}).run(batches_of(adapter))
    adapter.save(tmp_path / "saved")
    model = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "saved").eval()
    folder = tmp_path / "saved"
    if arch == "qwen2vl_tiny":
        processor = transformers.AutoProcessor.from_pretrained(folder)
    else:
        # transformers replaces the tokenizer class a llava folder names (llava is on its list of hub
        # configs with a wrong class), which the tiny model's byte tokenizer does not survive; so the
        # processor is assembled from the saved parts (a real checkpoint's loads with AutoProcessor)
        saved = json.loads((folder / "processor_config.json").read_text())
        processor = transformers.LlavaProcessor(
            image_processor=transformers.CLIPImageProcessor.from_pretrained(folder),
            tokenizer=transformers.ByT5Tokenizer.from_pretrained(folder),
            chat_template=(folder / "chat_template.jinja").read_text(),
            **{k: saved[k] for k in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens")})
    assert type(model) is type(adapter.model) and processor.chat_template == adapter.processor.chat_template
    reloaded = ADAPTERS[arch].__new__(ADAPTERS[arch])
    reloaded.model, reloaded.processor, reloaded.max_tokens = model, processor, adapter.max_tokens
    batch = adapter.collate(SAMPLES[:2])
    assert torch.equal(reloaded.collate(SAMPLES[:2])["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.forward(batch), adapter.forward(batch))
    for m in adapter.matrices():
        assert torch.equal(model.get_parameter(m.name + ".weight") == 0, m.weight == 0), m.name


def test_qwen2vl_vision_ids_are_measured_per_image_not_per_patch(monkeypatch):
    """The ViT's blocks see all of a batch's patches as one sequence; the ID store gets one vector
    per image (the flattened patches of each, the shorter padded), each image's rows its own."""
    from ecoflap_exp.scoring import intrinsic_dim
    from ecoflap_exp.scoring.intrinsic_dim import IntrinsicDimensionScorer, representation

    rows = torch.arange(12.0).reshape(6, 2)
    flat = representation(rows, "flatten", sizes=(16, 8))  # shares 2:1 of 6 rows -> 4 and 2
    assert torch.equal(flat, torch.tensor([[[0.0, 1], [2, 3], [4, 5], [6, 7]], [[8, 9], [10, 11], [0, 0], [0, 0]]]))
    means = representation(rows, "mean", sizes=(16, 8))
    assert torch.equal(means, torch.stack([rows[:4].mean(0), rows[4:].mean(0)]))
    adapter = make("qwen2vl_tiny", towers=["vision", "projector"])
    added = []
    original = intrinsic_dim.VectorStore.add
    monkeypatch.setattr(intrinsic_dim.VectorStore, "add", lambda self, v: added.append(v.shape) or original(self, v))
    batches = [adapter.collate(SAMPLES[i : i + 2]) for i in range(0, 4, 2)] * 3  # 12 images for TwoNN
    IntrinsicDimensionScorer(granularity="matrix").scores(adapter, batches)
    assert added and all(shape[0] == 2 for shape in added)  # two images per batch, in every tower


def test_long_conversations_are_cut_after_the_image_and_too_short_a_limit_is_named():
    adapter = make("llava_tiny")
    whole = adapter.collate(SAMPLES[:1])
    adapter.max_tokens = whole["input_ids"].shape[1] - 3
    cut = adapter.collate(SAMPLES[:1])
    assert torch.equal(cut["input_ids"], whole["input_ids"][:, : adapter.max_tokens])
    assert torch.equal(cut["labels"], whole["labels"][:, : adapter.max_tokens])
    adapter.max_tokens = 20  # the 16 image tokens fit, the first answer does not
    with pytest.raises(UserError, match="model.max_tokens=20"):
        adapter.collate(SAMPLES[:1])


def vicuna_v1_prompt(messages):
    """LLaVA's Conversation.get_prompt for SeparatorStyle.TWO (llava/conversation.py), conv_vicuna_v1:
    roles USER/ASSISTANT, sep " ", sep2 "</s>"; a None message is the slot to generate."""
    seps = [" ", "</s>"]
    ret = VICUNA_SYSTEM + seps[0]
    for i, (role, message) in enumerate(messages):
        ret += role + ": " + message + seps[i % 2] if message else role + ":"
    return ret


def test_llava_is_prompted_with_llavas_own_conversation_template():
    """Calibration and evaluation text as LLaVA-1.5's scripts build it: conv_vicuna_v1, `<image>\\n`
    before the first question (model_vqa_loader: DEFAULT_IMAGE_TOKEN + '\\n' + qs)."""
    adapter = make("llava_tiny")
    question = SHORT_ANSWER.format("What is on the table?")
    expected = vicuna_v1_prompt([("USER", "<image>\n" + question), ("ASSISTANT", None)])
    assert expected == (f"{VICUNA_SYSTEM} USER: <image>\nWhat is on the table?\nAnswer the question using a single "
                        "word or phrase. ASSISTANT:")
    seen = []
    original = adapter.processor.__call__

    def spy(*args, **kwargs):
        seen.append(kwargs["text"])
        return original(*args, **kwargs)

    adapter.processor.__class__ = type("Spied", (type(adapter.processor),),
                                       {"__call__": lambda self, *a, **k: spy(*a, **k)})
    adapter.generate([image(0)], [question], max_new_tokens=2, num_beams=1)
    assert seen[-1] == [expected]  # the byte tokenizer adds no BOS text
    turns = (("human", "<image>\nWhat is on the table?"), ("gpt", "A red cup."), ("human", "And beside it?"),
             ("gpt", "A spoon"))
    adapter.collate([(image(0), turns)])
    assert seen[-1] == [vicuna_v1_prompt([("USER", "<image>\nWhat is on the table?"), ("ASSISTANT", "A red cup."),
                                          ("USER", "And beside it?"), ("ASSISTANT", "A spoon")])]
    assert seen[-1][0].endswith("? ASSISTANT: A red cup.</s>USER: And beside it? ASSISTANT: A spoon</s>")


def sentencepiece_like_tokenizer(words=True):
    """A LLaMA-style (legacy SentencePiece) tokenizer: "▁" prepended to each text and for each space,
    pieces never crossing a "▁" boundary (`words`), one BOS added; so a text that starts with a space
    gets a lone "▁" token of its own, as Vicuna's slow tokenizer does."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    corpus = [VICUNA_SYSTEM, "USER: What is on the table? ASSISTANT: A red cup. USER: And beside it? ASSISTANT: "
              "A spoon"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    if words:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?:'\n▁")
    tok.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=300, initial_alphabet=alphabet,
                                                           special_tokens=["<unk>", "<s>", "</s>", "<image>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


def tokenizer_image_token(prompt, tokenizer):
    """llava/mm_utils.py tokenizer_image_token: each chunk between images tokenized with its BOS, one
    BOS kept, IMAGE_TOKEN_INDEX (-200) between the chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        ids.append(chunks[0][0])
    separated = [e for sublist in zip(chunks, [[-200] * (offset + 1)] * len(chunks), strict=True) for e in sublist][:-1]
    for x in separated:
        ids.extend(x[offset:])
    return ids


def llava_reference(conversation, tokenizer):
    """LLaVA's training ids and targets (llava/train/train.py preprocess_v1 for conv_vicuna_v1, a
    legacy tokenizer): per round split at "</s>", the instruction through "ASSISTANT: " masked
    (its token count less BOS and the trailing space's), the round's tokens and its "</s>" kept."""
    ids = tokenizer_image_token(conversation, tokenizer)
    target = list(ids)
    sep = " ASSISTANT: "
    cur_len = 1
    target[:cur_len] = [IGNORE]
    for rou in conversation.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        assert len(parts) == 2
        parts[0] += sep
        round_len = len(tokenizer_image_token(rou, tokenizer))
        instruction_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
        target[cur_len : cur_len + instruction_len] = [IGNORE] * instruction_len
        cur_len += round_len
    target[cur_len:] = [IGNORE] * len(target[cur_len:])
    assert cur_len == len(ids)  # else LLaVA masks the whole sample ("tokenization mismatch")
    return ids, target


def llava_with(tokenizer):
    import transformers

    from ecoflap_exp.models.llava import VICUNA_V1_TEMPLATE

    adapter = make("llava_tiny")
    old = adapter.processor
    adapter.processor = transformers.LlavaProcessor(
        image_processor=old.image_processor, tokenizer=tokenizer, patch_size=old.patch_size,
        vision_feature_select_strategy=old.vision_feature_select_strategy, num_additional_image_tokens=1,
        chat_template=VICUNA_V1_TEMPLATE)
    return adapter


def test_a_tokenizer_that_merges_a_prompt_into_its_answer_is_named():
    """Pieces across word boundaries ("T:▁A▁"): the answer's first token would hold the prompt's end."""
    adapter = llava_with(sentencepiece_like_tokenizer(words=False))
    with pytest.raises(UserError, match="merges tokens across the boundary of a prompt and its answer"):
        adapter.collate([(image(0), (("human", "<image>\nWhat is on the table?"), ("gpt", "A red cup.")))])


def test_llava_answer_tokens_are_llavas_own_targets_with_no_stray_token():
    """With a SentencePiece-like tokenizer the answer's tokens are the ones the whole conversation
    gives (LLaVA tokenizes it at once) and the targets are preprocess_v1's: the answer and its
    "</s>", nothing between them and nothing from the prompt."""
    adapter = llava_with(sentencepiece_like_tokenizer())
    tokenizer = adapter.tokenizer
    turns = (("human", "<image>\nWhat is on the table?"), ("gpt", "A red cup."), ("human", "And beside it?"),
             ("gpt", "A spoon"))
    batch = adapter.collate([(image(0), turns)])
    conversation = vicuna_v1_prompt([("USER", "<image>\nWhat is on the table?"), ("ASSISTANT", "A red cup."),
                                     ("USER", "And beside it?"), ("ASSISTANT", "A spoon")])
    ref_ids, ref_target = llava_reference(conversation, tokenizer)
    image_id = adapter.processor.image_token_id
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    first = ids.index(image_id)
    run = ids.count(image_id)
    assert ids[first : first + run] == [image_id] * run and run > 1
    collapsed_ids = ids[:first] + [-200] + ids[first + run:]
    collapsed_labels = labels[:first] + [IGNORE] + labels[first + run:]
    assert collapsed_ids == ref_ids
    assert collapsed_labels == ref_target
    assert tokenizer.convert_ids_to_tokens([t for t in labels if t != IGNORE]) == [
        "▁A", "▁red", "▁cup.", "</s>", "▁A", "▁spoon", "</s>"]


def test_llava_pads_images_to_a_square_of_the_mean_colour_as_expand2square():
    """llava/mm_utils.py expand2square with background tuple(int(x*255) for x in image_mean): the image
    centred on the longer side, offsets floored ((w - h) // 2), then the processor."""
    from ecoflap_exp.models.llava import expand2square

    wide = Image.new("RGB", (5, 2), (255, 0, 0))
    square = expand2square(wide, (122, 116, 104))
    assert square.size == (5, 5)
    column = [square.getpixel((0, y)) for y in range(5)]
    assert column == [(122, 116, 104), (255, 0, 0), (255, 0, 0), (122, 116, 104), (122, 116, 104)]  # (5-2)//2 = 1
    tall = Image.new("RGB", (2, 5), (0, 255, 0))
    assert [expand2square(tall, (1, 2, 3)).getpixel((x, 0)) for x in range(5)] == [
        (1, 2, 3), (0, 255, 0), (0, 255, 0), (1, 2, 3), (1, 2, 3)]
    assert expand2square(square, (0, 0, 0)) is square
    adapter = make("llava_tiny")
    # CLIP's mean (0.48145466, 0.4578275, 0.40821073) * 255, truncated: LLaVA's background
    assert adapter.background == (122, 116, 104)
    picture = image(5, (20, 40))  # 40 wide, 20 high
    padded = adapter.processor.image_processor(expand2square(picture, (122, 116, 104)), return_tensors="pt")
    batch = adapter.collate([(picture, "a caption")])
    torch.testing.assert_close(batch["pixel_values"], padded["pixel_values"])
    cropped = make("llava_tiny", pad_to_square=False).collate([(picture, "a caption")])
    assert not torch.allclose(cropped["pixel_values"], batch["pixel_values"])


def test_textvqa_as_llava_prompts_and_scores_it(tmp_path):
    """LLaVA-1.5's TextVQA: each question with its OCR tokens from LLaVA's question file, the text the
    model gets equal to that file's line; answers and all ten human answers through the EvalAI
    processor (m4c_evaluator.TextVQAAccuracyEvaluator)."""
    files = write_textvqa(tmp_path)
    seen = []

    class Canned:
        def generate(self, images, prompts, **generation):
            seen.extend(prompts)
            return ["Dakota.", "COPENHAGEN", "Stone ale"][: len(prompts)]

    evaluation = VQAAccuracy("textvqa", str(files["annotations"]), str(files["images"]), normaliser="evalai",
                             ocr=str(files["ocr"]), prompt=SHORT_ANSWER, clean_question=False, batch_size=4)
    metrics = evaluation.evaluate(Canned())
    # the first line of llava_textvqa_val_v051_ocr.jsonl as released (LLaVA's eval.zip)
    assert seen[0] == ("What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL, Single-Use, Camera, "
                       "Pire, digitat\nAnswer the question using a single word or phrase.")
    assert seen[2] == ("What kind of beer is this?\nReference OCR token: \nAnswer the question using a single word or "
                       "phrase.")
    # "dakota" 5 of 10 -> 1.0, "copenhagen" 9 -> 1.0, "stone ale" 1 -> 0.3
    assert metrics["accuracy"] == pytest.approx(100 * 2.3 / 3)
    assert evaluation.info == {"normaliser": "evalai", "ocr": str(files["ocr"])}
    lines = files["ocr"].read_text().splitlines()
    files["ocr"].write_text("\n".join(lines[1:]))
    with pytest.raises(UserError, match="has no line for TextVQA question 34604"):  # the file is in reverse order
        VQAAccuracy("textvqa", str(files["annotations"]), str(files["images"]), ocr=str(files["ocr"])).check_data()
    with pytest.raises(UserError, match="ocr=.* is TextVQA's"):
        VQAAccuracy("vqav2", str(files["annotations"]), str(files["images"]), ocr=str(files["ocr"]))


def test_llava_suite_scores_as_llava_and_qwen2vl_as_lmms_eval():
    from hydra import compose, initialize_config_dir
    from test_run import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        llava = compose("config", ["experiment=llava_ecoflap"])
        qwen = compose("config", ["experiment=qwen2vl_ecoflap"])
    evals = llava.evals
    assert (evals.vqav2.normaliser, evals.okvqa.normaliser, evals.gqa.normaliser, evals.textvqa.normaliser) == (
        "evalai_official", "evalai_official", "llava", "evalai")
    assert evals.okvqa.lemmatiser == "none"
    assert evals.textvqa.ocr.endswith("textvqa/llava_textvqa_val_v051_ocr.jsonl") and qwen.evals.textvqa.ocr is None
    assert llava.model.conversation == "vicuna_v1" and llava.model.pad_to_square
    assert all(ev.generation == {"num_beams": 1, "max_new_tokens": 128, "min_length": None, "length_penalty": None}
               for ev in evals.values())
