"""The fine-tuning stage of a run, on HF accelerate: `accelerate launch run.py ... finetune=...`
trains data-parallel on several GPUs (each process its share of every epoch's batches, gradients
averaged by accelerate's DDP), the same code on one CPU in the tests; mixed precision and gradient
accumulation are accelerate's; checkpoints are `Accelerator.save_state` folders (model, optimizer,
RNG states, the masks or importance scores, the step and trajectories), so a killed run resumes
from its last checkpoint with the same masks and schedule position. Masked fine-tuning can instead
train an FSDP2-sharded copy of the model (finetune.fsdp=true, shard_copy), masking each process's
shards; accelerate then prepares only the optimizer, since its own FSDP plugin takes GPU launches
only and would swap the parameters the masks hold.

The loop follows ID_VL_Pruning's train_caption.py: AdamW over every parameter, its learning rate
set at each epoch's start by a cosine over the epochs (BLIP's cosine_lr_schedule), one optimizer
step per (accumulated) batch, then the importance update and, when the schedule says so, masking.
Where the reference differs: it skips the optimizer step at each epoch's last step (here every
step updates), and the loss goes through the adapter's `loss` (computed and reduced in fp32).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ecoflap_exp.errors import UserError
from ecoflap_exp.finetune.importance import Importance, ImportanceKind, check_betas
from ecoflap_exp.finetune.masking import FixedMasks, global_prune
from ecoflap_exp.finetune.schedule import CubicSchedule
from ecoflap_exp.models.adapter import ModelAdapter
from ecoflap_exp.models.seam import PrunableMatrix
from ecoflap_exp.options import Count, Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, Typed
from ecoflap_exp.progress import training_progress

log = logging.getLogger(__name__)
MixedPrecision = Literal["no", "fp16", "bf16"]


class LossOf(nn.Module):
    """The adapter's training loss as a module, so accelerate can wrap it (DDP, autocast): its one
    submodule is the adapter's model, whose parameters are the ones trained. `autocast`: the
    context its forward runs in, where accelerate does not wrap it (an FSDP-sharded model)."""

    def __init__(self, adapter: ModelAdapter, autocast: Callable[[], AbstractContextManager] = nullcontext):
        super().__init__()
        self.model = adapter.model
        self.adapter = adapter
        self.autocast = autocast

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        with self.autocast():
            return self.adapter.loss(batch)


@dataclass
class Progress:
    """What a checkpoint keeps of the loop beyond accelerate's own state."""

    step: int = 0
    losses: list[list[float]] = field(default_factory=list)
    sparsity: list[list[Any]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "losses": self.losses, "sparsity": self.sparsity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.losses, self.sparsity = state["step"], list(state["losses"]), list(state["sparsity"])


@dataclass
class Outcome:
    """What the stage did, for the run record (`info`) and, after iterative pruning, the per-matrix
    pruned counts the verify step checks (None: the one-shot plan still holds)."""

    info: dict[str, Any]
    pruned: dict[str, int] | None = None


def sparsity_point(step: int, matrices: list[PrunableMatrix], towers: Mapping[str, str]) -> list[Any]:
    """[step, overall, {tower: sparsity}] of the prunable matrices as they are now."""
    zeros: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for m in matrices:
        tower = towers[m.name]
        zeros[tower] = zeros.get(tower, 0) + m.zeros()
        sizes[tower] = sizes.get(tower, 0) + m.numel
    overall = sum(zeros.values()) / max(sum(sizes.values()), 1)
    return [step, overall, {t: zeros[t] / sizes[t] for t in sizes}]


def check_fsdp(checkpoint_every: int | None, mixed_precision: str) -> None:
    """What sharded training (finetune.fsdp=true) needs, before anything loads."""
    if "LOCAL_RANK" not in os.environ:
        raise UserError("finetune.fsdp=true shards the model over the processes of a distributed launch; start the "
                        "run with `accelerate launch` or `torchrun` (--nproc_per_node 1 on one device)")
    if checkpoint_every is not None:
        raise UserError(f"finetune.fsdp=true with finetune.checkpoint_every={checkpoint_every}: checkpoints of the "
                        f"shards are not written (accelerate's save_state keeps the models it prepared, and it "
                        f"does not prepare the sharded copy); set finetune.checkpoint_every=null")
    if mixed_precision == "fp16":
        raise UserError("finetune.fsdp=true with finetune.mixed_precision=fp16: the sharded gradients are not loss-"
                        "scaled; use bf16 or no")


def shard_copy(adapter: ModelAdapter) -> nn.Module:
    """A copy of the adapter's model sharded with FSDP2 (torch's fully_shard; FSDP1 needs an
    accelerator device, FSDP2 runs on gloo too) over the launch's processes: each block of the
    towers to prune its own unit, gathered for its forward and backward and resharded after, the
    rest of the model the root's. The model itself stays whole, since the run verifies, evaluates
    and saves it, so a process holds the model, one shard of the trained copy, its gradients and
    AdamW's moments: P + 4P/world instead of DDP's 4P."""
    from torch.distributed.fsdp import fully_shard

    paths = {id(module): path for path, module in adapter.model.named_modules()}
    sharded = copy.deepcopy(adapter.model)
    for p in sharded.parameters():
        p.requires_grad_(p.is_floating_point())
    for block in adapter.blocks():
        fully_shard(sharded.get_submodule(paths[id(block.module)]))
    fully_shard(sharded)
    return sharded


@torch.no_grad()
def gather_into(sharded: nn.Module, model: nn.Module) -> None:
    """The trained shards back into the whole model's parameters (a collective: every process)."""
    whole = dict(model.named_parameters())
    for name, p in sharded.named_parameters():
        whole[name].copy_(p.full_tensor())


class FineTuning(Typed, ABC):
    """Training hyper-parameters shared by the modes (the reference's defaults are the task
    configs'); `train`: the training split (None: the calibration samples); `fsdp`: train sharded
    (the modes that can: `unshardable` is empty)."""

    option_group = "finetune"

    mode = ""
    #: why the mode cannot train an FSDP-sharded model (finetune.fsdp=true); "" where it can
    unshardable = ""

    def __init__(self, train: Any = None, epochs: PositiveFloat = 1, max_steps: Count | None = None,
                 batch_size: Count = 8, lr: PositiveFloat = 1e-5, min_lr: NonNegativeFloat = 0.0,
                 weight_decay: NonNegativeFloat = 0.0, grad_accumulation: Count = 1,
                 mixed_precision: MixedPrecision = "no", checkpoint_every: Count | None = 500, resume: bool = True,
                 log_every: Count = 10, num_workers: NonNegativeInt = 0, seed: NonNegativeInt = 0,
                 fsdp: bool = False):
        if min_lr > lr:
            raise UserError(f"finetune.min_lr={min_lr} must lie in [0, finetune.lr={lr}]")
        if fsdp and self.unshardable:
            raise UserError(f"finetune={self.mode} with finetune.fsdp=true: {self.unshardable}; use finetune=masked "
                            f"or finetune.fsdp=false")
        if fsdp:
            check_fsdp(checkpoint_every, mixed_precision)
        self.train = train
        self.epochs, self.max_steps, self.batch_size = epochs, max_steps, batch_size
        self.lr, self.min_lr, self.weight_decay = float(lr), float(min_lr), float(weight_decay)
        self.grad_accumulation, self.mixed_precision = grad_accumulation, mixed_precision
        self.checkpoint_every, self.resume, self.log_every = checkpoint_every, resume, log_every
        self.num_workers, self.seed, self.fsdp = num_workers, seed, fsdp

    def oneshot_sparsity(self, target: float) -> float:
        """The sparsity the run's one-shot pruning reaches before this stage."""
        return target

    @property
    def use_id(self) -> bool:
        return False

    @abstractmethod
    def method_name(self, oneshot: str, target: float) -> str:
        """The run's method, given the one-shot method's name and the target sparsity."""

    # the mode's part of the loop
    def prepare(self, adapter: ModelAdapter) -> list[nn.Parameter]:
        """Set the model up for training (after the matrices are listed); the parameters to train:
        every floating-point one here."""
        return [p for p in adapter.model.parameters() if p.is_floating_point()]

    @abstractmethod
    def begin(self, matrices: list[PrunableMatrix], schedule_steps: int, steps_per_epoch: int,
              target: float, ids: Mapping[str, float] | None) -> Any:
        """Set up before the first step; returns the state a checkpoint keeps."""

    @abstractmethod
    def after_step(self, step: int, epoch_start: bool) -> bool:
        """After optimizer step `step`: update and mask; whether the masks changed."""

    def end(self) -> None:
        return None

    def run(self, adapter: ModelAdapter, samples: Sequence[Any], augment: bool, folder: Path, target: float,
            ids: Mapping[str, float] | None = None, trained_on: str = "") -> Outcome:
        """Train `adapter.model` on `samples` (raw samples its collate takes); checkpoints under
        `folder`, resumed from there when one exists and `resume`."""
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from accelerate.state import AcceleratorState

        accelerator = Accelerator(mixed_precision=self.mixed_precision,
                                  gradient_accumulation_steps=self.grad_accumulation, cpu=adapter.device.type == "cpu",
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        try:
            return self.train_with(accelerator, adapter, samples, augment, folder, target, ids, trained_on)
        finally:
            AcceleratorState._reset_state()  # the next run in this process may choose another precision

    def epoch_batches(self, count: int, epoch: int, processes: int, rank: int) -> list[list[int]]:
        """This process's batches of sample indices in `epoch`: a seeded shuffle, full batches only
        (as BLIP's training loader drops the last), dealt round-robin to the processes, and trimmed
        to whole optimizer steps."""
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        full = [order[i : i + self.batch_size].tolist() for i in range(0, count - self.batch_size + 1, self.batch_size)]
        per_process = len(full) // processes
        mine = full[rank : per_process * processes : processes]
        return mine[: len(mine) // self.grad_accumulation * self.grad_accumulation]

    def train_with(self, accelerator: Any, adapter: ModelAdapter, samples: Sequence[Any], augment: bool, folder: Path,
                   target: float, ids: Mapping[str, float] | None, trained_on: str) -> Outcome:
        model = adapter.model
        matrices = list(adapter.matrices())
        towers = {m.name: t.name for t in adapter.towers() for b in t.blocks for m in b.matrices}
        batches_per_epoch = len(self.epoch_batches(len(samples), 0, accelerator.num_processes,
                                                   accelerator.process_index))
        steps_per_epoch = batches_per_epoch // self.grad_accumulation
        if steps_per_epoch < 1:
            raise UserError(f"fine-tuning on {len(samples)} samples ({trained_on}) gives no optimizer step: "
                            f"finetune.batch_size={self.batch_size} x grad_accumulation={self.grad_accumulation} x "
                            f"{accelerator.num_processes} processes; lower them or give more training samples")
        total = self.max_steps or max(1, round(self.epochs * steps_per_epoch))
        was_trainable = {p: p.requires_grad for p in model.parameters()}
        trainable = self.prepare(adapter)
        if any(p.dtype != torch.float32 for p in trainable):
            log.warning("fine-tuning weights held in %s: optimizer updates lose precision; load the model with "
                        "model.dtype=float32 and set finetune.mixed_precision=bf16", trainable[0].dtype)
        chosen = set(trainable)
        for p in model.parameters():
            p.requires_grad_(p in chosen)
        optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=self.weight_decay)
        if self.fsdp:  # the shards sync their gradients themselves: no DDP around them, only autocast
            loss_module: nn.Module = LossOf(adapter, accelerator.autocast)
            optimizer = accelerator.prepare(optimizer)
        else:
            loss_module, optimizer = accelerator.prepare(LossOf(adapter), optimizer)
        progress = Progress()
        mode_state = self.begin(matrices, total, steps_per_epoch, target, ids)
        accelerator.register_for_checkpointing(progress, mode_state)
        resumed_from = self.restore(accelerator, folder, progress)
        if progress.step == 0:
            progress.sparsity.append(sparsity_point(0, matrices, towers))
        try:
            self.loop(accelerator, adapter, loss_module, optimizer, samples, augment, folder, progress, total,
                      steps_per_epoch, matrices, towers)
        finally:
            self.end()
            for p, trainable in was_trainable.items():
                p.requires_grad_(trainable)
                p.grad = None
        final = sparsity_point(progress.step, matrices, towers)
        if progress.sparsity[-1][0] != final[0]:
            progress.sparsity.append(final)
        model.eval()
        if accelerator.is_main_process and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # the run is done: its checkpoints are not needed
        losses = progress.losses
        info = {
            "mode": self.mode, "trained_on": trained_on, "samples": len(samples),
            "processes": accelerator.num_processes, "fsdp": self.fsdp, "batch_size": self.batch_size,
            "grad_accumulation": self.grad_accumulation,
            "mixed_precision": self.mixed_precision, "steps": total, "steps_per_epoch": steps_per_epoch,
            "epochs": total / steps_per_epoch, "lr": self.lr, "weight_decay": self.weight_decay,
            "resumed_from_step": resumed_from, "loss_first": losses[0][1] if losses else None,
            "loss_last": losses[-1][1] if losses else None, "loss_trajectory": losses,
            "sparsity_trajectory": progress.sparsity,
        }
        return Outcome(info, self.final_counts())

    def final_counts(self) -> dict[str, int] | None:
        """The per-matrix pruned counts of the last mask (None: the one-shot plan holds)."""
        return None

    def save_beside(self, folder: Path) -> None:
        """Write what the stage keeps apart from the model's weights into the saved model's folder
        (save_model=true): nothing here."""
        return None

    def restore(self, accelerator: Any, folder: Path, progress: Progress) -> int:
        """Load the last checkpoint under `folder` (its step), or 0 when there is none to resume."""
        latest = folder / "latest"
        if not latest.is_file():
            return 0
        checkpoint = folder / latest.read_text().strip()
        if not self.resume:
            log.warning("finetune.resume=false: the checkpoint %s is ignored and training starts over", checkpoint)
            return 0
        if not checkpoint.is_dir():
            raise UserError(f"{latest} names the checkpoint {checkpoint}, which does not exist; delete {folder} to "
                            f"start the fine-tuning over")
        accelerator.load_state(str(checkpoint))
        log.info("fine-tuning resumed from %s (step %d)", checkpoint, progress.step)
        return progress.step

    def save(self, accelerator: Any, folder: Path, step: int) -> None:
        """A complete checkpoint folder first, then `latest` names it (written atomically), then the
        older folder goes: a kill at any moment leaves a loadable checkpoint."""
        target = folder / f"step-{step}"
        accelerator.save_state(str(target), safe_serialization=False)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            latest = folder / "latest"
            previous = latest.read_text().strip() if latest.is_file() else None
            tmp = folder / ".latest.tmp"
            tmp.write_text(target.name)
            os.replace(tmp, latest)
            if previous and previous != target.name:
                shutil.rmtree(folder / previous, ignore_errors=True)

    def loop(self, accelerator: Any, adapter: ModelAdapter, loss_module: nn.Module, optimizer: Any,
             samples: Sequence[Any], augment: bool, folder: Path, progress: Progress, total: int, steps_per_epoch: int,
             matrices: list[PrunableMatrix], towers: Mapping[str, str]) -> None:
        epochs = math.ceil(total / steps_per_epoch)
        loss_module.train()
        status = f"{self.mode} fine-tuning"
        with training_progress(status, total, progress.step) as advance:
            while progress.step < total:
                epoch = progress.step // steps_per_epoch
                lr = self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                done = (progress.step - epoch * steps_per_epoch) * self.grad_accumulation
                batches = self.epoch_batches(len(samples), epoch, accelerator.num_processes,
                                             accelerator.process_index)[done:]
                loader = torch.utils.data.DataLoader(samples, batch_sampler=batches, collate_fn=list,
                                                     num_workers=self.num_workers)
                epoch_start = done == 0
                for raw in loader:
                    batch = adapter.collate(raw, augment=True) if augment else adapter.collate(raw)
                    with accelerator.accumulate(loss_module):
                        loss = loss_module(batch)
                        if not torch.isfinite(loss):
                            raise UserError(f"the fine-tuning loss is {loss.item()} at step {progress.step + 1}; "
                                            f"lower finetune.lr (now {self.lr:g}) or use finetune.mixed_precision=bf16 "
                                            f"or no instead of fp16")
                        accelerator.backward(loss)
                        optimizer.step()
                        if accelerator.sync_gradients and not optimizer.step_was_skipped:
                            progress.step += 1
                            if self.after_step(progress.step, epoch_start):
                                progress.sparsity.append(sparsity_point(progress.step, matrices, towers))
                            epoch_start = False
                        optimizer.zero_grad()
                    if not accelerator.sync_gradients:
                        continue
                    value = accelerator.gather(loss.detach().float()).mean().item()
                    if progress.step % self.log_every == 0 or progress.step in (1, total):
                        progress.losses.append([progress.step, value, lr])
                    advance(f"loss {value:.4f}  lr {lr:.2e}  sparsity {progress.sparsity[-1][1]:.4f}")
                    if self.checkpoint_every and progress.step % self.checkpoint_every == 0 and progress.step < total:
                        self.save(accelerator, folder, progress.step)
                    if progress.step >= total:
                        break


class MaskedFineTuning(FineTuning):
    """Train with the masks of the run's one-shot pruning fixed: a pruned weight stays exactly 0.
    `fsdp`: train an FSDP2-sharded copy of the model (shard_copy), each process masking its own
    shards, and gather it back into the model at the end."""

    mode = "masked"

    def method_name(self, oneshot: str, target: float) -> str:
        return ("dense" if target == 0 else oneshot) + "+masked-ft"

    def prepare(self, adapter: ModelAdapter) -> list[nn.Parameter]:
        if not self.fsdp:
            return super().prepare(adapter)
        self.adapter, self.whole = adapter, adapter.model
        adapter.model = shard_copy(adapter)  # the loss runs through the shards until end()
        return [p for p in adapter.model.parameters() if p.is_floating_point()]

    def begin(self, matrices: list[PrunableMatrix], schedule_steps: int, steps_per_epoch: int,
              target: float, ids: Mapping[str, float] | None) -> FixedMasks:
        self.masks = FixedMasks(matrices)
        if self.fsdp:
            self.masks.on_shards(self.whole, self.adapter.model)
        return self.masks

    def after_step(self, step: int, epoch_start: bool) -> bool:
        return False

    def loop(self, accelerator: Any, adapter: ModelAdapter, loss_module: nn.Module, optimizer: Any,
             *args: Any) -> None:
        self.masks.apply()  # a resumed run's restored masks hold
        self.masks.attach(optimizer.optimizer)
        super().loop(accelerator, adapter, loss_module, optimizer, *args)

    def end(self) -> None:
        self.masks.detach()
        if self.fsdp:
            gather_into(self.adapter.model, self.whole)
            self.adapter.model = self.whole


class IterativePruning(FineTuning):
    """The ID paper's pruning during fine-tuning: the cubic schedule from the run's one-shot
    sparsity (`initial_sparsity`, 0: dense) down to the target, one global threshold over the
    `score`s (times each matrix's ID with `use_id`), masking every `delta_t` steps and every step
    of the final warm-up; warm-ups in epochs. `reset_each_epoch`: start PLATON's averages over at
    each epoch, as the reference does by re-creating its Pruner every epoch."""

    mode = "iterative"
    unshardable = "its one threshold ranks every weight of the model together, and a process holds only its shards"

    def __init__(self, score: ImportanceKind = "platon", use_id: bool = False, initial_sparsity: Fraction = 0.0,
                 initial_warmup: NonNegativeFloat = 1, final_warmup: NonNegativeFloat = 1, delta_t: Count = 10,
                 beta1: Fraction = 0.85, beta2: Fraction = 0.95, min_pruned: NonNegativeInt = 2,
                 reset_each_epoch: bool = True, id: Any = None,
                 epochs: PositiveFloat = 3, **common: Any):
        super().__init__(epochs=epochs, **common)
        if initial_sparsity == 1:
            raise UserError(f"finetune.initial_sparsity={initial_sparsity} must lie in [0, 1)")
        if use_id and id is None:
            raise UserError("finetune.use_id=true needs finetune.id (an intrinsic-dimension scorer config)")
        if self.max_steps is None and initial_warmup + final_warmup >= self.epochs:
            raise UserError(f"the warm-ups leave no epochs to prune in: finetune.initial_warmup={initial_warmup} + "
                            f"finetune.final_warmup={final_warmup} >= finetune.epochs={self.epochs}; lower the "
                            f"warm-ups or train longer")
        self.score, self._use_id, self.initial_sparsity = score, use_id, initial_sparsity
        self.initial_warmup, self.final_warmup = initial_warmup, final_warmup
        self.delta_t, self.beta1, self.beta2 = delta_t, beta1, beta2
        self.min_pruned, self.reset_each_epoch, self.id = min_pruned, reset_each_epoch, id
        check_betas(beta1, beta2)

    @property
    def use_id(self) -> bool:
        return self._use_id

    def oneshot_sparsity(self, target: float) -> float:
        if target == 0:
            raise UserError("finetune=iterative prunes during training to `sparsity`, which is 0; give a sparsity > 0")
        if self.initial_sparsity >= target:
            raise UserError(f"finetune.initial_sparsity={self.initial_sparsity} must be below the target "
                            f"sparsity={target}")
        return self.initial_sparsity

    def method_name(self, oneshot: str, target: float) -> str:
        start = f"{oneshot}>" if self.initial_sparsity > 0 else ""
        return start + f"iterative-{self.score}" + ("-id" if self.use_id else "")

    def begin(self, matrices: list[PrunableMatrix], schedule_steps: int, steps_per_epoch: int,
              target: float, ids: Mapping[str, float] | None) -> Importance:
        if self.use_id:
            missing = [m.name for m in matrices if ids is None or m.name not in ids]
            if missing:
                raise UserError(f"finetune.use_id=true but no intrinsic dimension for {len(missing)} matrices "
                                f"({', '.join(missing[:3])}); the ID scorer must give one per matrix "
                                f"(finetune.id.granularity=matrix)")
        self.ids = ids if self.use_id else None
        self.matrices, self.target = matrices, target
        self.schedule = CubicSchedule(schedule_steps, round(self.initial_warmup * steps_per_epoch),
                                      round(self.final_warmup * steps_per_epoch), steps_per_epoch, self.delta_t,
                                      1 - self.initial_sparsity, 1 - target)
        self.importance = Importance(self.score, matrices, self.delta_t, self.beta1, self.beta2)
        self.counts: dict[str, int] | None = None
        return self.importance

    def after_step(self, step: int, epoch_start: bool) -> bool:
        if self.reset_each_epoch and epoch_start and step > 1:
            self.importance.reset()
        self.importance.update(step)
        ratio, mask = self.schedule.at(step)
        if not mask:
            return False
        scores = {m.name: self.importance.score(m) for m in self.matrices}
        # the final ratio prunes exactly the target fraction (1 - (1 - s) is not always s in floats)
        sparsity = self.target if ratio == self.schedule.final_ratio else 1 - ratio
        self.counts = global_prune(self.matrices, scores, sparsity, self.ids, self.min_pruned)
        return True

    def final_counts(self) -> dict[str, int] | None:
        return None if self.counts is None else dict(self.counts)
