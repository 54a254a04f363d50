"""Every shipped full-size model config builds the architecture its released weights were trained in.

Each config is built as a run builds it, without weights: transformers models from the shipped
architecture (`model.init=random`, what the hub config describes) on the meta device; open_clip
models through the real `create_model` path with the tag's download and checkpoint load stubbed.
What they build (activation, norm type and eps, attention variant, image and patch size, block
counts, widths, vocabulary, the image size the model's own preprocessing gives) is compared with
values transcribed from the reference library's own configuration of those weights, each with its
source: the hub config.json (transformers' conversion scripts and the files as released), LAVIS's
model yaml and eva_vit.py, open_clip's pretrained cfg and model configs, timm's model registry.
"""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from ecoflap_exp.errors import UserError
from ecoflap_exp.models.open_clip import OpenCLIPAdapter
from tests.integration.test_run import ROOT


def built(name, *overrides):
    """The model config `name` as a run builds it, with no weights (meta device)."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", [f"model={name}", "device=cpu", "model.init=random", *overrides])
    with torch.device("meta"):
        return instantiate(cfg.model)


def kind(module):
    return type(module).__name__


def norm(module):
    """("LayerNorm" | "RMSNorm", eps): T5's T5LayerNorm, LLaMA's and Qwen2's norms scale by the root mean
    square without centring."""
    rms = kind(module).endswith("RMSNorm") or kind(module) == "T5LayerNorm"
    family = "RMSNorm" if rms else "LayerNorm" if isinstance(module, nn.LayerNorm) else kind(module)
    return family, getattr(module, "eps", None) or getattr(module, "variance_epsilon", None)


def preprocess_size(transform):
    resize = next(t for t in transform.transforms if type(t).__name__ == "Resize")
    return resize.size


# ---------------------------------------------------------------------------------------------
# BLIP-2: EVA ViT-g, Q-Former (hub config.json of each Salesforce/blip2-* id: transformers'
# convert_blip_2_original_to_pytorch.py builds Blip2VisionConfig(image_size=364 if "coco" else 224);
# LAVIS eva_vit.py create_eva_vit_g: depth=39, embed_dim=1408, num_heads=1408//88, mlp_ratio=4.3637,
# norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU (exact), q and v biases; LAVIS blip2.py:
# ln_vision = LayerNorm(num_features), torch's eps 1e-5, where transformers' post_layernorm takes 1e-6)
# ---------------------------------------------------------------------------------------------

def blip2_vision(adapter):
    m = adapter.model
    layer = m.vision_model.encoder.layers[0]
    return {"layers": len(m.vision_model.encoder.layers), "hidden": m.config.vision_config.hidden_size,
            "mlp": layer.mlp.fc1.out_features, "heads": layer.self_attn.num_heads,
            "patch": m.vision_model.embeddings.patch_embedding.kernel_size[0],
            "image": m.config.vision_config.image_size, "act": kind(layer.mlp.activation_fn),
            "norm": norm(layer.layer_norm1), "post_norm": norm(m.vision_model.post_layernorm),
            "qkv_bias": layer.self_attn.qkv.bias is not None, "preprocess": preprocess_size(adapter.preprocess),
            "qformer_layers": len(m.qformer.encoder.layer), "qformer_hidden": m.config.qformer_config.hidden_size,
            "qformer_norm": norm(m.qformer.layernorm), "queries": m.query_tokens.shape[1],
            "qformer_vocab": m.config.qformer_config.vocab_size}


def eva_vit_g(image, qformer_vocab=30522):
    return {"layers": 39, "hidden": 1408, "mlp": 6144, "heads": 16, "patch": 14, "image": image,
            "act": "GELUActivation", "norm": ("LayerNorm", 1e-6), "post_norm": ("LayerNorm", 1e-5), "qkv_bias": True,
            # LAVIS blip_image_eval: Resize((image_size, image_size), BICUBIC), no crop
            "preprocess": (image, image),
            # Q-Former: bert-base-uncased (12 layers, 768, LayerNorm eps 1e-12), 32 query tokens; the ITM
            # ids add "[DEC]" (vocab 30523)
            "qformer_layers": 12, "qformer_hidden": 768, "qformer_norm": ("LayerNorm", 1e-12), "queries": 32,
            "qformer_vocab": qformer_vocab}


def flan_t5(adapter):
    lm = adapter.model.language_model
    ff = lm.encoder.block[0].layer[1].DenseReluDense
    attention = lm.encoder.block[0].layer[0].SelfAttention
    return {"d_model": lm.config.d_model, "d_ff": ff.wi_0.out_features, "heads": attention.n_heads,
            "d_kv": attention.key_value_proj_dim, "encoder_layers": len(lm.encoder.block),
            "decoder_layers": len(lm.decoder.block), "vocab": lm.shared.num_embeddings, "act": kind(ff.act),
            "gated": kind(ff) == "T5DenseGatedActDense", "norm": norm(lm.encoder.final_layer_norm),
            "relative_bias_blocks": [b.layer[0].SelfAttention.has_relative_attention_bias
                                     for b in lm.encoder.block[:2]],
            "buckets": attention.relative_attention_num_buckets,
            "max_distance": attention.relative_attention_max_distance,
            "tied": lm.lm_head.weight is lm.shared.weight, "scale_decoder_outputs": lm.config.scale_decoder_outputs}


#: Salesforce/blip2-flan-t5-xl config.json text_config (T5Config.from_pretrained("google/flan-t5-xl",
#: dense_act_fn="gelu") in the conversion script; LAVIS blip2_t5.py: t5_config.dense_act_fn = "gelu"):
#: d_model 2048, d_ff 5120, d_kv 64, 32 heads, 24 + 24 layers, vocab 32128, gated-gelu with exact GELU,
#: layer_norm_epsilon 1e-6, 32 buckets / max distance 128 (block 0 holds the bias), tie_word_embeddings false
FLAN_T5_XL = {"d_model": 2048, "d_ff": 5120, "heads": 32, "d_kv": 64, "encoder_layers": 24, "decoder_layers": 24,
              "vocab": 32128, "act": "GELUActivation", "gated": True, "norm": ("RMSNorm", 1e-6),
              "relative_bias_blocks": [True, False], "buckets": 32, "max_distance": 128, "tied": False,
              "scale_decoder_outputs": False}


@pytest.mark.parametrize(("name", "image"), [("blip2_t5", 224), ("blip2_t5_coco", 364)])
def test_blip2_flan_t5_is_built_as_released(name, image):
    adapter = built(name, "model.tokenizer=bytes")
    assert blip2_vision(adapter) == eva_vit_g(image)
    assert flan_t5(adapter) == FLAN_T5_XL


def linear_dtypes(module):
    return {m.weight.dtype for m in module.modules() if isinstance(m, nn.Linear)}


#: the dtype of each part's matrices and the autocast it runs under, as LAVIS runs each model: vit_precision
#: fp16 in blip2_pretrain_flant5xl.yaml, blip2_pretrain_opt2.7b.yaml, fp32 in blip2_caption_flant5xl.yaml
#: and blip2_coco.yaml; the ViT under maybe_autocast() (fp16), FlanT5 cast to bf16 under bf16 autocast, OPT
#: loaded in fp16; the Q-Former and projections fp32; the retrieval evaluation (compute_sim_matrix) without
#: autocast
LAVIS_PRECISION = {
    "blip2_t5": {"vision_model": "linear fp16, others fp32, autocast fp16",
                 "language_model": "linear bf16, others bf16, autocast bf16"},
    "blip2_t5_coco": {"vision_model": "linear fp32, others fp32, autocast fp16",
                      "language_model": "linear bf16, others bf16, autocast bf16"},
    "blip2_opt": {"vision_model": "linear fp16, others fp32, autocast fp16",
                  "language_model": "linear fp16, others fp16 (LayerNorms fp16 values held in fp32), autocast fp16"},
    "blip2_itm_coco": {"vision_model": "linear fp32, others fp32, autocast none"},
}


@pytest.mark.parametrize("name", list(LAVIS_PRECISION))
def test_blip2_parts_run_in_lavis_precision_by_default(name):
    adapter = built(name, "model.tokenizer=bytes")
    assert adapter.precision == {**LAVIS_PRECISION[name], "every other part": "fp32, autocast none"}
    model = adapter.model
    vision = LAVIS_PRECISION[name]["vision_model"].split(",")[0]
    assert linear_dtypes(model.vision_model) == {{"linear fp16": torch.float16, "linear fp32": torch.float32}[vision]}
    assert linear_dtypes(model.qformer) == {torch.float32} and model.query_tokens.dtype == torch.float32


def test_blip2_opt_is_built_as_released():
    """Salesforce/blip2-opt-2.7b config.json: OPT-2.7B (hidden 2560, ffn 10240, 32 layers and heads,
    vocab 50304 after the image token 50265, eos "\\n" = 50118); OPTConfig defaults: relu, pre-LN,
    max_position_embeddings 2048; transformers' OPT LayerNorms take torch's eps 1e-5."""
    adapter = built("blip2_opt", "model.tokenizer=bytes")
    assert blip2_vision(adapter) == eva_vit_g(224)
    lm = adapter.model.language_model
    layer = lm.model.decoder.layers[0]
    assert {"hidden": lm.config.hidden_size, "ffn": layer.fc1.out_features, "layers": len(lm.model.decoder.layers),
            "heads": layer.self_attn.num_heads, "vocab": lm.config.vocab_size, "act": kind(layer.activation_fn),
            "norm": norm(layer.self_attn_layer_norm), "pre_norm": lm.config.do_layer_norm_before,
            "positions": lm.config.max_position_embeddings, "eos": lm.config.eos_token_id} == {
        "hidden": 2560, "ffn": 10240, "layers": 32, "heads": 32, "vocab": 50304, "act": "ReLU",
        "norm": ("LayerNorm", 1e-5), "pre_norm": True, "positions": 2048, "eos": 50118}


@pytest.mark.parametrize(("name", "image"), [("blip2_itm", 224), ("blip2_itm_coco", 364)])
def test_blip2_retrieval_models_are_built_as_released(name, image):
    """Salesforce/blip2-itm-vit-g(-coco) config.json: the Q-Former with text input, vocab 30523;
    image_size 364 for -coco (LAVIS blip2_coco.yaml)."""
    adapter = built(name, "model.tokenizer=bytes")
    assert blip2_vision(adapter) == eva_vit_g(image, qformer_vocab=30523)
    assert adapter.model.config.qformer_config.use_qformer_text_input


# ---------------------------------------------------------------------------------------------
# CLIP: OpenAI's weights were trained with QuickGELU (open_clip pretrained.py: _pcfg(..., quick_gelu=True)
# for ViT-B-16 and ViT-L-14-336 "openai"; transformers' openai/clip-* configs: hidden_act "quick_gelu")
# ---------------------------------------------------------------------------------------------

#: open_clip model_configs ViT-B-16(-quickgelu).json and ViT-L-14-336(-quickgelu).json; head_width 64
OPENAI_CLIP = {
    "ViT-B/16": {"embed": 512, "vision_layers": 12, "vision_width": 768, "vision_heads": 12, "patch": 16, "image": 224,
                 "text_layers": 12, "text_width": 512, "text_heads": 8, "context": 77, "vocab": 49408},
    "ViT-L/14-336": {"embed": 768, "vision_layers": 24, "vision_width": 1024, "vision_heads": 16, "patch": 14,
                     "image": 336, "text_layers": 12, "text_width": 768, "text_heads": 12, "context": 77,
                     "vocab": 49408},
}


def stub_openai_download(monkeypatch):
    """open_clip's create_model as it runs for a pretrained tag, minus the download and the load."""
    import open_clip.factory

    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None: "/stub/weights.pt")
    monkeypatch.setattr(open_clip.factory, "load_checkpoint", lambda model, path, **kw: None)
    monkeypatch.setattr(open_clip.factory, "_set_model_device_and_precision", lambda *args, **kw: None)


