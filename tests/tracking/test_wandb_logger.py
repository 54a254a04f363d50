"""W&B as a record source: runs become records (the API faked), an unreachable project, run names."""

from types import SimpleNamespace

import pytest

from ecoflap_exp.errors import UserError
from ecoflap_exp.tracking.wandb_logger import override_name, record_from_run, records_from_project
from tests.results.test_tables import record, write_tables_from


class FakeApi:
    """wandb.Api's part that make tables uses: .runs(path) -> runs with .config, .summary, .name, .state, .id."""

    def __init__(self, runs):
        self.paths, self._runs = [], runs

    def runs(self, path):
        self.paths.append(path)
        return iter(self._runs)


def as_wandb_run(rec):
    """What the public API returns for a run that WandbLogger logged (its summary keys)."""
    summary = {f"metrics/{k}": v for k, v in rec["metrics"].items()}
    summary.update(status=rec["status"], model=rec["model"], method=rec["method"], scorer=rec["scorer"],
                   target=rec["target"], plan=rec["plan"], achieved=rec["achieved"], peak_gpu_gb=rec["peak_gpu_gb"],
                   block_sparsity={"_type": "table-file"})
    return SimpleNamespace(id=rec["id"], name=f"name-{rec['id']}", state="finished", summary=summary,
                           config={**rec["config"], "_wandb": {"cli_version": "0.31"}})


def test_wandb_runs_become_records_and_join_the_local_ones(tmp_path, caplog):
    local = record("table1_blip2", 0.5, {"vqav2/accuracy": 50.0}, rid="same")
    remote_same = record("table1_blip2", 0.5, {"vqav2/accuracy": 1.0}, rid="same")  # the store wins over W&B
    remote_new = record("table1_blip2", 0.5, {"vqav2/accuracy": 58.0}, scorer="zeroth", rid="zeroth",
                        peak_gpu_gb={"score": 8.9, "prune": 8.7})
    foreign = SimpleNamespace(id="x1", name="someone-elses-run", state="crashed", summary={"loss": 1.0}, config={})
    api = FakeApi([as_wandb_run(remote_same), as_wandb_run(remote_new), foreign])
    table = write_tables_from(tmp_path, [local], wandb_projects=["me/ecoflap"], api=api)["table1_blip2"]
    assert api.paths == ["me/ecoflap"]
    assert table.loc["wanda", "vqav2/accuracy"] == "50.00"
    assert table.loc["ecoflap-zeroth+wanda", "vqav2/accuracy"] == "58.00"
    assert table.loc["ecoflap-zeroth+wanda", "prune_peak_gpu_gb"] == "8.90"
    assert "someone-elses-run" in caplog.text and "crashed" in caplog.text
    back = record_from_run(as_wandb_run(remote_new))
    assert back["config"] == remote_new["config"]  # W&B's own _wandb key dropped
    keys = ("id", "status", "model", "method", "metrics", "plan", "target")
    assert {k: back[k] for k in keys} == {k: remote_new[k] for k in keys}


def test_unreachable_wandb_project_is_one_message():
    class Offline:
        def runs(self, path):
            raise ValueError("Could not find project")

    with pytest.raises(UserError, match="could not read the W&B project 'me/nope'.*wandb login"):
        records_from_project("me/nope", Offline())


def test_run_names_come_from_the_sweep_overrides():
    """Keys outside a run's identity (the store's one list) and the experiment's name are left out;
    the device is part of the identity (a GPU run is not a CPU run)."""
    overrides = ["+experiment/method=ecoflap_zeroth", "sparsity=0.5", "paths.root=/x", "device=cuda", "offload=true",
                 "force=true", "experiment=table1_blip2", "model.prune_towers=[vision]"]
    assert override_name(overrides) == "method=ecoflap_zeroth,sparsity=0.5,device=cuda,model.prune_towers=[vision]"
