"""BLIP-2 held and run per part as LAVIS runs it (`model.precision=official`).

The expected dtypes are LAVIS's own (salesforce/LAVIS @ 506965b): eva_vit.py convert_weights_to_fp16
halves only Conv/Linear weights when vit_precision is fp16 (LayerNorms, cls_token, pos_embed and the
q/v biases stay fp32), the ViT runs under `maybe_autocast()` (fp16); blip2.py keeps the Q-Former and
query tokens fp32 and blip2_t5.py applies t5_proj outside autocast; blip2_t5.py casts every FlanT5
parameter `.bfloat16()` and runs it under `maybe_autocast(dtype=torch.bfloat16)`, fed
torch.cat([inputs_t5 (fp32), inputs_embeds (bf16)]), which is fp32; blip2_opt.py loads OPT in fp16.
"""

import warnings
from functools import partial

import pytest
import torch
from torch import nn

from ecoflap_exp.models.precision import PartPrecision, apply_precision
from ecoflap_exp.pruning.engine import SequentialEngine
from ecoflap_exp.pruning.wanda import WandaPruner
from tests.models.test_blip2 import ALL_T5_TOWERS, batches, language_real_tokens, official_group, tiny
from tests.pruning.test_engine import assert_same_pruning, prune_by_full_forwards

F16, F32, BF16 = torch.float16, torch.float32, torch.bfloat16