def open_clip_facts(model):
    visual, text = model.visual, model.transformer
    block = visual.transformer.resblocks[0]
    return {"embed": model.text_projection.shape[1], "vision_layers": len(visual.transformer.resblocks),
            "vision_width": visual.conv1.out_channels, "vision_heads": block.attn.num_heads,
            "patch": visual.conv1.kernel_size[0], "image": visual.image_size[0], "text_layers": len(text.resblocks),
            "text_width": model.token_embedding.embedding_dim, "text_heads": text.resblocks[0].attn.num_heads,
            "context": model.context_length, "vocab": model.vocab_size}


@pytest.mark.parametrize(("name", "arch"), [("clip_vitb16", "ViT-B/16"), ("clip_vitl14_336", "ViT-L/14-336")])
def test_open_clip_openai_models_are_built_with_quickgelu(monkeypatch, name, arch):
    stub_openai_download(monkeypatch)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", [f"model={name}", "device=cpu"])
    assert cfg.model.pretrained == "openai" and cfg.model.init == "pretrained"
    with torch.device("meta"):
        adapter = instantiate(cfg.model)
    model = adapter.model
    activations = {kind(b.mlp.gelu) for tower in (model.visual.transformer, model.transformer) for b in tower.resblocks}
    assert activations == {"QuickGELU"}
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(model.transformer.resblocks[0].mlp.gelu.to("cpu")(x), x * torch.sigmoid(1.702 * x))
    assert {norm(m)[1] for m in model.modules() if isinstance(m, nn.LayerNorm)} == {1e-5}
    assert open_clip_facts(model) == OPENAI_CLIP[arch]


