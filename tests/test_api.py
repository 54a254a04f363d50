"""The Python API on already-loaded models: `prune(model, calibration, ...)` finds the adapter from
the model's class, builds the shipped plugins, prunes in place and reports; its masks are the
command line's on the same weights, and its Wanda mask is the reference rule's."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import AutoModelForCausalLM

from ecoflap_exp import prune
from ecoflap_exp.errors import UserError
from ecoflap_exp.models.causal_lm import CausalLMAdapter
from ecoflap_exp.models.open_clip import OpenCLIPAdapter
from ecoflap_exp.models.vit import TimmViTAdapter


def tiny_llama(dtype="float32"):
    return CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", dtype=dtype,
                           arch_overrides={"num_hidden_layers": 2}).model


def token_samples(count=16, length=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 259, (length,), generator=g) for _ in range(count)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_wanda_through_the_api_is_the_reference_rule_on_the_first_block(dtype):
    """Wanda (locuslab/wanda, prune_wanda): per output row, the int(cols x p) smallest |W| x ||X||,
    ||X|| over every calibration token of the layer's input; the first block sees the dense inputs."""
    model = tiny_llama(dtype=dtype)
    q = model.model.layers[0].self_attn.q_proj
    before = q.weight.detach().clone()
    seen = []
    hook = q.register_forward_hook(
        lambda mod, args, out: seen.append(args[0].detach().float().reshape(-1, before.shape[1])))
    samples = token_samples()
    with torch.no_grad():
        for i in range(0, 16, 8):
            model(input_ids=torch.stack(samples[i : i + 8]))
    hook.remove()
    norms = torch.cat(seen).pow(2).sum(0).sqrt()
    metric = before.float().abs() * norms
    k = int(before.shape[1] * 0.5)
    expected = torch.zeros_like(before, dtype=torch.bool).scatter_(1, metric.argsort(dim=1)[:, :k], True)
    report = prune(model, samples, pruner="wanda", sparsity=0.5, overrides=["pruner.count=reference"])
    assert torch.equal(q.weight == 0, expected)
    assert report.method == "wanda" and report.achieved["overall"] == pytest.approx(0.5)


def test_the_command_line_and_the_api_give_the_same_masks(tmp_path):
    from hydra import compose, initialize_config_dir

    from ecoflap_exp.api import CONFIG_DIR
    from ecoflap_exp.runner import run

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", ["model=llama_tiny", "calib=shipped_text", "suite=none", "scorer=zeroth",
                                 "scorer.num_samples=16", "sparsity=0.6", f"paths.root={tmp_path}", "device=cpu",
                                 "model.arch_overrides={num_hidden_layers: 2}"])
    record = run(cfg)
    from ecoflap_exp.plugins import build

    calib = build(cfg.calib)
    adapter = CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes",
                              arch_overrides={"num_hidden_layers": 2})
    report = prune(adapter.model, calib.samples(adapter), scorer="zeroth", sparsity=0.6, batch_size=4,
                   overrides=["scorer.num_samples=16"], tokenizer=adapter.tokenizer)
    assert report.method == record.method == "ecoflap-zeroth+wanda"
    assert report.plan == pytest.approx(record.plan)
    assert report.achieved["masks_sha1"] == record.achieved.masks_sha1


def test_targets_ignore_and_per_matrix_sparsities():
    model = tiny_llama()
    report = prune(model, token_samples(), sparsity=0.5, targets=[r"mlp\."], ignore=[r"layers\.1\."])
    per_matrix = report.achieved["per_matrix"]
    assert all(v == pytest.approx(0.5) for k, v in per_matrix.items() if "layers.0.mlp." in k)
    assert all(v == 0 for k, v in per_matrix.items() if "layers.0.mlp." not in k)
    model = tiny_llama()
    report = prune(model, token_samples(), sparsity={r"q_proj$": 0.25, r"down_proj$": 0.75})
    per_matrix = report.achieved["per_matrix"]
    assert per_matrix["model.layers.1.self_attn.q_proj"] == pytest.approx(0.25)
    assert per_matrix["model.layers.0.mlp.down_proj"] == pytest.approx(0.75)
    assert per_matrix["model.layers.0.mlp.up_proj"] == 0


def test_nm_through_the_api_and_a_saved_model_reloads_with_its_zeros(tmp_path):
    model = tiny_llama()
    report = prune(model, token_samples(), nm="2:4", pruner="sparsegpt")
    assert report.achieved["overall"] == pytest.approx(0.5)
    model.save_pretrained(tmp_path / "pruned")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    w = again.model.layers[0].mlp.up_proj.weight.reshape(-1, 4)
    assert ((w == 0).sum(1) >= 2).all()


def digits_pairs(count=16):
    rng = np.random.default_rng(0)
    return [(Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)), f"a photo of the digit {i % 10}")
            for i in range(count)]


def test_open_clip_model_with_its_own_preprocess_and_tokenizer():
    import open_clip

    shipped = OpenCLIPAdapter("digits_clip", pretrained="shipped:digits_clip")
    tokenizer = open_clip.get_tokenizer("digits_clip")
    report = prune(shipped.model, digits_pairs(), scorer="first", sparsity=0.5, preprocess=shipped.preprocess,
                   tokenizer=tokenizer)
    assert report.method == "ecoflap-first+wanda"
    assert report.achieved["overall"] == pytest.approx(0.5, abs=1e-3)
    assert set(report.achieved["per_tower"]) == {"vision", "text"}
    with pytest.raises(UserError, match="collate raw"):
        prune(OpenCLIPAdapter("digits_clip", pretrained="shipped:digits_clip").model, digits_pairs())


