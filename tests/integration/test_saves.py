"""A saved pruned model loads back with its own library alone (a subprocess that never imports
ecoflap_exp), with its zeros where the record says; the folder carries pruning.json and a model
card; push_to_hub uploads it (the hub client mocked)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ecoflap_exp.errors import UserError
from ecoflap_exp.preflight import validate
from ecoflap_exp.runner import run
from tests.fixtures import write_caption_pairs

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

#: model config -> (extra overrides, the loading code run by the library alone; `path` is the folder)
LOADERS = {
    "llama_tiny": (["calib=shipped_text", "suite=none"],
                   "import transformers\nmodel = transformers.AutoModelForCausalLM.from_pretrained(path)\n"
                   "transformers.AutoTokenizer.from_pretrained(path)\n"),
    "digits_clip": (["suite=none"],
                    "import open_clip\n"
                    "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:' + path)\n"
                    "assert preprocess is not None\n"),
    "timm_vit_tiny": ([], "import timm\nmodel = timm.create_model('local-dir:' + path, pretrained=True)\n"
                          "assert model.pretrained_cfg['input_size'][-1] == 32\n"),
    "vit_tiny": ([], "import transformers\nmodel = transformers.ViTForImageClassification.from_pretrained(path)\n"
                     "transformers.ViTImageProcessor.from_pretrained(path)\n"),
    "blip2_t5_tiny": (["calib=cc3m", "suite=none"],
                      "import transformers\nmodel = transformers.Blip2ForConditionalGeneration.from_pretrained(path)\n"
                      "processor = transformers.Blip2Processor.from_pretrained(path)\n"
                      "assert processor.num_query_tokens == model.config.num_query_tokens\n"),
    "hf_clip_tiny": (["calib=cc3m", "suite=none"],
                     "import transformers\nmodel = transformers.CLIPModel.from_pretrained(path)\n"
                     "transformers.CLIPImageProcessor.from_pretrained(path)\n"),
}
ZEROS = ("import json, sys\nassert 'ecoflap_exp' not in sys.modules\n"
         "print(json.dumps({n: [int((p == 0).sum()), p.numel()] for n, p in model.state_dict().items()}))\n")


def config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", [f"paths.root={tmp_path}", "device=cpu", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("model", list(LOADERS))
def test_a_saved_model_loads_back_with_its_library_alone_zeros_intact(tmp_path, model):
    overrides, loader = LOADERS[model]
    if "calib=cc3m" in overrides:
        files = write_caption_pairs(tmp_path / "pairs", count=8)
        overrides = [*overrides, f"calib.annotations={files['tsv']}", "calib.num_samples=8", "calib.batch_size=4"]
    record = run(config(tmp_path, f"model={model}", *overrides, "sparsity=0.5", "save_model=true"))
    folder = Path(record.saved_model)
    done = subprocess.run([sys.executable, "-c", f"path = {str(folder)!r}\n{loader}{ZEROS}"], capture_output=True,
                          text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    zeros = json.loads(done.stdout.strip().splitlines()[-1])
    per_matrix = record.achieved.per_matrix
    found = 0
    for name, fraction in per_matrix.items():
        key = next((k for k in (name, f"{name}.weight", f"{name}_weight") if k in zeros), None)  # open_clip in_proj
        if key is not None:
            found += 1
            count, numel = zeros[key]
            assert count / numel == pytest.approx(fraction), name
    assert found == len(per_matrix)
    saved = json.loads((folder / "pruning.json").read_text())
    assert saved["config"]["model"]["name"] == model and saved["git_commit"] == record.git_commit
    assert saved["base_checkpoint"].startswith(("random init", "shipped:")) and saved["versions"]["torch"]
    card = (folder / "README.md").read_text()
    assert f"# {model} pruned with {record.method}" in card and str(folder) in card


def test_push_to_hub_uploads_the_saved_folder(tmp_path, hub_calls):
    record = run(config(tmp_path, "model=llama_tiny", "calib=shipped_text", "suite=none", "sparsity=0.5",
                        "save_model=true", "push_to_hub=me/pruned-llama",
                        "model.arch_overrides={num_hidden_layers: 1}"))
    assert hub_calls[0] == ("create", "me/pruned-llama", True)
    assert hub_calls[1][2] == "me/pruned-llama" and {"README.md", "pruning.json", "config.json"} <= set(hub_calls[1][3])
    assert hub_calls[1][1] == record.saved_model
    assert record.pushed_to == "https://huggingface.co/me/pruned-llama"
    with pytest.raises(UserError, match="push_to_hub=me/x uploads the saved model; add save_model=true"):
        validate(config(tmp_path, "push_to_hub=me/x"))