@pytest.mark.parametrize("model_name", ["ViT-B-16", "ViT-L-14-336"])
def test_an_activation_the_weights_were_not_trained_with_is_an_error(monkeypatch, model_name):
    """open_clip only warns ("QuickGELU mismatch"); here the pair is refused before anything is built."""
    stub_openai_download(monkeypatch)
    with pytest.raises(UserError, match=f"model.model_name='{model_name}' builds nn.GELU but the weights of "
                                        f"model.pretrained='openai' were trained with QuickGELU .*use "
                                        f"model.model_name={model_name}-quickgelu"):
        OpenCLIPAdapter(model_name, pretrained="openai", init="random")
    # a tag trained with nn.GELU asked for with a QuickGELU name is refused too (LAION's ViT-B-16)
    with pytest.raises(UserError, match="builds QuickGELU but the weights .* were trained with nn.GELU"):
        OpenCLIPAdapter("ViT-B-16-quickgelu", pretrained="laion2b_s34b_b88k", init="random")


def test_transformers_clip_is_built_as_released():
    """openai/clip-vit-base-patch16 config.json: quick_gelu in both towers, LayerNorm eps 1e-5, 77 positions;
    its processor resizes the short side to 224 and centre-crops (CLIPImageProcessor)."""
    adapter = built("hf_clip_vitb16", "model.tokenizer=open_clip")
    model = adapter.model
    vision, text = model.vision_model, model.text_model
    facts = {"embed": model.config.projection_dim, "vision_layers": len(vision.encoder.layers),
             "vision_width": vision.config.hidden_size, "vision_heads": vision.encoder.layers[0].self_attn.num_heads,
             "patch": vision.config.patch_size, "image": vision.config.image_size,
             "text_layers": len(text.encoder.layers), "text_width": text.config.hidden_size,
             "text_heads": text.encoder.layers[0].self_attn.num_heads, "context": text.config.max_position_embeddings,
             "vocab": text.config.vocab_size}
    assert facts == OPENAI_CLIP["ViT-B/16"]
    layers = [*vision.encoder.layers, *text.encoder.layers]
    assert {kind(layer.mlp.activation_fn) for layer in layers} == {"QuickGELUActivation"}
    assert {norm(layer.layer_norm1)[1] for layer in layers} == {1e-5}
    assert [type(t).__name__ for t in adapter.preprocess.transforms][:2] == ["Resize", "CenterCrop"]