def test_timm_vit_with_labelled_images():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4,
                              num_classes=3)
    rng = np.random.default_rng(0)
    images = [(Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)), i % 3) for i in range(8)]
    report = prune(model, images, scorer="zeroth", sparsity=0.4, batch_size=4, overrides=["scorer.num_samples=8"])
    assert report.achieved["overall"] == pytest.approx(0.4, abs=2e-3)
    assert TimmViTAdapter.wraps(model) and report.matrices[0]["group"] == "matrix"  # ECoFLaP's ViT Wanda group


def test_bad_calls_end_in_one_message():
    with pytest.raises(UserError, match="no adapter wraps a torch.nn.modules.linear.Linear"):
        prune(torch.nn.Linear(4, 4), [torch.zeros(2, 4)])
    with pytest.raises(UserError, match="cannot compose scorer=zeroht"):
        prune(tiny_llama(), token_samples(), scorer="zeroht")
    with pytest.raises(UserError, match=r"sparsity=1.2 is outside \[0, 1\)"):
        prune(tiny_llama(), token_samples(), sparsity=1.2)
    with pytest.raises(UserError, match="the scorer reads 32 calibration samples but 16 were given"):
        prune(tiny_llama(), token_samples(), scorer="zeroth")


def test_the_api_checks_what_the_command_line_checks():
    """Issue 27 item 5: the same typed options and the same rules, before any work."""
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad_calls = [
        (dict(nm="2:4", sparsity=0.3), "nm=2:4 fixes the sparsity at 0.5, but sparsity=0.3"),
        (dict(targets=[r"no_such_matrix"]), r"targets=\['no_such_matrix'\] matches no matrix left to prune"),
        (dict(sparsity={r"nowhere$": 0.5}), r"sparsity=\{'nowhere\$': 0.5\} matches no matrix"),
        (dict(ignore=[r"."]), r"ignore=\['.'\] matches every matrix"),
        (dict(scorer="zeroth", overrides=["scorer.eps=-1"]), "scorer.eps=-1 is not valid: input should be greater "
                                                             "than 0"),
        (dict(overrides=["pruner.count=approx"]), "pruner.count='approx' is unknown; use one of exact, reference"),
        (dict(overrides=["+pruner.cout=exact"]), "pruner.cout is not a key anything reads; did you mean count?"),
    ]
    for kwargs, message in bad_calls:
        with pytest.raises(UserError, match=message):
            prune(model, token_samples(), **kwargs)
    with pytest.raises(UserError, match="calibration token ids are torch.float32; pass integer ids"):
        prune(model, [t.float() for t in token_samples()])
    with pytest.raises(UserError, match=r"token ids run from \d+ to 5000, outside the model's vocabulary of 384 ids"):
        prune(model, [torch.cat([t[:-1], torch.tensor([5000])]) for t in token_samples()])
    with pytest.raises(UserError, match="calibration is empty"):
        prune(model, [])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was pruned
    with torch.device("meta"):
        on_meta = tiny_llama()
    with pytest.raises(UserError, match="are on the meta device: the model was never loaded"):
        prune(on_meta, token_samples())
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"NaN/inf weights in 1 parameters \(model.layers.0.mlp.up_proj.weight\)"):
        prune(model, token_samples())


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_its_ecoflap_command_runs_outside_the_repo(tmp_path):
    """The wheel (built without the clone's files), installed into its own folder and run from an
    unrelated directory: the `ecoflap` command and `python -m ecoflap_exp` run a tiny point, and a
    user config folder joins the shipped ones through hydra.searchpath."""
    import os
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(root)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("ecoflap_exp/configs/")}
    assert {p.relative_to(root).as_posix().replace("configs/", "ecoflap_exp/configs/", 1)
            for p in (root / "configs").rglob("*.yaml")} <= shipped
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    mine = tmp_path / "my_configs" / "model"
    mine.mkdir(parents=True)
    (mine / "my_llama.yaml").write_text("defaults:\n  - llama_tiny\n  - _self_\n\nname: my_llama\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    common = ["sparsity=0.5", f"paths.root={work}", "device=cpu"]
    where = subprocess.run([sys.executable, "-c", "import ecoflap_exp; print(ecoflap_exp.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(tmp_path / "site"))  # the installed copy, not the clone
    command = subprocess.run([str(tmp_path / "site" / "bin" / "ecoflap"), "model=llama_tiny", *common], cwd=work,
                             env=env, capture_output=True, text=True, timeout=300)
    assert command.returncode == 0, command.stderr
    module = subprocess.run([sys.executable, "-m", "ecoflap_exp", "--multirun", "model=my_llama", "sparsity=0.3,0.6",
                             f"hydra.searchpath=[file://{tmp_path / 'my_configs'}]", *common[1:]], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert module.returncode == 0, module.stderr
    assert "2 points: 2 ok" in module.stderr
    models = sorted(json.loads(p.read_text())["model"] for p in (work / "results" / "runs").glob("*.json"))
    assert models == ["llama_tiny", "my_llama", "my_llama"]


def test_the_readme_example_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    assert scope["report"].achieved["overall"] == pytest.approx(0.6, abs=1e-3)
