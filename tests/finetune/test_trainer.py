"""Fine-tuning (ecoflap_exp.finetune; the schedule, PLATON scores and masks have their own files): masked
fine-tuning that keeps pruned weights at 0, iterative pruning to the exact target, BLIP's
captioning loss against transformers' own, checkpoints that resume after a kill, W&B curves."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizer

from ecoflap_exp.api import prune
from ecoflap_exp.data.training import ImageCaptionSplit
from ecoflap_exp.errors import ConfigError, UserError
from ecoflap_exp.finetune.masking import FixedMasks
from ecoflap_exp.finetune.trainer import IterativePruning, MaskedFineTuning, Progress
from ecoflap_exp.models.adapter import IGNORE
from ecoflap_exp.models.blip import BlipCaptionAdapter
from ecoflap_exp.models.seam import PrunableMatrix
from ecoflap_exp.runner import run
from tests.fixtures import write_caption_pairs
from tests.integration.test_run import config

ROOT = Path(__file__).resolve().parents[2]


def one_matrix(values: list[list[float]]) -> PrunableMatrix:
    linear = torch.nn.Linear(len(values[0]), len(values), bias=False)
    linear.weight.data = torch.tensor(values)
    return PrunableMatrix("m", linear.weight, linear)


def pruned_llama(tiny_llama, llama_batches, dtype=torch.float32):
    tiny_llama.model.to(dtype)
    prune(tiny_llama, llama_batches, pruner="magnitude", sparsity=0.5)
    return tiny_llama


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_finetuning_keeps_pruned_weights_zero_with_adamw_and_weight_decay(tmp_path, tiny_llama,
                                                                                 llama_batches, dtype):
    adapter = pruned_llama(tiny_llama, llama_batches, dtype)
    before = {m.name: m.weight.clone() for m in adapter.matrices()}
    samples = [row for batch in llama_batches for row in batch["input_ids"]]
    outcome = MaskedFineTuning(lr=1e-2, weight_decay=0.5, epochs=4, batch_size=4).run(
        adapter, samples, False, tmp_path / "ckpt", 0.5, trained_on="test")
    assert outcome.pruned is None and outcome.info["steps"] == 8
    for m in adapter.matrices():
        zeros = before[m.name] == 0
        assert bool((m.weight[zeros] == 0).all()), m.name
        assert bool((m.weight[~zeros] != before[m.name][~zeros]).any()), m.name  # the rest trained
    assert all(point[1] == 0.5 for point in outcome.info["sparsity_trajectory"])


def test_two_accumulated_batches_of_4_step_as_one_batch_of_8(tmp_path, llama_batches):
    from ecoflap_exp.models.causal_lm import CausalLMAdapter

    samples = [row for batch in llama_batches for row in batch["input_ids"]]  # fixed-length windows
    weights = []
    for batch, accumulate in ((8, 1), (4, 2)):
        adapter = CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", seed=0)
        info = MaskedFineTuning(lr=1e-3, epochs=3, batch_size=batch, grad_accumulation=accumulate).run(
            adapter, samples, False, tmp_path / f"ckpt{batch}", 0.0, trained_on="test").info
        assert info["steps"] == 3
        weights.append(torch.cat([p.detach().flatten() for p in adapter.model.parameters()]))
    start = torch.cat([p.detach().flatten() for p in CausalLMAdapter(arch="llama_tiny", init="random",
                                                                     tokenizer="bytes", seed=0).model.parameters()])
    assert (weights[0] - start).abs().max() > 1e-3  # trained (3 Adam steps of 1e-3)
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=1e-5)  # Adam: g / sqrt(v) of tiny g


def test_iterative_pruning_follows_the_schedule_and_ends_exactly_at_the_target(tmp_path, tiny_llama,
                                                                             llama_batches):
    samples = [row for batch in llama_batches for row in batch["input_ids"]]  # 8 samples: 4 steps per epoch
    tuner = IterativePruning(score="magnitude", epochs=5, batch_size=2, delta_t=3, min_pruned=0,
                             initial_warmup=1, final_warmup=1, lr=1e-3)
    outcome = tuner.run(tiny_llama, samples, False, tmp_path / "ckpt", 0.6, trained_on="test")
    total = sum(m.numel for m in tiny_llama.matrices())
    trajectory = outcome.info["sparsity_trajectory"]
    masked = [step for step, *_ in trajectory[1:]]
    assert masked == [6, 8, 9, 12, 15, 16, 17, 18, 19, 20]  # delta_t, epoch ends, then the final epoch
    for step, overall, _ in trajectory[1:]:
        ratio, _ = tuner.schedule.at(step)
        expected = round(total * 0.6) if ratio == 0.4 else round(total * (1 - ratio))
        assert overall == expected / total, step  # regrowth between masks aside, each mask is exact
    assert sum(outcome.pruned.values()) == round(total * 0.6)
    assert sum(int((m.weight == 0).sum()) for m in tiny_llama.matrices()) == round(total * 0.6)


def test_iterative_with_a_much_larger_id_on_one_matrix_leaves_it_less_sparse(tmp_path, tiny_llama, llama_batches):
    samples = [row for batch in llama_batches for row in batch["input_ids"]]
    names = [m.name for m in tiny_llama.matrices()]
    favoured = names[3]
    ids = {name: (500.0 if name == favoured else 5.0) for name in names}
    tuner = IterativePruning(score="taylor", use_id=True, id=object(), epochs=3, batch_size=4, delta_t=1,
                             initial_warmup=1, final_warmup=1)
    outcome = tuner.run(tiny_llama, samples, False, tmp_path / "ckpt", 0.5, ids=ids, trained_on="test")
    sparsity = {m.name: outcome.pruned[m.name] / m.numel for m in tiny_llama.matrices()}
    assert sparsity[favoured] < 0.05 < min(v for k, v in sparsity.items() if k != favoured)


def tiny_blip() -> BlipCaptionAdapter:
    return BlipCaptionAdapter(arch="blip_caption_tiny", init="random", tokenizer="bytes", seed=0)


def test_blip_caption_loss_is_transformers_blip_loss_with_blips_label_smoothing(tmp_path):
    adapter = tiny_blip()
    pairs = write_caption_pairs(tmp_path, count=4)
    samples = ImageCaptionSplit(str(pairs["tsv"]), augment="eval").samples()
    batch = adapter.collate([samples[i] for i in range(4)])
    prompt = adapter.prompt_length()
    assert prompt == 1 + len("a picture of ") and (batch["input_ids"][:, 0] == adapter.bos).all()
    assert (batch["labels"][:, :prompt] == IGNORE).all() and (batch["labels"][:, prompt] != IGNORE).all()
    adapter.model.text_decoder.label_smoothing = 0.1
    theirs = adapter.model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    torch.testing.assert_close(adapter.loss(batch), theirs)


def test_blip_with_bert_tokenizer_puts_dec_in_place_of_cls(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "dog", "on", "grass"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    adapter = tiny_blip()
    adapter.tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))
    assert adapter.token_ids("a picture of a dog") == [adapter.bos, 5, 6, 7, 5, 8, 3]
    assert adapter.prompt_length() == 4  # [DEC] a picture of


def test_tiny_blip_captioner_finetuned_on_fixture_captions_lowers_its_training_loss(tmp_path):
    adapter = tiny_blip()
    pairs = write_caption_pairs(tmp_path, count=8)
    samples = ImageCaptionSplit(str(pairs["tsv"]), augment="eval").samples()
    batch = adapter.collate([samples[i] for i in range(8)])
    with torch.no_grad():
        before = adapter.loss(batch).item()
    MaskedFineTuning(lr=2e-3, epochs=10, batch_size=4).run(adapter, samples, False, tmp_path / "ckpt", 0.0,
                                                          trained_on="fixture captions")
    with torch.no_grad():
        after = adapter.loss(batch).item()
    assert after < 0.9 * before, (before, after)  # 5.97 -> 5.05 here


def test_runs_without_a_training_split_train_on_the_calibration_and_say_so(tmp_path):
    record = run(config(tmp_path, "finetune=iterative", "finetune.score=platon", "finetune.delta_t=1",
                        "sparsity=0.5"))
    tuned = record.finetune
    assert record.method == "iterative-platon" and tuned["trained_on"].startswith("calibration samples")
    assert "finetune.train is null" in tuned["trained_on"]
    assert record.achieved.overall == 0.5 and tuned["sparsity_trajectory"][-1][1] == 0.5
    assert tuned["sparsity_trajectory"][-1][2] == record.achieved.per_tower
    assert not (tmp_path / "results" / "checkpoints" / record.id).exists()  # done: checkpoints removed


def test_masked_run_after_one_shot_ecoflap_keeps_its_plan_in_bf16_autocast(tmp_path):
    record = run(config(tmp_path, "scorer=zeroth", "finetune=masked", "finetune.mixed_precision=bf16",
                        "sparsity=0.6"))
    assert record.method == "ecoflap-zeroth+wanda+masked-ft"
    assert record.achieved.overall == record.finetune["oneshot_sparsity"] == pytest.approx(0.6, abs=1e-4)
    assert record.finetune["mixed_precision"] == "bf16" and math.isfinite(record.finetune["loss_last"])


def test_a_kept_weight_training_lands_on_zero_is_allowed_but_a_pruned_weight_that_regrows_is_not(tmp_path,
                                                                                                  monkeypatch):
    real_end = MaskedFineTuning.end

    def zero_one_kept_weight(self):
        real_end(self)
        m = self.masks.matrices[0]
        m.weight[tuple(self.masks.keep[m.name].nonzero()[0].tolist())] = 0.0

    monkeypatch.setattr(MaskedFineTuning, "end", zero_one_kept_weight)
    record = run(config(tmp_path, "finetune=masked", "sparsity=0.5"))
    assert record.finetune["zeroed_by_training"] == 1
    monkeypatch.setattr(FixedMasks, "apply", lambda self: None)  # pruned weights now regrow
    monkeypatch.setattr(FixedMasks, "clear_gradients", lambda self: None)
    with pytest.raises(RuntimeError, match="does not match the plan"):
        run(config(tmp_path, "finetune=masked", "finetune.lr=1e-2", "sparsity=0.6"))


def test_bad_finetune_input_ends_in_one_message_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="finetune.lr=0 is not valid: input should be greater than 0"):
        run(config(tmp_path, "finetune=masked", "finetune.lr=0"))
    with pytest.raises(ConfigError, match="training split .*missing.json.* does not exist"):
        run(config(tmp_path, "model=blip_caption_tiny", "calib=digits", "suite=none", "finetune=masked",
                   f"+finetune.train={{_target_: ecoflap_exp.data.training.ImageCaptionSplit, "
                   f"annotations: {tmp_path}/missing.json}}"))
    with pytest.raises(ConfigError, match="warm-ups leave no epochs"):
        run(config(tmp_path, "finetune=iterative", "finetune.epochs=2"))
    with pytest.raises(ConfigError, match="prunes during training to `sparsity`, which is 0"):
        run(config(tmp_path, "finetune=iterative", "sparsity=0"))
    with pytest.raises(ConfigError, match="finetune.epoc is not a key"):
        run(config(tmp_path, "finetune=masked", "+finetune.epoc=3"))


def run_cli(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), "model=llama_tiny", "calib=shipped_text",
                             "suite=shipped_text", "device=cpu", f"paths.root={root}", *args],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_finetuning_run_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    args = ("finetune=iterative", "finetune.score=platon", "finetune.epochs=30", "finetune.checkpoint_every=5",
            "finetune.delta_t=3", "sparsity=0.5")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    killed.mkdir()
    whole.mkdir()
    proc = run_cli(killed, *args)
    deadline = time.time() + 300
    while not list((killed / "results" / "checkpoints").glob("*/latest")) and time.time() < deadline:
        time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((killed / "results" / "runs").glob("*.json"))  # killed before its record
    for root in (killed, whole):
        done = run_cli(root, *args)
        assert done.wait(timeout=600) == 0, done.stderr.read()
    (resumed,) = [json.loads(p.read_text()) for p in (killed / "results" / "runs").glob("*.json")]
    (straight,) = [json.loads(p.read_text()) for p in (whole / "results" / "runs").glob("*.json")]
    assert resumed["finetune"]["resumed_from_step"] >= 5 and straight["finetune"]["resumed_from_step"] == 0
    assert resumed["achieved"]["masks_sha1"] == straight["achieved"]["masks_sha1"]
    assert resumed["finetune"]["loss_trajectory"] == straight["finetune"]["loss_trajectory"]
    assert resumed["finetune"]["sparsity_trajectory"] == straight["finetune"]["sparsity_trajectory"]
    assert resumed["metrics"] == straight["metrics"]


class RecordingRun:
    """What W&B's run receives, kept in order (no W&B service process: see the test below)."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict, int | None]] = []
        self.summary: dict = {}

    def log(self, values: dict, step: int | None = None) -> None:
        self.logged.append((values, step))

    def log_artifact(self, artifact) -> None:
        pass

    def finish(self) -> None:
        pass