# ---------------------------------------------------------------------------------------------
# BLIP captioner, LLaMA, ViT, LLaVA-1.5, Qwen2-VL
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("checkpoint", "vision_eps"), [(None, 1e-6), ("Salesforce/blip-image-captioning-base", 1e-5)])
def test_blip_captioner_is_built_as_released(checkpoint, vision_eps):
    """BLIP_Decoder (salesforce/BLIP models/blip.py, vit.py, med_config.json) and the hub conversion's config.json
    (BlipConfig defaults, text heads 12): ViT-B/16 at 384 px, GELU, qkv bias; BERT-base decoder with
    cross-attention, vocab 30524 ([DEC], [ENC]), eps 1e-12. The ViT's LayerNorm eps: 1e-6 in BLIP's own
    (partial(nn.LayerNorm, eps=1e-6)), the config's default, `model_base_caption_capfilt_large.pth`;
    transformers' 1e-5 for the hub checkpoint."""
    overrides = [f"model.checkpoint={checkpoint}"] if checkpoint else []
    model = built("blip_caption_coco", "model.tokenizer=bytes", *overrides).model
    vision, text = model.vision_model, model.text_decoder.bert
    layer = vision.encoder.layers[0]
    assert {"layers": len(vision.encoder.layers), "hidden": layer.self_attn.qkv.in_features,
            "heads": layer.self_attn.num_heads, "image": model.config.vision_config.image_size,
            "patch": vision.embeddings.patch_embedding.kernel_size[0], "act": kind(layer.mlp.activation_fn),
            "norm": norm(layer.layer_norm1), "qkv_bias": layer.self_attn.qkv.bias is not None,
            "text_layers": len(text.encoder.layer),
            "text_heads": text.encoder.layer[0].attention.self.num_attention_heads,
            "vocab": text.embeddings.word_embeddings.num_embeddings, "text_norm": norm(text.embeddings.LayerNorm),
            "cross_attention": hasattr(text.encoder.layer[0], "crossattention")} == {
        "layers": 12, "hidden": 768, "heads": 12, "image": 384, "patch": 16, "act": "GELUActivation",
        "norm": ("LayerNorm", vision_eps), "qkv_bias": True, "text_layers": 12, "text_heads": 12, "vocab": 30524,
        "text_norm": ("LayerNorm", 1e-12), "cross_attention": True}


