"""lm-evaluation-harness on the in-memory tiny LLaMA, offline, on a local multiple-choice task: its
accuracies must equal the ones computed here from the model's own log-likelihoods."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from ecoflap_exp.errors import UserError
from ecoflap_exp.evals.lm_eval import LMEvalHarness, adds_bos, flatten
from ecoflap_exp.runner import run
from tests.fixtures_text import MC_DOCS, bos_tokenizer, write_mc_task

ROOT = Path(__file__).resolve().parents[2]


def continuation_logprob(adapter, context: str, continuation: str) -> float:
    """log p(continuation | context), summed over the continuation's tokens (no special tokens)."""
    ctx = adapter.tokenizer(context, add_special_tokens=False).input_ids
    cont = adapter.tokenizer(continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(adapter.model(ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(ctx) + k - 1, token].item() for k, token in enumerate(cont))


def direct_accuracies(adapter, docs) -> tuple[float, float]:
    """acc: argmax of the choices' log-likelihoods; acc_norm: of log-likelihood / len(choice)."""
    acc, acc_norm = [], []
    for question, choices, label in docs:
        lls = np.array([continuation_logprob(adapter, f"Question: {question}\nAnswer:", f" {c}") for c in choices])
        acc.append(float(np.argmax(lls) == label))
        acc_norm.append(float(np.argmax(lls / np.array([len(c) for c in choices])) == label))
    return float(np.mean(acc)), float(np.mean(acc_norm))


def test_accuracy_equals_the_models_own_loglikelihoods(tiny_llama, tmp_path):
    pytest.importorskip("lm_eval")
    tasks = write_mc_task(tmp_path / "tasks")
    ev = LMEvalHarness(["tiny_mc"], limit=7, batch_size=3, include_path=str(tasks), include_defaults=False,
                       bootstrap_iters=0)
    metrics = ev.evaluate(tiny_llama)
    acc, acc_norm = direct_accuracies(tiny_llama, MC_DOCS[:7])
    assert metrics == {"tiny_mc/acc": pytest.approx(acc), "tiny_mc/acc_norm": pytest.approx(acc_norm)}
    assert 0 < acc < 1  # a random model on this task: neither all right nor all wrong


def test_stderr_is_kept_when_computed(tiny_llama, tmp_path):
    pytest.importorskip("lm_eval")
    tasks = write_mc_task(tmp_path / "tasks")
    metrics = LMEvalHarness(["tiny_mc"], include_path=str(tasks), include_defaults=False,
                            bootstrap_iters=10).evaluate(tiny_llama)
    acc, _ = direct_accuracies(tiny_llama, MC_DOCS)
    # the standard error of a mean of n = 10 zeros and ones: sample std (n - 1) / sqrt(n)
    assert metrics["tiny_mc/acc"] == pytest.approx(acc)
    assert metrics["tiny_mc/acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) * 10 / 9 / 10))


def test_flatten_keeps_numeric_metrics_by_filter():
    results = {"gsm8k": {"alias": "gsm8k", "sample_len": 5, "exact_match,strict-match": 0.25,
                         "exact_match_stderr,strict-match": "N/A", "exact_match,flexible-extract": 0.5},
               "boolq": {"alias": "boolq", "acc,none": 0.75, "acc_stderr,none": 0.01}}
    assert flatten(results) == {"gsm8k/exact_match_strict-match": 0.25, "gsm8k/exact_match_flexible-extract": 0.5,
                                "boolq/acc": 0.75, "boolq/acc_stderr": 0.01}


def test_bos_only_when_the_tokenizer_puts_it_first(tiny_llama):
    assert not adds_bos(tiny_llama.tokenizer)  # ByT5 appends an EOS instead
    assert adds_bos(bos_tokenizer(["a"]))


def test_clear_messages(tiny_llama, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    tasks = write_mc_task(tmp_path / "tasks")
    with pytest.raises(UserError, match="unknown task.*no_such_task"):
        LMEvalHarness(["no_such_task"], include_path=str(tasks), include_defaults=False).evaluate(tiny_llama)
    (tasks / "tiny_mc.jsonl").unlink()
    with pytest.raises(UserError, match="dataset could not be loaded"):
        LMEvalHarness(["tiny_mc"], include_path=str(tasks), include_defaults=False).evaluate(tiny_llama)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed: the config fails to build
    with pytest.raises(UserError, match=r'pip install -e "\.\[lm_eval\]"'):
        LMEvalHarness(["tiny_mc"])


@pytest.mark.slow
def test_lm_eval_in_a_run(tmp_path):
    pytest.importorskip("lm_eval")
    tasks = write_mc_task(tmp_path / "tasks")
    overrides = [f"paths.root={tmp_path}", "device=cpu", "model=llama_tiny", "calib=shipped_text",
                 "suite=shipped_text", "sparsity=0.5", "+eval@evals.lm_eval=lm_eval", "evals.lm_eval.tasks=[tiny_mc]",
                 f"evals.lm_eval.include_path={tasks}", "evals.lm_eval.include_defaults=false",
                 "evals.lm_eval.bootstrap_iters=0"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        record = run(compose("config", overrides))
    assert set(record.metrics) == {"text/ppl", "lm_eval/tiny_mc/acc", "lm_eval/tiny_mc/acc_norm"}
    assert 0 <= record.metrics["lm_eval/tiny_mc/acc"] <= 1
    full = record.eval_info["lm_eval"]["results"]  # the harness's own JSON beside the flattened metrics
    assert full["results"]["tiny_mc"]["acc,none"] == record.metrics["lm_eval/tiny_mc/acc"]
    assert "tiny_mc" in full["configs"] and full["n-shot"]["tiny_mc"] == 0
