"""environment: the device `auto` picks, which process records, threads=auto, and stage timings."""

import torch

from ecoflap_exp import environment
from ecoflap_exp.environment import StageTimer, main_process, resolve_device, set_threads


def test_auto_is_the_cpu_without_cuda_and_a_named_device_is_taken_as_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")  # under accelerate launch: this process's own GPU
    assert resolve_device("auto") == torch.device("cuda", 3)


def test_only_rank_0_records(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert main_process()
    monkeypatch.setenv("RANK", "1")
    assert not main_process()


def test_threads_auto_is_one_for_a_small_model_and_a_number_is_taken(tiny_llama):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        set_threads("auto", tiny_llama)  # well under SMALL_MODEL_PARAMS
        assert torch.get_num_threads() == 1
        set_threads(2, tiny_llama)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_stage_keeps_its_seconds(monkeypatch):
    ticks = iter([10.0, 12.3456])
    monkeypatch.setattr(environment.time, "perf_counter", lambda: next(ticks))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    timer = StageTimer()
    with timer("prune"):
        pass
    assert timer.seconds == {"prune": 2.346} and timer.peak_gpu_gb == {}