def llama_facts(lm):
    layer = lm.layers[0]
    config = lm.config
    return {"layers": len(lm.layers), "hidden": config.hidden_size, "mlp": layer.mlp.gate_proj.out_features,
            "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
            "vocab": lm.embed_tokens.num_embeddings, "act": kind(layer.mlp.act_fn), "norm": norm(layer.input_layernorm),
            "rope_theta": config.rope_parameters["rope_theta"], "positions": config.max_position_embeddings,
            "qkv_bias": layer.self_attn.q_proj.bias is not None}


def test_llama_7b_is_built_as_released():
    """huggyllama/llama-7b config.json: 32 layers of 4096, intermediate 11008, 32 heads (no GQA), vocab 32000,
    silu, RMSNorm eps 1e-6, 2048 positions, rope theta 10000 (transformers' default), untied head."""
    model = built("llama_7b", "model.tokenizer=bytes").model
    assert llama_facts(model.model) == {"layers": 32, "hidden": 4096, "mlp": 11008, "heads": 32, "kv_heads": 32,
                                        "vocab": 32000, "act": "SiLUActivation", "norm": ("RMSNorm", 1e-6),
                                        "rope_theta": 10000.0, "positions": 2048, "qkv_bias": False}
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def test_llama2_7b_is_built_as_released():
    """meta-llama/Llama-2-7b-hf config.json: LLaMA-7B's shapes with RMSNorm eps 1e-5 and 4096 positions (LLaMA-1:
    1e-6, 2048), and windows of 4096 tokens (the reference codes' model.seqlen = max_position_embeddings)."""
    adapter = built("llama2_7b", "model.tokenizer=bytes")
    assert llama_facts(adapter.model.model) == {"layers": 32, "hidden": 4096, "mlp": 11008, "heads": 32,
                                                "kv_heads": 32, "vocab": 32000, "act": "SiLUActivation",
                                                "norm": ("RMSNorm", 1e-5), "rope_theta": 10000.0, "positions": 4096,
                                                "qkv_bias": False}
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", ["model=llama2_7b"])
    assert cfg.calib.seqlen == cfg.evals.wikitext2.seqlen == 4096


