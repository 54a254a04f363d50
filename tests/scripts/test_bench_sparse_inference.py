"""scripts/bench_sparse_inference.py: dense vs 2:4 semi-structured forward on one tiny LLaMA block;
unsupported without CUDA, timed with it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_sparse_inference.py"


def bench(out: Path, *device: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), *device, "--layers", "1", "--hidden", "256", "--mlp", "512",
                           "--batch", "2", "--seqlen", "64", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


@pytest.mark.slow
def test_the_sparse_inference_bench_says_unsupported_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the bench times the 2:4 kernels instead")
    result = bench(tmp_path / "r.json")
    assert result["sparsity"] == 0.5 and result["dense_s"] > 0
    assert result["status"].startswith("unsupported on cpu: RuntimeError")


@pytest.mark.gpu
def test_on_cuda_every_decoder_linear_becomes_semi_structured_and_both_forwards_are_timed(tmp_path):
    result = bench(tmp_path / "r.json", "--device", "cuda")
    assert result["dtype"] == "float16" and result["sparsity"] == 0.5
    assert result["status"] == "ok", result["status"]
    assert result["converted_linears"] == 7  # q, k, v, o, gate, up, down of the one block
    assert result["speedup"] == pytest.approx(result["dense_s"] / result["semi_structured_s"])