def dtypes(module):
    """(Linear weight dtypes, other floating parameter dtypes) of a module."""
    linear = {m.weight.dtype for m in module.modules() if isinstance(m, nn.Linear)}
    others = {p.dtype for m in module.modules() if not isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    return linear, others


def test_official_precision_holds_each_part_as_lavis():
    adapter = tiny("t5", precision="official", vit_precision="fp16")
    model = adapter.model
    # convert_weights_to_fp16 halves Linear and conv weights; the patch conv is held fp32 (precision.py says why)
    assert dtypes(model.vision_model) == ({F16}, {F32})
    assert model.vision_model.encoder.layers[0].layer_norm1.weight.dtype == F32
    assert model.vision_model.embeddings.position_embedding.dtype == F32
    assert dtypes(model.qformer) == ({F32}, {F32}) and model.query_tokens.dtype == F32
    assert model.language_projection.weight.dtype == F32  # t5_proj
    assert dtypes(model.language_model) == ({BF16}, {BF16})  # param.data = param.data.bfloat16()
    assert adapter.precision == {"vision_model": "linear fp16, others fp32, autocast fp16",
                                 "language_model": "linear bf16, others bf16, autocast bf16",
                                 "every other part": "fp32, autocast none"}
    # the COCO-finetuned captioner: vit_precision fp32 (blip2_caption_flant5xl.yaml), still under maybe_autocast()
    coco = tiny("t5", precision="official", vit_precision="fp32")
    assert dtypes(coco.model.vision_model) == ({F32}, {F32})
    assert coco.precision["vision_model"] == "linear fp32, others fp32, autocast fp16"
    opt = tiny("opt", precision="official", vit_precision="fp16")
    lm = opt.model.language_model  # OPTForCausalLM.from_pretrained(torch_dtype=fp16)
    norms = [p for m in lm.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
    assert {p.dtype for p in norms} == {F32} and all(torch.equal(p, p.half().float()) for p in norms)
    assert dtypes(lm)[0] == {F16} and lm.get_input_embeddings().weight.dtype == F16
    # the retrieval model: compute_sim_matrix runs without autocast; the COCO one's ViT is fp32
    itm = tiny("itm", precision="official", vit_precision="fp32")
    assert {p.dtype for p in itm.model.parameters()} == {F32}
    assert itm.precision["vision_model"] == "linear fp32, others fp32, autocast none"


def test_each_part_runs_under_its_autocast_and_t5s_encoder_stream_stays_fp32():
    """The ViT's residual stream is fp32 (fp32 class and position embeddings, as LAVIS's cls_token and
    pos_embed) with fp16 matrix products; the Q-Former computes in fp32; FlanT5's encoder receives the
    fp32 queries beside the bf16 text, so its residual stream is fp32 while its products are bf16;
    its decoder starts from bf16 embeddings."""
    adapter = tiny("t5", precision="official", vit_precision="fp16")
    model = adapter.model
    seen = {}

    def keep(name, module, args, kwargs, output):
        hidden = args[0] if args else kwargs.get("hidden_states")
        seen[name] = (hidden.dtype, (output[0] if isinstance(output, tuple) else output).dtype)

    vit = model.vision_model.encoder.layers[0]
    watched = {"vit_block": vit, "vit_fc1": vit.mlp.fc1,
               "qformer_query": model.qformer.encoder.layer[0].attention.attention.query,
               "encoder_block": model.language_model.encoder.block[0],
               "encoder_q": model.language_model.encoder.block[0].layer[0].SelfAttention.q,
               "decoder_block": model.language_model.decoder.block[0]}
    for name, module in watched.items():
        module.register_forward_hook(partial(keep, name), with_kwargs=True)
    batch = batches(adapter)[0]
    loss = adapter.loss(batch)
    assert torch.isfinite(loss)
    assert seen["vit_block"][0] == F32 and seen["vit_fc1"][1] == F16
    assert seen["qformer_query"] == (F32, F32)
    assert seen["encoder_block"][0] == F32 and seen["encoder_block"][1] == F32 and seen["encoder_q"][1] == BF16
    assert seen["decoder_block"][0] == BF16


@pytest.mark.parametrize("kind", ["t5", "opt"])
def test_engine_equals_full_forward_reference_under_official_precision(kind):
    """Blocks the engine runs one by one get their part's autocast, as inside the model's forward."""
    towers = ALL_T5_TOWERS if kind == "t5" else ["vision", "qformer", "decoder"]
    fast = tiny(kind, prune_towers=towers, precision="official")
    slow = tiny(kind, prune_towers=towers, precision="official")
    plan = {b.name: 0.3 + 0.1 * (i % 4) for i, b in enumerate(fast.blocks())}
    SequentialEngine(fast, WandaPruner(), plan).run(batches(fast))
    prune_by_full_forwards(slow, WandaPruner(), plan, batches(slow), group_of=official_group,
                           tokens=language_real_tokens(slow))
    assert_same_pruning(fast, slow)
    assert {m.weight.dtype for m in fast.matrices() if m.name.startswith("vision_model.")} == {F16}


def test_a_dtype_holds_every_part_in_it_but_what_transformers_keeps_fp32():
    adapter = tiny("t5", precision="bfloat16")
    assert dtypes(adapter.model.vision_model) == ({BF16}, {BF16})
    assert dtypes(adapter.model.language_model) == ({BF16}, {BF16})
    assert adapter.precision == {"vision_model": "bf16", "qformer": "bf16", "language_projection": "bf16",
                                 "language_model": "bf16", "query_tokens": "bf16"}
    assert tiny("t5").precision["qformer"] == "fp32"


def test_apply_precision_casts_each_part_and_refuses_a_shared_tensor_held_two_ways():
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Sequential(nn.Embedding(3, 2), nn.Linear(2, 3)))
    described = apply_precision(model, {"0": PartPrecision(F16, F32), "1": PartPrecision(BF16, BF16)})
    assert model[0].weight.dtype == F16 and model[0].bias.dtype == F16 and model[1].weight.dtype == BF16
    assert described == {"0": "linear fp16, others fp32, autocast none", "1": "linear bf16, others bf16, autocast none"}
    model[2][1].weight = model[2][0].weight  # a tied output embedding
    with pytest.raises(ValueError, match="shared with a module held in"):
        apply_precision(model, {"2": PartPrecision(F16, F32)})


def test_an_autocast_hook_that_fails_closes_nothing_it_did_not_open():
    """The exit hook runs when the forward raises; it must not close an outer module's autocast."""
    broken = nn.Sequential(nn.Sequential(nn.Linear(2, 2)))
    apply_precision(broken, {"": PartPrecision(F32, F32, BF16)})
    broken[0].register_forward_pre_hook(lambda module, args: (_ for _ in ()).throw(RuntimeError("broken")),
                                        prepend=True)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(RuntimeError, match="broken"):
        warnings.simplefilter("always")
        broken(torch.ones(1, 2))
    assert not [w for w in caught if "silenced" in str(w.message)]  # no exit hook failed on a context it lacks
    assert not torch.is_autocast_enabled("cpu")  # the outer module's autocast closed by its own exit
    working = nn.Sequential(nn.Linear(2, 2))
    apply_precision(working, {"": PartPrecision(F32, F32, BF16)})
    assert working(torch.ones(1, 2)).dtype == BF16 and not torch.is_autocast_enabled("cpu")


@pytest.mark.slow
def test_the_run_record_says_how_each_part_ran(tmp_path):
    from ecoflap_exp.runner import run
    from tests.fixtures import write_caption_pairs
    from tests.integration.test_run import config

    files = write_caption_pairs(tmp_path / "pairs", count=8)
    record = run(config(tmp_path, "model=blip2_t5_tiny", "model.precision=official", "calib=cc3m",
                        f"calib.annotations={files['tsv']}", "calib.num_samples=8", "calib.batch_size=4", "suite=none",
                        "sparsity=0.5"))
    assert record.precision == {"vision_model": "linear fp16, others fp32, autocast fp16",
                                   "language_model": "linear bf16, others bf16, autocast bf16",
                                   "every other part": "fp32, autocast none"}
    assert record.achieved.overall == pytest.approx(0.5, abs=2e-3)
