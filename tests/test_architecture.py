"""docs/ARCHITECTURE.md names every module of the package, and the layering it states holds: no
import runs upwards (models below everything, walk below scoring and pruning, allocation pure)."""

import ast
import re
from pathlib import Path

import pytest

from ecoflap_exp.models import registry

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
    # the pruning core serves the runner and the API, and never reads a run's config, store or evals
    "oneshot": {"runner", "api", "preflight", "plugins", "tuning", "evals", "finetune", "results", "tracking"},
    # the run record is read by everything that reads records: it imports nothing of the package
    "record": {"models", "walk", "tower_outputs", "input_stats", "scoring", "allocation", "pruning", "finetune",
               "evals", "data", "results", "tracking", "runner", "oneshot", "api", "errors", "options"},
}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def test_the_document_names_every_module():
    """A model family's module need not be named: models.registry finds it (the document's `models/<family>.py`)."""
    families = {cls.__module__ for cls in registry.families()}
    unnamed = [str(p.relative_to(PACKAGE)) for p in modules() if not re.search(rf"\b{p.stem}\b", DOC)
               and ".".join(p.relative_to(ROOT).with_suffix("").parts) not in families]
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


TESTS = ROOT / "tests"
#: test files that hold no one module: the layering here, the config tree (ecoflap_exp/configs holds YAML only)
WHOLE_TREE_TESTS = {"test_architecture.py", "test_configs.py"}


def unit_test_file_of(module: Path) -> Path:
    """tests/<package path>/test_<module>.py: ecoflap_exp/pruning/masks.py -> tests/pruning/test_masks.py."""
    relative = module.relative_to(PACKAGE)
    return TESTS / relative.parent / f"test_{relative.stem}.py"


def test_every_module_has_its_test_file():
    missing = [str(unit_test_file_of(p).relative_to(ROOT)) for p in modules() if p.name != "__main__.py"
               and not unit_test_file_of(p).exists()]
    assert missing == []


def test_every_unit_test_file_names_its_module():
    """A unit test file is test_<module>.py, or test_<module>_<aspect>.py for a second one, beside where
    the module's test file goes; end-to-end runs live in tests/integration/, scripts' tests in tests/scripts/."""
    stray = []
    for test_file in TESTS.rglob("test_*.py"):
        folder = test_file.parent.relative_to(TESTS)
        if folder.parts[:1] == ("integration",) or (folder == Path() and test_file.name in WHOLE_TREE_TESTS):
            continue
        source = ROOT / "scripts" if folder.parts[:1] == ("scripts",) else PACKAGE / folder
        subject = test_file.stem.removeprefix("test_")
        if not any(subject == p.stem or subject.startswith(f"{p.stem}_") for p in source.glob("*.py")):
            stray.append(str(test_file.relative_to(ROOT)))
    assert stray == []
