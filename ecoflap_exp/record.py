"""The run record: what one run did and measured, typed and versioned.

The runner fills it as the run goes (validated on every assignment) and the store writes it as
JSON; `results/` (tables, plots), `tracking/` (W&B, the model card) and the summary read it as
attributes. Schema 2 (this one) keeps the pruners' comparison groups under `comparison_groups`;
a schema-1 record (no `schema_version`: written before it existed) kept them as top-level
`<pruner>_group` keys and an empty calibration for a dense run, and is read by `RunRecord.load`
all the same. Plugin-owned parts (the
scorer's, evals' and fine-tuning's info) stay plain dicts: their shape is each plugin's own.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.dataclasses import dataclass

SCHEMA_VERSION = 2

Status = Literal["running", "ok", "failed", "interrupted"]


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Target(Part):
    """The validated target: the fraction pruned, the allocation's ceiling, the N:M pattern."""

    sparsity: float
    max_sparsity: float
    nm: str | None = None


class Achieved(Part):
    """What the weights hold after pruning (pruning.verify): zeros overall, per tower, block and
    matrix, and the SHA-1 of every matrix's zero pattern (records read back from W&B carry the
    first four only)."""

    overall: float
    prunable_params: int
    per_tower: dict[str, float] = {}
    per_block: dict[str, float] = {}
    per_matrix: dict[str, float] = {}
    masks_sha1: str | None = None


class Calibration(Part):
    """The calibration the run drew: its source's identity (which samples, from which files, the
    batches' SHA-1) and how many of the samples the pruner read."""

    source: str
    samples: int
    batch_size: int
    seed: int
    files: dict[str, int | None] = {}
    sha1: str
    pruner_samples: int
    redrawn_passes: int = 0


@dataclass
class MatrixReport:
    """One pruned matrix, as the engine reports it: its planned sparsity, how many weights the
    pruner zeroed, the zeros it held before, and the comparison group (row or matrix) it used."""

    name: str
    block: str
    tower: str
    rows: int
    cols: int
    planned_sparsity: float
    pruned: int
    zeros_before: int
    group: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunRecord(Part):
    """One run's record (see the module's docstring)."""

    schema_version: int = SCHEMA_VERSION
    id: str
    status: Status
    model: str
    #: the resolved config the run id hashes
    config: dict[str, Any]
    #: as the papers name it (`ecoflap-zeroth+wanda`), `dense`, or `as-loaded` (a pruned checkpoint)
    method: str
    scorer: str | None = None
    started: str | None = None
    finished: str | None = None
    #: the libraries' versions and the commit (with `-dirty` for uncommitted changes) the run ran on
    versions: dict[str, str] = {}
    git_commit: str | None = None
    #: why a failed or interrupted run stopped
    error: str | None = None
    target: Target | None = None
    #: group -> block score, what the scorer reported beside them, whether they came from the score cache
    scores: dict[str, float] = {}
    scorer_info: dict[str, Any] = {}
    scores_reused: bool = False
    calibration: Calibration | None = None
    #: group -> planned sparsity (empty for a dense run)
    plan: dict[str, float] = {}
    achieved: Achieved | None = None
    matrices: list[MatrixReport] = []
    #: pruner name -> tower -> the comparison group its scores were ranked in (Wanda's per-output rows...)
    comparison_groups: dict[str, dict[str, str]] = {}
    #: each part's dtype and autocast (model.precision=official)
    precision: dict[str, Any] = {}
    #: the fine-tuning stage's own report (mode, steps, losses, trajectories)
    finetune: dict[str, Any] | None = None
    #: `<eval>/<metric>` -> value, and what each evaluation reports beside them
    metrics: dict[str, float] = {}
    eval_info: dict[str, Any] = {}
    #: stage -> seconds, and (on a GPU) stage -> peak GB; the process's peak resident memory
    timings_s: dict[str, float] = {}
    torch_threads: int | None = None
    peak_gpu_gb: dict[str, float] = {}
    peak_rss_gb: float | None = None
    #: the saved model's folder (save_model=true) and its hub URL (push_to_hub)
    saved_model: str | None = None
    pushed_to: str | None = None
    #: block -> tower, for records read back from W&B (they carry no matrices)
    towers: dict[str, str] = {}
    #: where a record not from the local store came from (`wandb:<run>`)
    source: str | None = None

    @model_validator(mode="after")
    def finished_runs_say_what_they_reached(self) -> RunRecord:
        if self.status == "ok" and self.achieved is None:
            raise ValueError("a finished run (status ok) records what it achieved")
        return self

    @classmethod
    def load(cls, data: dict[str, Any]) -> RunRecord:
        """A record as read from JSON (schema 1 or 2); pydantic's ValidationError when it is not one."""
        if data.get("schema_version", 1) == 1:
            data = dict(data)
            groups = {key.removesuffix("_group"): data.pop(key) for key in list(data)
                      if key.endswith("_group") and isinstance(data[key], dict)}
            data.update(schema_version=SCHEMA_VERSION, comparison_groups=groups)
            if data.get("calibration") == {}:  # schema 1's dense runs: no calibration drawn
                data["calibration"] = None
        return cls.model_validate(data)

    def as_json(self) -> dict[str, Any]:
        """The record as plain JSON values."""
        return self.model_dump(mode="json")

    def tower_of(self) -> dict[str, str]:
        """Block (and matrix) name -> tower: from the pruned matrices, else as W&B kept it."""
        towers = dict(self.towers)
        for m in self.matrices:
            towers[m.name] = towers[m.block] = m.tower
        return towers