def test_wandb_logs_the_sparsity_and_loss_trajectories_as_curves(tmp_path, monkeypatch):
    """Every trajectory point reaches W&B at its own step. It once failed in a full `make test` on a
    loaded machine and passed alone: it read back the .wandb file that W&B's service process writes,
    so its outcome hung on that process starting and flushing in time. The run W&B hands back is now
    a recorder, which makes it deterministic; the service round trip stays covered by
    test_sweeps.test_wandb_offline_logs_the_record_and_it_reads_back."""
    import wandb

    recording = RecordingRun()
    monkeypatch.setattr(wandb, "init", lambda **settings: recording)
    record = run(config(tmp_path, "logger=wandb", f"logger.dir={tmp_path}", "logger.mode=offline",
                        "finetune=iterative", "finetune.delta_t=1", "finetune.log_every=1", "sparsity=0.5"))
    curves = {step: values for values, step in recording.logged if step is not None}
    assert len(curves) == len(recording.logged) - 1  # the curves, then the run's scalars once
    for step, overall, towers in record.finetune["sparsity_trajectory"]:
        assert curves[step]["finetune/sparsity"] == overall
        assert curves[step]["finetune/sparsity/decoder"] == towers["decoder"]
    for step, loss, lr in record.finetune["loss_trajectory"]:
        assert curves[step]["finetune/loss"] == loss and curves[step]["finetune/lr"] == lr
    assert sorted(curves) == sorted({s for s, *_ in record.finetune["sparsity_trajectory"]}
                                    | {s for s, *_ in record.finetune["loss_trajectory"]})


