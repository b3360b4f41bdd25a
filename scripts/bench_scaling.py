"""Scaling study for ``scripts/bench.py --scaling``: alignlab's DPO and PPO step time against batch size
and sequence length, and the achieved FLOP/s as a fraction of a matmul roofline on the same machine.

A DPO step here is exactly what ``DPOModule`` runs per batch: one concatenated (2B, T) policy forward,
one adapter-disabled reference forward, the sigmoid loss, backward, AdamW step. A PPO step is one
iteration with one epoch and one minibatch: KV-cache sampling, policy and reference log-prob forwards
(no grad), then one forward/backward/update. FLOPs use the usual 2N per token per forward (N = parameter
count of the base model, counting a tied embedding once, since it is the LM head's matmul) and 2N for the
backward under LoRA (activation gradients only; the frozen weights get none); attention FLOPs are ignored.
"""

from __future__ import annotations

import statistics
import time

import torch

GRIDS = {
    "tiny": {
        "batches": [1, 2, 4, 8, 16],
        "lengths": [32, 64, 128, 256],
        "base_batch": 4,
        "base_length": 64,
        "ppo_new_tokens": [8, 16, 32, 64],
        "repeats": 3,
    },
    "smollm2": {
        "batches": [1, 2, 4, 8],
        "lengths": [32, 64, 128],
        "base_batch": 2,
        "base_length": 64,
        "ppo_new_tokens": [8, 16, 32],
        "repeats": 2,
    },
}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_roofline(device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    """Achieved FLOP/s of a square fp32 matmul (n x n) @ (n x n): the machine's practical ceiling."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n**3 / timed(lambda: a @ b, repeats)


def base_params(model) -> int:
    """Parameters of the model without LoRA tensors, each storage counted once (tied weights)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if "lora_" in name or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel()
    return total


def _random_batch(batch: int, length: int, device, vocab: int, gen: torch.Generator) -> dict:
    prompt = max(1, length // 4)
    out = {}
    for side in ("chosen", "rejected"):
        ids = torch.randint(3, vocab, (batch, length), generator=gen)
        mask = torch.ones(batch, length, dtype=torch.long)
        loss_mask = mask.clone()
        loss_mask[:, :prompt] = 0
        out.update(
            {
                f"{side}_input_ids": ids.to(device),
                f"{side}_attention_mask": mask.to(device),
                f"{side}_loss_mask": loss_mask.to(device),
            }
        )
    return out


def dpo_step_fn(policy, batch: dict, opt):
    from alignlab.losses.preference import preference_loss
    from alignlab.models.completion import concatenated_logps
    from alignlab.models.reference import ReferenceModel

    n = batch["chosen_input_ids"].shape[0]

    def step():
        logps, _ = concatenated_logps(policy, batch)  # (2B,)
        with ReferenceModel(policy) as ref_model:
            ref, _ = concatenated_logps(ref_model, batch)
        out = preference_loss("sigmoid", logps[:n], logps[n:], ref[:n], ref[n:], beta=0.1)
        out.losses.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def ppo_step_fns(policy, tokenizer, prompts: list[list[int]], new_tokens: int, opt):
    """(generation, update) closures of one PPO iteration (one epoch, one minibatch)."""
    from alignlab.models.completion import completion_logprobs, forward_completion
    from alignlab.models.generation import SamplingConfig, left_pad, sample
    from alignlab.models.logprobs import gather_logprobs
    from alignlab.models.reference import ReferenceModel

    state = {}
    # min_new_tokens: every sequence runs the full length so that time scales with the nominal length
    cfg = SamplingConfig(new_tokens, 1.0)

    def generate():
        policy.generation_config.min_new_tokens = new_tokens
        gen = sample(policy, tokenizer, prompts, cfg)
        ctx, cmask = left_pad(prompts, tokenizer.pad_token_id, gen.completion_ids.device)
        state.update(
            qr=torch.cat([ctx, gen.completion_ids], 1),
            attn=torch.cat([cmask, gen.completion_mask], 1),
            ctx=ctx.shape[1],
            resp=gen.completion_ids,
            mask=gen.completion_mask.float(),
        )

    def update():
        qr, attn, ctx = state["qr"], state["attn"], state["ctx"]
        with torch.no_grad():
            old = completion_logprobs(policy, qr, attn, ctx)
            with ReferenceModel(policy) as ref_model:
                completion_logprobs(ref_model, qr, attn, ctx)
        logits, _ = forward_completion(policy, qr, attn, ctx)
        ratio = (gather_logprobs(logits, state["resp"]) - old).exp()
        (-(ratio * state["mask"]).sum() / state["mask"].sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return generate, update


def run_scaling(size: str, log=print) -> dict:
    from alignlab.models import LoraSpec, ModelSpec
    from alignlab.models.peft import apply_peft

    torch.manual_seed(0)
    grid = GRIDS[size]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm = ModelSpec(source={"tiny": "tiny", "smollm2": "smollm2_135m"}[size], dtype="float32").load()
    policy = apply_peft(lm.model, LoraSpec(r=16, alpha=32)).to(device)
    policy.train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    n_params = base_params(policy)
    roof = matmul_roofline(device)
    log(f"[scaling] {size}: {n_params / 1e6:.1f}M base parameters, matmul roofline {roof / 1e9:.1f} GFLOP/s")
    gen = torch.Generator().manual_seed(0)
    vocab = min(len(lm.tokenizer), policy.get_input_embeddings().weight.shape[0])
    rows = []
    dpo_points = [(b, grid["base_length"]) for b in grid["batches"]]
    dpo_points += [(grid["base_batch"], t) for t in grid["lengths"] if t != grid["base_length"]]
    for b, t in dpo_points:
        batch = _random_batch(b, t, device, vocab, gen)
        sec = timed(dpo_step_fn(policy, batch, opt), grid["repeats"])
        tokens = 2 * b * t
        flops = 6 * n_params * tokens  # policy fwd 2N + bwd 2N (LoRA) + reference fwd 2N
        rows.append(
            {
                "algo": "dpo",
                "batch": b,
                "length": t,
                "step_s": sec,
                "tokens_per_s": tokens / sec,
                "flops_per_s": flops / sec,
                "roofline_frac": flops / sec / roof,
            }
        )
        log(
            f"  dpo  B={b:3d} T={t:4d}: {sec:.3f} s/step, {flops / sec / 1e9:.2f} GFLOP/s "
            f"({100 * flops / sec / roof:.1f}% of roofline)"
        )
    prompt_len = 16
    ppo_points = [(b, grid["ppo_new_tokens"][1]) for b in grid["batches"]]
    ppo_points += [(grid["base_batch"], t) for t in grid["ppo_new_tokens"] if t != grid["ppo_new_tokens"][1]]
    for b, new in ppo_points:
        prompts = [torch.randint(3, vocab, (prompt_len,), generator=gen).tolist() for _ in range(b)]
        generate, update = ppo_step_fns(policy, lm.tokenizer, prompts, new, opt)
        gen_s = timed(generate, grid["repeats"])
        upd_s = timed(update, grid["repeats"])
        seq = prompt_len + new
        flops = 2 * n_params * b * seq + 8 * n_params * b * seq  # generation + (2 no-grad fwd + fwd + bwd)
        rows.append(
            {
                "algo": "ppo",
                "batch": b,
                "length": new,
                "step_s": gen_s + upd_s,
                "generate_s": gen_s,
                "update_s": upd_s,
                "rollout_tokens_per_s": b * new / gen_s,
                "flops_per_s": flops / (gen_s + upd_s),
                "roofline_frac": flops / (gen_s + upd_s) / roof,
            }
        )
        log(
            f"  ppo  B={b:3d} new={new:3d}: generate {gen_s:.3f} s + update {upd_s:.3f} s, "
            f"{100 * flops / (gen_s + upd_s) / roof:.1f}% of roofline"
        )
    policy.generation_config.min_new_tokens = None
    return {
        "size": size,
        "base_params": n_params,
        "roofline_flops_per_s": roof,
        "rows": rows,
        "ppo_prompt_length": prompt_len,
    }


def scaling_markdown(scaling: dict) -> list[str]:
    lines = ["## Scaling (alignlab)", ""]
    for size, s in sorted(scaling.items()):
        lines += [
            f"`{size}` ({s['base_params'] / 1e6:.1f}M parameters; matmul roofline "
            f"{s['roofline_flops_per_s'] / 1e9:.1f} GFLOP/s on {s['machine']['device']}, "
            f"{s['machine']['threads']} thread(s)): `{s['command']}`",
            "",
            "| algo | batch | length | step s | tokens/s | GFLOP/s | % of roofline |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in s["rows"]:
            tps = r.get("tokens_per_s", r.get("rollout_tokens_per_s"))
            step = (
                f"{r['step_s']:.3f}"
                if r["algo"] == "dpo"
                else f"{r['step_s']:.3f} (gen {r['generate_s']:.3f})"
            )
            lines.append(
                f"| {r['algo']} | {r['batch']} | {r['length']} | {step} | {tps:.0f} | "
                f"{r['flops_per_s'] / 1e9:.2f} | {100 * r['roofline_frac']:.1f} |"
            )
        lines.append("")
    lines.append(
        "DPO length = tokens per sequence (prompt = a quarter); PPO length = new tokens per completion "
        "(prompt 16 tokens), tokens/s for PPO = rollout (generated) tokens per second of generation."
    )
    return lines
