#!/usr/bin/env bash
# The full-size checks that need a GPU, in two device calls (random init, the released models' shapes, fp16):
#   1. BLIP-2 FlanT5-XL, every block: a plain forward, Wanda, ECoFLaP zeroth-order scores + Wanda;
#   2. LLaVA-1.5-7B, every block: a plain forward and Wanda;
#   3. the offload path: LLaMA-7B (13.5 GB in fp16) pruned with Wanda with the model on the CPU and torch
#      capped at 6 GB of the GPU, so the model is larger than the GPU it runs on.
# Each prints scripts/bench_prune.py's table (seconds, CPU seconds, peak GPU GB, each over the plain
# forward's) and writes its JSON and log to $OUT (the device tool's folder) or results/gpu_checks/.
#
# The device machines' image has torch, transformers, accelerate, rich and pillow but not the project's
# other needs; bring them as wheels (see the device tool's README): here, once,
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic pydantic-core annotated-types typing-inspection hydra-core omegaconf antlr4-python3-runtime
# then run it with `.whl` carried (the script installs them under /tmp/site), in two calls, each inside the
# device tool's 10-minute limit with room for the install:
#   bash scripts/gpu_checks.sh blip2            # at most 300 s of benches
#   bash scripts/gpu_checks.sh llava offload    # at most 150 + 150 s
# (no argument: all three). Every step has its own timeout.
set -u -o pipefail
out=${OUT:-results/gpu_checks}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$out/gpu.txt"

wanted=${*:-blip2 llava offload}
step() {  # step NAME SECONDS ARGS...: one bench, its log and JSON under $out, if NAME was asked for
    local name=$1 seconds=$2
    shift 2
    [[ " $wanted " == *" $name "* ]] || return 0
    echo "== $name (at most ${seconds}s)"
    timeout "$seconds" python3 scripts/bench_prune.py --device cuda --dtype float16 --blocks 0 \
        --out "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log" || echo "== $name: stopped (exit $?)"
}

# zeroth-order: the paper's 32 perturbations, the first block of each tower perturbed (the memory peak does
# not grow with more blocks; the time grows per matrix); 8 calibration samples in batches of 1
step blip2 300 --model blip2_t5 --dtype official --samples 8 --passes forward,wanda,zeroth --zeroth-samples 32 \
    --zeroth-blocks 1
step llava 150 --model llava_15_7b --samples 8 --passes forward,wanda
step offload 150 --model llama --samples 8 --seqlen 512 --passes wanda --offload --gpu-cap-gb 6