def test_open_clip_as_the_id_paper_prunes_it_and_its_training_view():
    from PIL import Image

    from ecoflap_exp.models.open_clip import OpenCLIPAdapter

    adapter = OpenCLIPAdapter("clip_tiny", init="random", prune_in_proj=False)
    names = {m.name.rsplit(".", 2)[-2] + "." + m.name.rsplit(".", 1)[-1] for m in adapter.matrices()}
    assert names == {"attn.out_proj", "mlp.c_fc", "mlp.c_proj"}
    image = Image.fromarray(torch.arange(64 * 48 * 3).reshape(48, 64, 3).remainder(256).to(torch.uint8).numpy())
    torch.manual_seed(0)
    views = [adapter.collate([(image, "a pattern")], augment=True)["image"] for _ in range(2)]
    plain = adapter.collate([(image, "a pattern")])["image"]
    assert views[0].shape == plain.shape and not torch.equal(views[0], views[1])  # random crops and flips


@pytest.mark.slow
def test_two_data_parallel_processes_train_as_one_process_with_their_batches_together(tmp_path):
    # torchrun (what `accelerate launch` runs) with 2 CPU processes (gloo): each takes every other batch of 4
    # and accelerate's DDP averages their gradients, which is one process's batch of 8 (fixed-length windows)
    torchrun = Path(sys.executable).parent / "torchrun"
    common = ["model=llama_tiny", "calib=shipped_text", "suite=shipped_text", "device=cpu", "finetune=masked",
              "finetune.lr=1e-3", "finetune.epochs=2", "finetune.log_every=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    records = {}
    for name, launcher, batch in (("two", [str(torchrun), "--nproc_per_node", "2"], 4),
                                  ("one", [sys.executable], 8)):
        root = tmp_path / name
        root.mkdir()
        done = subprocess.run([*launcher, str(ROOT / "run.py"), *common, f"finetune.batch_size={batch}",
                               f"paths.root={root}"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        (records[name],) = [json.loads(p.read_text()) for p in (root / "results" / "runs").glob("*.json")]
    two, one = records["two"]["finetune"], records["one"]["finetune"]
    assert two["processes"] == 2 and one["processes"] == 1 and two["steps"] == one["steps"] == 4
    losses = [loss for _, loss, _ in one["loss_trajectory"]]
    assert losses[-1] < losses[0] - 0.01  # the steps train: a different batch split would show
    assert [loss for _, loss, _ in two["loss_trajectory"]] == pytest.approx(losses, rel=1e-5)  # mean over ranks
    ppl = {k: r["metrics"]["text/ppl"] for k, r in records.items()}
    assert ppl["two"] == pytest.approx(ppl["one"], rel=1e-5)
    assert records["two"]["achieved"]["masks_sha1"] == records["one"]["achieved"]["masks_sha1"]


def test_iterative_from_a_one_shot_start_begins_at_its_sparsity(tmp_path):
    record = run(config(tmp_path, "finetune=iterative", "finetune.initial_sparsity=0.3", "finetune.delta_t=1",
                        "sparsity=0.6"))
    tuned = record.finetune
    assert record.method == "wanda>iterative-platon" and tuned["oneshot_sparsity"] == pytest.approx(0.3, abs=1e-4)
    assert tuned["sparsity_trajectory"][0][1] == tuned["oneshot_sparsity"]
    total = record.achieved.prunable_params
    assert record.achieved.overall == round(0.6 * total) / total and tuned["zeroed_by_training"] == 0


@pytest.mark.parametrize("reset", [True, False])
def test_platon_starts_over_at_each_epoch_as_the_reference_recreates_its_pruner(reset):
    m = one_matrix([[1.0, 2.0]])
    tuner = IterativePruning(score="platon", reset_each_epoch=reset, epochs=3)
    tuner.begin([m], schedule_steps=15, steps_per_epoch=5, target=0.5, ids=None)
    for step in range(1, 7):
        m.param.grad = torch.tensor([[1.0, 1.0]])
        tuner.after_step(step, epoch_start=step == 6)
    # step 6 sits at position 6 of a 10-step window, whose running mean starts from the zero the state
    # is created with: a fresh state gives (0 * 6 + |w g|) / 7, the kept one 6 |w g| / 7 after six steps
    expected = [[1 / 7, 2 / 7]] if reset else [[6 / 7, 12 / 7]]
    torch.testing.assert_close(tuner.importance.ipt["m"], torch.tensor(expected))


def test_resume_false_ignores_a_checkpoint(tmp_path):
    (tmp_path / "latest").write_text("step-5")
    progress = Progress()
    assert MaskedFineTuning(resume=False).restore(None, tmp_path, progress) == 0 and progress.step == 0


def fsdp_setup() -> tuple:
    """A magnitude-pruned tiny LLaMA (the same in every process) and 16 fixed-length samples."""
    from ecoflap_exp.models.causal_lm import CausalLMAdapter

    adapter = CausalLMAdapter(arch="llama_tiny", init="random", tokenizer="bytes", seed=0)
    ids = torch.randint(3, 259, (16, 32), generator=torch.Generator().manual_seed(0))
    prune(adapter, [adapter.collate(list(ids[:8]))], pruner="magnitude", sparsity=0.5)
    return adapter, list(ids)


def fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One process of a gloo launch, as torchrun sets it up: masked fine-tuning under FSDP2 at batch 4."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    adapter, samples = fsdp_setup()
    whole = {m.name: m.weight != 0 for m in adapter.matrices()}
    tuner = MaskedFineTuning(lr=1e-2, weight_decay=0.1, epochs=2, batch_size=4, log_every=1, fsdp=True,
                             checkpoint_every=None)
    cut = []

    def begin_and_check_the_cut(*args):
        masks = MaskedFineTuning.begin(tuner, *args)
        for (param, keep), m in zip(masks.shards, adapter.matrices(), strict=True):  # one matrix per parameter
            assert type(param).__name__ == "DTensor" and keep.shape == param.to_local().shape
            assert torch.equal(keep, whole[m.name].chunk(world)[rank])  # FSDP2 cuts dim 0 into `world` chunks
            cut.append(keep.shape[0] / whole[m.name].shape[0])
        return masks

    tuner.begin = begin_and_check_the_cut
    outcome = tuner.run(adapter, samples, False, Path(out) / f"ckpt{rank}", 0.5, trained_on="test")
    torch.save({"info": outcome.info, "state": adapter.model.state_dict(), "cut": cut}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_masked_finetuning_under_fsdp_on_two_cpu_processes_masks_each_shard_and_trains_as_one_process(tmp_path):
    # FSDP2 (fully_shard) runs on CPU with gloo (FSDP1 refuses: "FSDP needs a non-CPU accelerator device"):
    # two processes at batch 4 each hold half of every matrix's rows and mask their own half; the model they
    # gather back is one process's at batch 8 with the same masks, every pruned weight still 0
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(fsdp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    adapter, samples = fsdp_setup()
    pruned = {name: p == 0 for name, p in adapter.model.state_dict().items()}
    one = MaskedFineTuning(lr=1e-2, weight_decay=0.1, epochs=2, batch_size=8, log_every=1).run(
        adapter, samples, False, tmp_path / "one", 0.5, trained_on="test").info
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    two = ranks[0]["info"]
    assert two["fsdp"] and two["processes"] == 2 and two["steps"] == one["steps"] == 4
    assert set(ranks[0]["cut"]) == {0.5}  # every matrix halved
    losses = [loss for _, loss, _ in one["loss_trajectory"]]
    assert losses[-1] < losses[0] - 0.1
    assert [loss for _, loss, _ in two["loss_trajectory"]] == pytest.approx(losses, rel=1e-5)
    whole = adapter.model.state_dict()
    for name, tensor in whole.items():
        for rank in ranks:  # each process gathered the whole trained model back
            torch.testing.assert_close(rank["state"][name], tensor, rtol=0, atol=1e-5)
    for m in adapter.matrices():
        assert bool((ranks[0]["state"][m.name + ".weight"][pruned[m.name + ".weight"]] == 0).all()), m.name
    assert [point[1] for point in two["sparsity_trajectory"]] == [0.5, 0.5]


def test_fsdp_is_refused_where_it_cannot_hold_before_anything_loads(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(UserError, match="finetune.fsdp=true shards the model over the processes of a distributed"):
        MaskedFineTuning(fsdp=True, checkpoint_every=None)
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="finetune.checkpoint_every=500: checkpoints of the shards are not written"):
        MaskedFineTuning(fsdp=True)
    with pytest.raises(UserError, match="mixed_precision=fp16: the sharded gradients are not loss-scaled"):
        MaskedFineTuning(fsdp=True, checkpoint_every=None, mixed_precision="fp16")
    with pytest.raises(UserError, match="finetune=iterative with finetune.fsdp=true: its one threshold"):
        IterativePruning(fsdp=True, checkpoint_every=None)
    assert MaskedFineTuning(fsdp=True, checkpoint_every=None, mixed_precision="bf16").fsdp
