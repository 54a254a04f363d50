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
from PIL import Image

from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.vqa import VQAAccuracy
from ecoflap_exp.models.adapter import IGNORE
from ecoflap_exp.models.llava import LlavaAdapter
from ecoflap_exp.models.qwen2_vl import Qwen2VLAdapter
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.sparsegpt import SparseGPTPruner
from ecoflap_exp.pruning.wanda import WandaPruner
from ecoflap_exp.runner import run
from ecoflap_exp.scoring.zeroth import ZerothOrderScorer
from ecoflap_exp.walk import walk_tower
from scripts.instrumentation import count_block_forwards
from tests.fixtures import write_llava_conversations
from tests.fixtures_vqa import TEXTVQA_VAL, write_textvqa
from tests.integration.test_run import config
from tests.integration.test_vlm_runs import tower_sparsity
from tests.pruning.test_engine import assert_same_pruning, prune_by_full_forwards

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


def pruned_and_reloaded(adapter, batches, folder):
    """The adapter's model pruned to 0.5 by Wanda and saved in transformers' format under `folder`; an
    adapter of its class around the model and processor transformers' Auto classes reload from there."""
    import transformers

    SequentialEngine(adapter, WandaPruner(), {b.name: 0.5 for b in adapter.blocks()}).run(batches)
    adapter.save(folder)
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    assert type(model) is type(adapter.model) and processor.chat_template == adapter.processor.chat_template
    reloaded = type(adapter).__new__(type(adapter))
    reloaded.model, reloaded.processor, reloaded.max_tokens = model, processor, adapter.max_tokens
    return reloaded


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


def walked_as_the_model_hands_them(adapter, batches):
    """walk_tower's inputs of every block of every tower, each batch's held to what pre-hooks on the
    model's own forward record (hidden states, args, kwargs), and the pad masks: the attention mask's
    real tokens in the language tower, none elsewhere. Yields (tower, block, batch index, inputs)
    for a family's own checks; every block of every tower is walked."""
    for tower in adapter.towers():
        expected = [recorded_inputs(adapter, tower, batch) for batch in batches]
        walked = 0
        with torch.no_grad():
            for block, inputs in walk_tower(adapter, tower, batches, adapter.device):
                walked += 1
                for b, (inp, want) in enumerate(zip(inputs, expected, strict=True)):
                    where = f"{block.name} batch {b}"
                    assert_same_value(inp.hidden, want[block.name].hidden, where)
                    assert_same_value(inp.args, want[block.name].args, where)
                    assert_same_value(inp.kwargs, want[block.name].kwargs, where)
                    masks = {"hidden": batches[b]["attention_mask"].bool()} if tower.name == "language" else {}
                    assert_same_value(inp.masks, masks, where)
                    yield tower, block, b, inp
        assert walked == len(tower.blocks), tower.name


@pytest.mark.parametrize("arch", ADAPTERS)
def test_captured_block_inputs_are_what_the_model_hands_its_blocks(arch):
    adapter = make(arch)
    assert sum(1 for _ in walked_as_the_model_hands_them(adapter, batches_of(adapter))) > 0


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


@pytest.mark.slow
@pytest.mark.parametrize("arch", ADAPTERS)
def test_run_from_llava_conversations_reaches_exactly_the_target(tmp_path, arch):
    """run.py as documented, on a file in LLaVA's format: uniform Wanda reaches exactly 0.5 in every
    tower (every row prunes half of an even number of columns)."""
    path = write_llava_conversations(tmp_path / "data" / "llava")
    record = run(config(tmp_path, f"model={arch}", "suite=none", "calib=llava_instruct", f"calib.annotations={path}",
                        "calib.num_samples=4", "calib.batch_size=2", "scorer=uniform", "sparsity=0.5",
                        "model.prune_towers=[vision,projector,language]"))
    assert record.achieved.overall == 0.5
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
    assert record.achieved.overall == pytest.approx(0.5, abs=2e-3)
    assert len(set(record.plan.values())) > 1


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["sparsegpt", "magnitude"])
@pytest.mark.parametrize("arch", ADAPTERS)
def test_other_pruners_run(tmp_path, arch, pruner):
    record = run(config(tmp_path, f"model={arch}", "suite=none", "calib=digits", "scorer=uniform",
                        f"pruner={pruner}", "sparsity=0.5", "calib.num_samples=8", "calib.batch_size=4"))
    assert record.achieved.overall == pytest.approx(0.5, abs=1e-3)


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

    from tests.integration.test_run import ROOT

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
