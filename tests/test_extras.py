"""extras: a config that needs an optional package names the extra that installs it."""

import sys

import pytest

from ecoflap_exp.errors import UserError
from ecoflap_exp.extras import require, require_import
from ecoflap_exp.plugins import Plugins
from tests.integration.test_reliability import config


@pytest.mark.parametrize(("module", "overrides", "extra"), [
    ("wandb", ["logger=wandb"], "wandb"),
    ("pycocoevalcap", ["model=blip2_t5_tiny", "suite=none", "+eval@evals.nocaps=nocaps"], "captions"),
])
def test_a_config_that_needs_a_missing_extra_names_it(tmp_path, monkeypatch, module, overrides, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    message = rf'needs {module}, which is not installed; pip install "ecoflap_exp\[{extra}\]"'
    with pytest.raises(UserError, match=message):
        Plugins.build(config(tmp_path, *overrides))


def test_an_installed_module_passes_and_a_missing_one_names_its_extra():
    require("json", "core", "anything")
    with pytest.raises(UserError, match=r'^logger=x needs no_such_module_xyz, which is not installed; pip install '
                                        r'"ecoflap_exp\[x\]" \(in a clone: pip install -e "\.\[x\]"\)$'):
        require("no_such_module_xyz", "x", "logger=x")


def test_an_installed_package_that_does_not_import_names_the_extra_to_reinstall():
    # json is installed, its submodule json.missing_part does not exist: the import fails, not the lookup
    with pytest.raises(UserError, match=r'^eval x: json does not import \(.*missing_part.*\); reinstall it with '
                                        r'pip install "ecoflap_exp\[x_extra\]"$'):
        require_import("json.missing_part", "x_extra", "eval x")
    with pytest.raises(UserError, match=r"needs not_a_package_xyz, which is not installed"):
        require_import("not_a_package_xyz.sub", "x_extra", "eval x")
    require_import("json.decoder", "x_extra", "eval x")
