#!/usr/bin/env bash
# The GPU check: run it as is on a machine with one CUDA GPU (a few minutes; the first run also installs
# vLLM's CUDA build into .venv-vllm-gpu, in the background while the other sections run).
#
#   make install              # once; on a GPU machine install the CUDA build of torch first (README, GPU install)
#   bash scripts/gpu_check.sh # writes outputs/gpu_check/{gpu_check.log,summary.json,*.log,vllm.json}
#
# It checks, on SmolLM2-135M + LoRA in bf16 (trainer=gpu):
#   mask        the shared-prompt 4D-mask forwards (RLOO groups, DPO pairs) equal the per-row forwards on
#               CUDA: log-probs and LoRA gradients, sdpa and eager, fp32 and bf16
#   throughput  training fwd+bwd and sampling tokens/s with peak memory
#   stages      SFT, reward model, DPO, PPO, RLOO (4 steps each) and evaluate
#   vllm        rollout tokens/s through vLLM vs HF generate in the same RLOO loop (scripts/bench_vllm.py)
# Settings (environment): MODEL (smollm2_135m), DEVICE (cuda), OUT (outputs/gpu_check), PY (.venv/bin/python),
# VLLM_PYTHON (a python with vllm; default .venv-vllm-gpu/bin/python, built here), VLLM=0 skips vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-smollm2_135m}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-outputs/gpu_check}
PY=${PY:-.venv/bin/python}
VLLM=${VLLM:-1}
VLLM_VENV=${VLLM_VENV:-.venv-vllm-gpu}
VLLM_PYTHON=${VLLM_PYTHON:-$VLLM_VENV/bin/python}
VLLM_SPEC=${VLLM_SPEC:-vllm==0.33.0}

if [ ! -x "$PY" ]; then
    echo "gpu_check: no $PY; run 'make install' first (README: GPU install)" >&2
    exit 2
fi
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0}
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi

# vLLM's CUDA build lives in its own environment (it pins its own torch and transformers): built in the
# background while the other sections run, once.
install_pid=""
if [ "$VLLM" = "1" ] && [ "$DEVICE" = "cuda" ] && [ ! -x "$VLLM_PYTHON" ]; then
    echo "gpu_check: installing $VLLM_SPEC into $VLLM_VENV in the background (log: $OUT/vllm_install.log)"
    ( "$PY" -m venv "$VLLM_VENV" && "$VLLM_VENV/bin/pip" install --quiet "$VLLM_SPEC" ) \
        >"$OUT/vllm_install.log" 2>&1 &
    install_pid=$!
fi

status=0
"$PY" scripts/gpu_check.py mask --device "$DEVICE" --model "$MODEL" --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log" || status=1
"$PY" scripts/gpu_check.py throughput --device "$DEVICE" --model "$MODEL" --out "$OUT" 2>&1 | tee -a "$OUT/gpu_check.log" || status=1
"$PY" scripts/gpu_check.py stages --device "$DEVICE" --model "$MODEL" --out "$OUT" 2>&1 | tee -a "$OUT/gpu_check.log" || status=1

if [ "$VLLM" = "1" ]; then
    if [ -n "$install_pid" ] && ! wait "$install_pid"; then
        echo "gpu_check: the vLLM install failed (see $OUT/vllm_install.log); vllm section skipped" | tee -a "$OUT/gpu_check.log"
    fi
    if [ -x "$VLLM_PYTHON" ]; then
        "$PY" scripts/gpu_check.py vllm --device "$DEVICE" --model "$MODEL" --out "$OUT" \
            --vllm-python "$VLLM_PYTHON" 2>&1 | tee -a "$OUT/gpu_check.log" || status=1
    fi
fi
echo "gpu_check: $([ $status = 0 ] && echo PASS || echo FAIL); log $OUT/gpu_check.log" | tee -a "$OUT/gpu_check.log"
exit $status
