"""What a saved pruned model carries beside its weights: pruning.json (the plan, what was reached,
the base checkpoint, the resolved config, versions, git commit), a README.md model card, and the
upload of the folder to the Hugging Face hub (`push_to_hub=<repo>`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecoflap_exp.record import RunRecord


def base_checkpoint(config: dict[str, Any]) -> str:
    model = config.get("model") or {}
    if model.get("init", "pretrained") == "random":
        return f"random init of {model.get('arch') or model.get('model_name')} (seed {model.get('seed')})"
    return str(model.get("checkpoint") or model.get("pretrained"))


def pruning_json(record: RunRecord) -> dict[str, Any]:
    keys = ("model", "method", "target", "scores", "plan", "achieved", "config", "versions", "git_commit")
    return {"base_checkpoint": base_checkpoint(record.config), **record.model_dump(mode="json", include=set(keys))}


def model_card(record: RunRecord, load_hint: str) -> str:
    """A README.md: what was pruned, how, what it reached and scored, and how to load it."""
    achieved, target = record.achieved, record.target
    assert achieved is not None and target is not None, "a saved model was pruned and verified"
    towers = "\n".join(f"| {tower} | {value:.4f} |" for tower, value in achieved.per_tower.items())
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in record.metrics.items())
    nm = target.nm
    library = load_hint.split(".", 1)[0]
    return f"""---
tags: [pruning, sparse, ecoflap_exp]
---

# {record.model} pruned with {record.method}

Base checkpoint: {base_checkpoint(record.config)}. Target sparsity {target.sparsity:g}
{f"({nm} semi-structured)" if nm else "(unstructured)"}; {achieved.overall:.4f} of the
{achieved.prunable_params:,} prunable weights are zero. The pruned weights are stored as zeros in
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
ecoflap_exp), the library versions and the git commit. Masks' SHA-1: `{achieved.masks_sha1}`.
"""


def write_extras(folder: Path, record: RunRecord, load_hint: str) -> None:
    (folder / "pruning.json").write_text(json.dumps(pruning_json(record), indent=1, default=str))
    (folder / "README.md").write_text(model_card(record, load_hint))


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload the saved folder to the hub model repo `repo` (created if missing); its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="Add a model pruned with ecoflap_exp")
    return f"https://huggingface.co/{repo}"