def test_vit_b16_is_built_as_released():
    """google/vit-base-patch16-224 config.json: 12 x 768, 12 heads, 3072, GELU, LayerNorm eps 1e-12 (not
    timm's 1e-6), qkv bias, 224 px / 16, 1000 classes. timm's vit_base_patch16_224: eps 1e-6 (its registry)."""
    model = built("vit_b16").model
    layer = model.vit.layers[0]
    assert {"layers": len(model.vit.layers), "hidden": model.config.hidden_size,
            "heads": model.config.num_attention_heads, "mlp": layer.mlp.fc1.out_features,
            "act": kind(layer.mlp.activation_fn), "norm": norm(layer.layernorm_before),
            "qkv_bias": layer.attention.q_proj.bias is not None, "image": model.config.image_size,
            "patch": model.config.patch_size, "classes": model.classifier.out_features} == {
        "layers": 12, "hidden": 768, "heads": 12, "mlp": 3072, "act": "GELUActivation", "norm": ("LayerNorm", 1e-12),
        "qkv_bias": True, "image": 224, "patch": 16, "classes": 1000}
    timm_model = built("timm_vit_b16").model
    assert {norm(m)[1] for m in timm_model.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    assert len(timm_model.blocks) == 12 and timm_model.num_classes == 1000
    assert timm_model.patch_embed.img_size == (224, 224)


def test_llava_15_7b_is_built_as_released():
    """llava-hf/llava-1.5-7b-hf config.json: CLIP ViT-L/14-336 (24 layers, quick_gelu, eps 1e-5) read at
    layer -2, a GELU MLP projector, Vicuna-7B (vocab 32064, RMSNorm eps 1e-5, 4096 positions), image token 32000."""
    model = built("llava_15_7b", "model.tokenizer=bytes").model
    vision = model.model.vision_tower
    layer = vision.encoder.layers[0]
    assert {"layers": len(vision.encoder.layers), "hidden": vision.config.hidden_size,
            "heads": layer.self_attn.num_heads, "image": vision.config.image_size, "patch": vision.config.patch_size,
            "act": kind(layer.mlp.activation_fn), "norm": norm(layer.layer_norm1),
            "feature_layer": model.config.vision_feature_layer,
            "projector_act": kind(model.model.multi_modal_projector.act)} == {
        "layers": 24, "hidden": 1024, "heads": 16, "image": 336, "patch": 14, "act": "QuickGELUActivation",
        "norm": ("LayerNorm", 1e-5), "feature_layer": -2, "projector_act": "GELUActivation"}
    assert llama_facts(model.model.language_model) == {
        "layers": 32, "hidden": 4096, "mlp": 11008, "heads": 32, "kv_heads": 32, "vocab": 32064,
        "act": "SiLUActivation",
        "norm": ("RMSNorm", 1e-5), "rope_theta": 10000.0, "positions": 4096, "qkv_bias": False}


def test_qwen2_vl_7b_is_built_as_released():
    """Qwen/Qwen2-VL-7B-Instruct config.json: ViT depth 32, embed 1280, 16 heads, mlp_ratio 4, quick_gelu,
    LayerNorm eps 1e-6, patch 14, merge 2, temporal patch 2; Qwen2-7B: 28 layers of 3584, 28 heads and 4 KV
    heads, intermediate 18944, vocab 152064, RMSNorm eps 1e-6, M-RoPE sections [16, 24, 24], theta 1e6,
    q/k/v biases and no o bias."""
    model = built("qwen2_vl_7b", "model.tokenizer=bytes").model
    visual = model.model.visual
    block = visual.blocks[0]
    assert {"depth": len(visual.blocks), "embed": block.attn.qkv.in_features, "heads": block.attn.num_heads,
            "mlp": block.mlp.fc1.out_features, "act": kind(block.mlp.act), "norm": norm(block.norm1),
            "patch": visual.patch_embed.patch_size, "merge": visual.spatial_merge_size,
            "temporal": visual.patch_embed.temporal_patch_size} == {
        "depth": 32, "embed": 1280, "heads": 16, "mlp": 5120, "act": "QuickGELUActivation", "norm": ("LayerNorm", 1e-6),
        "patch": 14, "merge": 2, "temporal": 2}
    text = model.model.language_model
    layer = text.layers[0]
    assert {**llama_facts(text), "o_bias": layer.self_attn.o_proj.bias is not None,
            "mrope": text.config.rope_parameters["mrope_section"]} == {
        "layers": 28, "hidden": 3584, "mlp": 18944, "heads": 28, "kv_heads": 4, "vocab": 152064,
        "act": "SiLUActivation",
        "norm": ("RMSNorm", 1e-6), "rope_theta": 1e6, "positions": 32768, "qkv_bias": True, "o_bias": False,
        "mrope": [16, 24, 24]}
