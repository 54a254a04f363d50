import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from ecoflap_exp.models.causal_lm import CausalLMAdapter  # noqa: E402
from tests.fixtures import write_image_folder  # noqa: E402


@pytest.fixture
def tiny_llama() -> CausalLMAdapter:
    return CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", seed=0)


@pytest.fixture
def llama_batches(tiny_llama: CausalLMAdapter) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 259, (8, 32), generator=g)
    return [tiny_llama.collate(list(ids[i : i + 4])) for i in (0, 4)]


@pytest.fixture
def images(tmp_path) -> Path:
    """An ImageFolder split of tiny images (tests/fixtures.py)."""
    return write_image_folder(tmp_path / "imagenet")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture
def hub_calls(monkeypatch) -> list[tuple]:
    """The hub client (huggingface_hub.HfApi) replaced by one that records its calls: ("create", repo,
    exist_ok) and ("upload", folder, repo, the folder's file names)."""
    calls: list[tuple] = []

    class RecordingApi:
        def create_repo(self, repo, exist_ok):
            calls.append(("create", repo, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr("huggingface_hub.HfApi", RecordingApi)
    return calls
