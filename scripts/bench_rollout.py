"""Rollout sampling speed, alignlab vs TRL 1.16's RLOO generate call, in one process (A/B alternating).

    python scripts/bench_rollout.py                    # bundled SmolLM2-135M + LoRA, 2 prompts x 4 x 16 tokens
    python scripts/bench_rollout.py --rounds 20 --k 8

The online-RL case of ``scripts/bench.py`` reports rollout tokens/s from separate training processes,
where one framework's rate moves by +-20% between rounds on a shared machine. This script times only the
sampling call, alternating the two in the same process on the same LoRA model and prompts:

* TRL: ``model.generate(input_ids, attention_mask, generation_config=...)`` under ``torch.no_grad``,
  with the ``GenerationConfig`` TRL 1.16's ``RLOOTrainer`` builds (sampling, temperature 1, top-p 1,
  top-k 0, no compile), on the peft model: the call its ``_generate_single_turn`` makes. Timed like the
  trainer case (generate alone).
* alignlab: ``alignlab.models.generation.sample`` as the RLOO rollout calls it (lean LoRA modules, each
  prompt's KV cache computed once for its k samples), timed whole (also EOS cut and text decoding).

Reports median tokens/s (decoded positions per second) and the per-round ratio (median, min, max);
writes ``bench/rollout.json``. Needs no TRL install (the call is plain transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Movie review: The movie was dull cinema",
    "Movie review: This film felt plot",
    "Movie review: The acting is scene",
    "Movie review: Overall the story was",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2_135m", help="alignlab model source (tiny, smollm2_135m)")
    p.add_argument("--prompts", type=int, default=2, help="distinct prompts per rollout batch")
    p.add_argument("--k", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=12, help="measured A/B rounds (order alternates)")
    p.add_argument("--out", default=str(REPO / "bench" / "rollout.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from transformers import GenerationConfig

    from alignlab.models import LoraSpec, ModelSpec
    from alignlab.models.generation import SamplingConfig, left_pad, sample
    from alignlab.models.peft import apply_peft

    lm = ModelSpec(source=args.model, dtype="float32").load()
    tok = lm.tokenizer
    policy = apply_peft(lm.model, LoraSpec(r=16, alpha=32)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained adapter, not the zero-initialised one
        for n, w in policy.named_parameters():
            if "lora_B" in n:
                w.normal_(0, 0.01, generator=gen)
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    ids = [tok(t)["input_ids"] for t in texts for _ in range(args.k)]
    x, mask = left_pad(ids, tok.pad_token_id)
    trl_config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        cache_implementation=None,
        disable_compile=True,
    )
    cfg = SamplingConfig(args.max_new_tokens, 1.0)

    def trl() -> int:
        with torch.no_grad():
            out = policy.generate(input_ids=x, attention_mask=mask, generation_config=trl_config)
        return out.shape[0] * (out.shape[1] - x.shape[1])

    def alignlab() -> int:
        return sample(policy, tok, ids, cfg, lean_lora=True, group=args.k).completion_ids.numel()

    def rate(fn, seed: int) -> float:
        torch.manual_seed(seed)
        t = time.perf_counter()
        n = fn()
        return n / (time.perf_counter() - t)

    rate(trl, 0), rate(alignlab, 0)  # warm-up
    rates = {"alignlab": [], "trl": []}
    for r in range(args.rounds):
        order = [("trl", trl), ("alignlab", alignlab)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            rates[name].append(rate(fn, r))
        print(f"  round {r + 1}: alignlab {rates['alignlab'][-1]:.1f}, TRL {rates['trl'][-1]:.1f} tokens/s")
    ratios = [a / b for a, b in zip(rates["alignlab"], rates["trl"])]
    result = {
        "case": f"rollout_sampling/{args.model}",
        "metric": "rollout_tokens_per_s",
        "alignlab": statistics.median(rates["alignlab"]),
        "trl": statistics.median(rates["trl"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "alignlab_runs": rates["alignlab"],
        "trl_runs": rates["trl"],
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "threads": torch.get_num_threads(),
        "command": "python scripts/bench_rollout.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"rollout tokens/s, {args.prompts} prompts x {args.k} x {args.max_new_tokens} tokens: alignlab "
        f"{result['alignlab']:.1f}, TRL-style generate {result['trl']:.1f}; alignlab/TRL "
        f"{result['ratio']:.2f}x [{result['ratio_min']:.2f}, {result['ratio_max']:.2f}] -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
