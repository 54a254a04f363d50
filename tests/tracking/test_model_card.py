"""model_card: the base checkpoint a saved model names, and the hub upload (the client mocked)."""

import pytest

from ecoflap_exp.tracking.model_card import base_checkpoint, push_to_hub


@pytest.mark.parametrize(("model", "expected"), [
    ({"init": "random", "arch": "llama_tiny", "seed": 3}, "random init of llama_tiny (seed 3)"),
    ({"init": "random", "model_name": "ViT-B-16", "seed": 0}, "random init of ViT-B-16 (seed 0)"),
    ({"checkpoint": "huggyllama/llama-7b", "init": "pretrained"}, "huggyllama/llama-7b"),
    ({"model_name": "ViT-B-16", "pretrained": "openai"}, "openai"),
])
def test_the_base_checkpoint_is_the_loaded_one_or_the_random_init(model, expected):
    assert base_checkpoint({"model": model}) == expected


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tmp_path, hub_calls):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert push_to_hub(tmp_path, "me/pruned") == "https://huggingface.co/me/pruned"
    assert hub_calls == [("create", "me/pruned", True), ("upload", str(tmp_path), "me/pruned", ["model.safetensors"])]
