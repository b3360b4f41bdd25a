#!/usr/bin/env bash
# The GPU check: run it as is on a machine with one CUDA GPU (about 2-3 minutes, at most 4 for the timed
# sections; the first run with internet then installs vLLM's CUDA build into .venv-vllm-gpu, after them).
#
#   make install              # with internet; on a GPU machine the CUDA build of torch first (README, GPU install)
#   bash scripts/gpu_check.sh # writes outputs/gpu_check/{gpu_check.log,summary.json,<stage>.log,vllm.log,vllm.json}
#
# No venv (a GPU machine with torch, transformers, lightning and peft in its python3): the script runs
# alignlab from src/ with that python. A preflight says first, in one message, what is missing there (CUDA
# torch, modules, the bundled model) and how to add it, and exits 2 before anything expensive.
#
# It checks, on SmolLM2-135M + LoRA (scripts/gpu_check.py says how):
#   mask        the shared-prompt 4D-mask forwards (RLOO groups, DPO pairs) against the per-row forwards on
#               CUDA: log-probs and LoRA gradients, sdpa and eager, fp32 (tight) and bf16 (held to fp32)
#   throughput  training fwd+bwd (32x512 tokens) and sampling tokens/s, with peak memory
#   stages      SFT, reward model, DPO, PPO, RLOO (4 steps each, bf16) and evaluate; each time-limited
#   vllm        rollout tokens/s through vLLM vs HF generate in the same RLOO loop (scripts/bench_vllm.py);
#               SKIP, with the reason, where vLLM cannot be installed or its server does not start
# Exit: 0 all passed, 1 something failed, 2 preflight failed, 3 nothing failed but vllm was skipped.
# Settings (environment): MODEL (smollm2_135m), DEVICE (cuda), OUT (outputs/gpu_check), PY (default
# .venv/bin/python where it exists, else python3), HF_HUB_OFFLINE (1), ALIGNLAB_CACHE (the bundled model's
# cache), TIME_SCALE (1: stretches every time limit), VLLM=0 skips vLLM, VLLM_PYTHON (a python with vllm;
# default: .venv-vllm-gpu, built here), VLLM_SPEC (vllm==0.33.0).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-smollm2_135m}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-outputs/gpu_check}
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
VLLM=${VLLM:-1}
VLLM_VENV=${VLLM_VENV:-.venv-vllm-gpu}
VLLM_SPEC=${VLLM_SPEC:-vllm==0.33.0}
TIME_SCALE=${TIME_SCALE:-1}

mkdir -p "$OUT"
rm -f "$OUT/summary.json" "$OUT/vllm.json" # a stale run's verdicts must not pass for this one's
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "gpu_check: no python at PY=$PY; run 'make install' (README: GPU install) or give PY=<python with torch>" >&2
    exit 2
fi
# src/ first: the checkout's code, with or without an installed alignlab; what PYTHONPATH held stays after it
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
fi

args=(all --device "$DEVICE" --model "$MODEL" --out "$OUT" --time-scale "$TIME_SCALE" --vllm "$VLLM")
args+=(--vllm-venv "$VLLM_VENV" --vllm-spec "$VLLM_SPEC")
if [ -n "${VLLM_PYTHON:-}" ]; then args+=(--vllm-python "$VLLM_PYTHON"); fi
status=0
PYTHONUNBUFFERED=1 "$PY" scripts/gpu_check.py "${args[@]}" 2>&1 | tee "$OUT/gpu_check.log" || status=$?
exit $status
