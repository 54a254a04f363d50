"""cli: a launcher whose plugin is missing is named with its extra before Hydra composes."""

import sys

import pytest

from ecoflap_exp.errors import UserError


def test_a_launcher_whose_plugin_is_missing_names_its_extra(monkeypatch):
    from ecoflap_exp.cli import check_launcher

    check_launcher(["--multirun", "hydra/launcher=slurm", "hydra/launcher=joblib"])  # installed here: no error
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)
    with pytest.raises(UserError, match=r'hydra/launcher=slurm needs hydra_plugins.hydra_submitit_launcher, which is '
                                        r'not installed; pip install "ecoflap_exp\[slurm\]"'):
        check_launcher(["--multirun", "hydra/launcher=slurm"])
