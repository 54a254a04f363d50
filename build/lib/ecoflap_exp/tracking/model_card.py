"""What a saved pruned model carries beside its weights: pruning.json (the plan, what was reached,
the base checkpoint, the resolved config, versions, git commit), a README.md model card, and the
upload of the folder to the Hugging Face hub (`push_to_hub=<repo>`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def base_checkpoint(config: dict[str, Any]) -> str:
    model = config.get("model") or {}
    if model.get("init", "pretrained") == "random":
        return f"random init of {model.get('arch') or model.get('model_name')} (seed {model.get('seed')})"
    return str(model.get("checkpoint") or model.get("pretrained"))


def pruning_json(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "method", "target", "scores", "plan", "achieved", "config", "versions", "git_commit")
    return {"base_checkpoint": base_checkpoint(record["config"]), **{k: record.get(k) for k in keys}}


def model_card(record: dict[str, Any], load_hint: str) -> str:
    """A README.md: what was pruned, how, what it reached and scored, and how to load it."""
    achieved = record["achieved"]
    towers = "\n".join(f"| {tower} | {value:.4f} |" for tower, value in achieved.get("per_tower", {}).items())
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in record.get("metrics", {}).items())
    nm = record["target"].get("nm")
    library = load_hint.split(".", 1)[0]
    return f"""---
tags: [pruning, sparse, ecoflap_exp]
---

# {record['model']} pruned with {record['method']}

Base checkpoint: {base_checkpoint(record['config'])}. Target sparsity {record['target']['sparsity']:g}
{f"({nm} semi-structured)" if nm else "(unstructured)"}; {achieved['overall']:.4f} of the
{achieved['prunable_params']:,} prunable weights are zero. The pruned weights are stored as zeros in
a dense checkpoint, so it loads wherever the base model does.

| tower | sparsity |
|---|---|
{towers}

| metric | value |
|---|---|
{metrics or "| (no evaluation) | |"}

## Load

```python
import {library}
{load_hint}
```

`pruning.json` holds the plan, the per-matrix sparsities, the resolved config (to rerun it with
ecoflap_exp), the library versions and the git commit. Masks' SHA-1: `{achieved.get('masks_sha1')}`.
"""


def write_extras(folder: Path, record: dict[str, Any], load_hint: str) -> None:
    (folder / "pruning.json").write_text(json.dumps(pruning_json(record), indent=1, default=str))
    (folder / "README.md").write_text(model_card(record, load_hint))


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload the saved folder to the hub model repo `repo` (created if missing); its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="Add a model pruned with ecoflap_exp")
    return f"https://huggingface.co/{repo}"
