"""bf16 against fp32 on CPU, one process: the numbers behind ``trainer=cpu``'s bf16-mixed default.

    python scripts/bench_bf16.py                       # bundled SmolLM2-135M + LoRA, 2 threads
    python scripts/bench_bf16.py --model tiny --rounds 3

Measures, on the same model, data and prompts:

* accuracy: the DPO loss (LoRA policy with a perturbed adapter against its adapter-disabled reference)
  and the Bradley-Terry loss of a fresh scalar head, each under ``torch.autocast(bfloat16)`` (what
  Lightning's ``bf16-mixed`` runs) against fp32; per-token log-prob gap bf16 vs fp32 of sampled
  completions; the first PPO/RLOO update's max |log pi / pi_old| when pi_old is recomputed under bf16
  autocast (as the trainer does) and when it is taken from an fp32 forward (what a sampler in another
  precision would hand over);
* speed, as ratios of medians over alternating rounds (A/B order flips each round): a LoRA DPO training
  step (forward + backward + AdamW) and a full fine-tuning forward + backward, fp32 vs bf16 autocast;
  sampling (HF generate through ``alignlab.models.generation.sample``) fp32 vs bf16 autocast vs bf16
  weights.

Writes ``bench/bf16.json`` and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Movie review: The movie was",
    "Movie review: This film felt",
    "Movie review: The acting is",
    "Movie review: Overall the story was",
]


def bf16(enabled: bool = True):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ab_rounds(fns: dict, rounds: int) -> dict:
    """Median seconds of each variant over ``rounds`` rounds (order rotates each round; one warm-up)."""
    names = list(fns)
    for name in names:
        fns[name]()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(timed(fns[name]))
    return {n: statistics.median(t) for n, t in times.items()} | {"rounds": rounds}


def pref_batch(tokenizer, n: int, max_length: int):
    from alignlab.data.collate import PreferenceCollator
    from alignlab.data.datamodules import PreferenceDataModule
    from alignlab.resources import resource

    dm = PreferenceDataModule(
        tokenizer=tokenizer, train_path=resource("pref_toy.jsonl"), batch_size=n, max_length=max_length,
        max_prompt_length=max_length // 2, val_fraction=0.0, use_chat_template=False,
    )  # fmt: skip
    dm.setup("fit")
    return PreferenceCollator(tokenizer.pad_token_id)([dm.train_set[i] for i in range(n)])


def save(out: dict, path: str, next_stage: str = "") -> None:
    """Write what is measured so far (a run cut short keeps its finished stages)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")
    if next_stage:
        print(f"[bench_bf16] {time.strftime('%H:%M:%S')} {next_stage}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2_135m", help="alignlab model source (tiny, smollm2_135m)")
    p.add_argument("--pairs", type=int, default=8, help="preference pairs per DPO step (16 x 48 tokens)")
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--prompts", type=int, default=32, help="prompts per sampling call")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--rounds", type=int, default=5, help="measured rounds per speed comparison")
    p.add_argument("--out", default=str(REPO / "bench" / "bf16.json"))
    p.add_argument("--sampling-only", action="store_true", help="only the LoRA sampling comparison")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from alignlab.losses.preference import preference_loss
    from alignlab.losses.reward import bradley_terry_loss
    from alignlab.models import LoraSpec, ModelSpec, ReferenceModel, apply_peft
    from alignlab.models.completion import completion_logprobs, forward_completion, pair_logps
    from alignlab.models.generation import SamplingConfig, left_pad, sample
    from alignlab.models.heads import ScalarHead, hidden_size, sequence_scores
    from alignlab.models.logprobs import gather_logprobs
    from alignlab.utils.precision import cpu_flags, cpu_precision

    torch.manual_seed(0)
    lm = ModelSpec(source=args.model, dtype="float32").load()
    tok = lm.tokenizer
    base = copy.deepcopy(lm.model)  # for the full fine-tuning step and the bf16-weights sampler
    policy = apply_peft(lm.model, LoraSpec(r=16, alpha=32))
    with torch.no_grad():  # an adapter that moved, as after training: policy != reference
        for n, prm in policy.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.02)
    ref = ReferenceModel(policy)
    batch = pref_batch(tok, args.pairs, args.max_length)
    n = args.pairs
    out: dict = {
        "model": args.model,
        "threads": torch.get_num_threads(),
        "cpu_bf16_flags": sorted(f for f in cpu_flags() if "bf16" in f),
        "trainer_cpu_precision": cpu_precision(),
        "torch": torch.__version__,
        "command": "python scripts/bench_bf16.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }

    if args.sampling_only:  # the rollout path: fp32, under autocast, with bf16 weights (cast_weights)
        policy.eval()
        sprompts = [tok.encode(t, add_special_tokens=False) for t in PROMPTS] * (args.prompts // len(PROMPTS))
        cfg = SamplingConfig(args.max_new_tokens, 1.0)
        policy.generation_config.min_new_tokens = args.max_new_tokens

        def lora_sampler(on: bool, weights=None):
            def run():
                with bf16(on):
                    sample(policy, tok, sprompts, cfg, lean_lora=True, weights_dtype=weights)

            return run

        variants = {
            "lora_fp32": lora_sampler(False),
            "lora_bf16_autocast": lora_sampler(True),
            "lora_bf16_weights": lora_sampler(True, torch.bfloat16),
        }
        t = ab_rounds(variants, max(2, args.rounds - 2))
        tokens = len(sprompts) * args.max_new_tokens
        out["sampling_lora"] = t | {
            "tokens_per_call": tokens,
            "speedup_autocast": t["lora_fp32"] / t["lora_bf16_autocast"],
            "speedup_bf16_weights": t["lora_fp32"] / t["lora_bf16_weights"],
        }
        save(out, args.out)
        print(json.dumps(out, indent=2))
        return 0

    # 1. accuracy: DPO and Bradley-Terry losses, bf16 autocast vs fp32
    head = ScalarHead(hidden_size(policy))
    acc = {}
    for name, on in (("fp32", False), ("bf16", True)):
        with torch.no_grad(), bf16(on):
            logps, _ = pair_logps(policy, batch)
            with ref as r:
                ref_logps, _ = pair_logps(r, batch)
            dpo = preference_loss("sigmoid", logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], beta=0.1)
            ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
            mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])
            scores = sequence_scores(policy, head, ids, mask)
            acc[name] = {
                "dpo_loss": dpo.losses.mean().item(),
                "rm_loss": bradley_terry_loss(scores[:n], scores[n:]).item(),
                "logps": logps.float(),
            }
    out["accuracy"] = {
        "dpo_loss_fp32": acc["fp32"]["dpo_loss"],
        "dpo_loss_bf16": acc["bf16"]["dpo_loss"],
        "dpo_loss_abs_gap": abs(acc["bf16"]["dpo_loss"] - acc["fp32"]["dpo_loss"]),
        "rm_loss_fp32": acc["fp32"]["rm_loss"],
        "rm_loss_bf16": acc["bf16"]["rm_loss"],
        "rm_loss_abs_gap": abs(acc["bf16"]["rm_loss"] - acc["fp32"]["rm_loss"]),
        "seq_logp_max_abs_gap": (acc["bf16"]["logps"] - acc["fp32"]["logps"]).abs().max().item(),
    }

    save(out, args.out, "2. first update")
    # 2. first update: pi_old recomputed under bf16 autocast (the trainer) vs taken from fp32
    prompt_ids = [tok.encode(t, add_special_tokens=False) for t in PROMPTS] * 2
    with bf16():
        gen = sample(policy, tok, prompt_ids, SamplingConfig(args.max_new_tokens, 1.0), generator_seed=0)
    ctx_ids, ctx_mask = left_pad(prompt_ids, tok.pad_token_id)
    qr, attn = torch.cat([ctx_ids, gen.completion_ids], 1), torch.cat([ctx_mask, gen.completion_mask], 1)
    cmask = gen.completion_mask.float()
    ctx = ctx_ids.shape[1]
    policy.eval()
    with torch.no_grad():
        old_fp32 = completion_logprobs(policy, qr, attn, ctx)
        with bf16():
            old_bf16 = completion_logprobs(policy, qr, attn, ctx)
    policy.train()
    with bf16():  # the update's forward, in two minibatches as PPO does
        half = qr.shape[0] // 2
        new = torch.cat(
            [
                gather_logprobs(forward_completion(policy, qr[s], attn[s], ctx)[0], qr[s, ctx:])
                for s in (slice(0, half), slice(half, None))
            ]
        ).detach()

    def gap(a, b):
        d = (a - b).abs() * cmask
        return {"max": d.max().item(), "mean": (d.sum() / cmask.sum()).item()}

    out["first_update_logratio"] = {
        "pi_old_bf16_recomputed": gap(new, old_bf16),
        "pi_old_fp32": gap(new, old_fp32),
        "tokens": int(cmask.sum()),
    }

    save(out, args.out, "3. speed: training steps")
    # 3. speed: LoRA DPO step, full fine-tuning forward + backward, fp32 vs bf16 autocast
    opt = torch.optim.AdamW([q for q in policy.parameters() if q.requires_grad], lr=1e-5)

    def dpo_step(on: bool):
        def step():
            with bf16(on):
                logps, _ = pair_logps(policy, batch)
                with ref as r:
                    ref_logps, _ = pair_logps(r, batch)
                loss = preference_loss("sigmoid", logps[:n], logps[n:], ref_logps[:n], ref_logps[n:]).losses
            loss.mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    base.train()
    ids = torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]])
    mask = torch.cat([batch["chosen_attention_mask"], batch["rejected_attention_mask"]])

    def full_step(on: bool):
        def step():
            with bf16(on):
                loss = base(input_ids=ids, attention_mask=mask, labels=ids).loss
            loss.backward()
            base.zero_grad(set_to_none=True)

        return step

    t = ab_rounds({"fp32": dpo_step(False), "bf16": dpo_step(True)}, args.rounds)
    out["dpo_lora_step"] = t | {"shape": list(ids.shape), "speedup": t["fp32"] / t["bf16"]}
    t = ab_rounds({"fp32": full_step(False), "bf16": full_step(True)}, args.rounds)
    out["full_finetune_fwd_bwd"] = t | {"shape": list(ids.shape), "speedup": t["fp32"] / t["bf16"]}

    save(out, args.out, "4. speed: sampling")
    # 4. speed: sampling (LoRA policy under fp32 / bf16 autocast; base model with bf16 weights)
    policy.eval()
    sprompts = [tok.encode(t, add_special_tokens=False) for t in PROMPTS] * (args.prompts // len(PROMPTS))
    cfg = SamplingConfig(args.max_new_tokens, 1.0)
    policy.generation_config.min_new_tokens = args.max_new_tokens  # same work in every variant
    base_bf16 = copy.deepcopy(base).to(torch.bfloat16).eval()
    base_fp32 = base.eval()
    for m in (base_bf16, base_fp32):
        m.generation_config.min_new_tokens = args.max_new_tokens

    def sampler_ctx(model, on: bool):
        def run():
            with bf16(on):
                sample(model, tok, sprompts, cfg, lean_lora=True)

        return run

    t = ab_rounds(
        {
            "lora_fp32": sampler_ctx(policy, False),
            "lora_bf16_autocast": sampler_ctx(policy, True),
            "base_fp32": sampler_ctx(base_fp32, False),
            "base_bf16_weights": sampler_ctx(base_bf16, False),
        },
        max(2, args.rounds - 2),
    )
    tokens = len(sprompts) * args.max_new_tokens
    out["sampling"] = t | {
        "tokens_per_call": tokens,
        "tokens_per_s": {k: tokens / v for k, v in t.items() if k != "rounds"},
        "speedup_lora_autocast": t["lora_fp32"] / t["lora_bf16_autocast"],
        "speedup_base_bf16_weights": t["base_fp32"] / t["base_bf16_weights"],
    }
    save(out, args.out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
