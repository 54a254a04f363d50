"""docs/ARCHITECTURE.md names every module of the package, and the layering it states holds: no
import runs upwards (models below everything, walk below scoring and pruning, allocation pure)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ecoflap_exp"
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
#: package part -> the parts it must never import
BELOW = {
    "models": {"walk", "tower_outputs", "input_stats", "scoring", "allocation", "pruning", "finetune", "evals", "data",
               "results", "tracking", "runner"},
    "walk": {"scoring", "allocation", "pruning", "finetune", "evals", "results", "tracking", "runner"},
    "tower_outputs": {"walk", "scoring", "allocation", "pruning", "finetune", "evals", "results", "tracking", "runner"},
    "input_stats": {"walk", "scoring", "allocation", "pruning", "finetune", "evals", "runner"},
    "allocation": {"walk", "scoring", "pruning", "finetune", "evals", "data", "runner"},
    "scoring": {"pruning", "finetune", "evals", "runner"},
    "pruning": {"scoring", "allocation", "finetune", "evals", "runner"},
    # fine-tuning sees models only; the runner hands it the training samples and the IDs
    "finetune": {"walk", "tower_outputs", "scoring", "allocation", "pruning", "evals", "data", "results", "tracking",
                 "runner"},
    "evals": {"scoring", "allocation", "pruning", "finetune", "runner"},
    "data": {"scoring", "allocation", "pruning", "finetune", "evals", "runner"},
}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def test_the_document_names_every_module():
    unnamed = [str(p.relative_to(PACKAGE)) for p in modules() if not re.search(rf"\b{p.stem}\b", DOC)]
    assert unnamed == []


@pytest.mark.parametrize("module", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_upwards(module):
    part = module.relative_to(PACKAGE).parts[0].removesuffix(".py")
    imported = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ecoflap_exp."):
            imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ecoflap_exp.")}
    assert not imported & BELOW.get(part, set()), f"{module.relative_to(PACKAGE)} imports {imported & BELOW[part]}"
