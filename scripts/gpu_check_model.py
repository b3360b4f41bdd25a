"""The sections of ``scripts/gpu_check.py`` that run the model in this process: ``mask`` (the shared-prompt
4D-mask forwards against the per-row / concatenated ones, log-probs and LoRA gradients) and ``throughput``
(training and sampling tokens/s, with peak memory)."""

from __future__ import annotations

import resource
import time

from gpu_check_procs import result

try:
    import torch
except ImportError:  # the preflight names it, with the fix
    torch = None


# -- models ----------------------------------------------------------------------------------------------
def peak_memory_mib(device: str) -> float:
    """Peak memory so far: CUDA allocated on a GPU, resident set of this process on CPU (MiB)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def load_policy(model: str, device: str, dtype=None, lora_std: float = 0.1):
    """The model in fp32 with a LoRA adapter whose B is non-zero (a trained adapter, so it matters)."""
    from alignlab.models import LoraSpec, ModelSpec
    from alignlab.models.peft import apply_peft

    lm = ModelSpec(source=model, dtype="float32").load()
    policy = apply_peft(lm.model, LoraSpec(r=16, alpha=32)).to(device)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.copy_((torch.randn(p.shape, generator=g) * lora_std).to(p))
    return policy.to(dtype or torch.float32), lm.tokenizer


# -- mask ------------------------------------------------------------------------------------------------
FP32_TOL = {"rloo": (2e-4, 2e-3), "dpo": (4e-3, 2e-3)}  # (log-prob, relative gradient); dpo: sums of <= 20
BF16_SLACK = {"rloo": (2e-2, 2e-2), "dpo": (1e-1, 2e-2)}  # added to twice the plain bf16 path's error


def rollout_rows(vocab: int, k: int, device: str, seed: int = 0):
    """Two prompts x k samples in the rollout layout (left-padded prompt, right-padded completion)."""
    from alignlab.models.generation import left_pad

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (9, 14)]
    lengths = [int(x) for x in torch.randint(1, 24, (2 * k,), generator=g)]
    ctx, ctx_mask = left_pad([p for p in prompts for _ in range(k)], 0)
    resp = torch.zeros(2 * k, max(lengths), dtype=torch.long)
    rmask = torch.zeros_like(resp)
    for i, n in enumerate(lengths):
        resp[i, :n] = torch.randint(5, vocab, (n,), generator=g)
        rmask[i, :n] = 1
    qr, att = torch.cat([ctx, resp], 1).to(device), torch.cat([ctx_mask, rmask], 1).to(device)
    return qr, att, ctx.shape[1], rmask.to(device)


def pair_rows(vocab: int, device: str, seed: int = 0) -> dict:
    """Preference pairs as the collator lays them out: prompt, then chosen or rejected, right-padded."""
    g = torch.Generator().manual_seed(seed)
    lengths = [(5, 12, 3), (11, 4, 17), (2, 20, 9), (8, 8, 1)]
    width = max(p + max(c, r) for p, c, r in lengths) + 1
    batch = {}
    prompts = [torch.randint(5, vocab, (p,), generator=g) for p, _, _ in lengths]
    for j, name in enumerate(("chosen", "rejected")):
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        attn, loss = torch.zeros_like(ids), torch.zeros_like(ids)
        for i, lens in enumerate(lengths):
            p, n = lens[0], lens[1 + j]
            ids[i, :p] = prompts[i]
            ids[i, p : p + n] = torch.randint(5, vocab, (n,), generator=g)
            attn[i, : p + n] = 1
            loss[i, p : p + n] = 1
        batch |= {f"{name}_input_ids": ids, f"{name}_attention_mask": attn, f"{name}_loss_mask": loss}
    return {k: v.to(device) for k, v in batch.items()}


def mask_paths(policy, device: str) -> dict:
    """kind -> (the 4D-mask forward, the plain forward), each returning the log-probs it checks."""
    from alignlab.models.logprobs import gather_logprobs, grouped_completion_logits, shared_prompt_logps

    vocab = policy.config.vocab_size
    qr, att, ctx, rmask = rollout_rows(vocab, 4, device)
    labels, batch = qr[:, ctx:], pair_rows(vocab, device)

    def grouped():
        logits = grouped_completion_logits(policy, qr, att, ctx, 4)
        assert logits is not None, "the grouped layout declined the rollout batch"
        return gather_logprobs(logits, labels) * rmask

    def per_row():  # every row runs its own prompt, positions following the left padding
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        logits = policy(input_ids=qr, attention_mask=att, position_ids=pos, use_cache=False).logits
        return gather_logprobs(logits[:, ctx - 1 : -1], labels) * rmask

    def shared():
        out = shared_prompt_logps(policy, batch)
        assert out is not None, "the shared-prompt layout declined the preference batch"
        return out[0]

    def concat():
        keys = ("input_ids", "attention_mask", "loss_mask")
        ids, am, lm = (torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]]) for k in keys)
        logits = policy(input_ids=ids, attention_mask=am, use_cache=False).logits[:, :-1]
        return (gather_logprobs(logits, ids[:, 1:]) * lm[:, 1:]).sum(-1)

    return {"rloo": (grouped, per_row), "dpo": (shared, concat)}


def values_and_grads(fn, params) -> tuple:
    """The function's values and its sum's gradients w.r.t. ``params``, in fp32 and detached."""
    v = fn()
    grads = torch.autograd.grad(v.float().sum(), params)
    return v.detach().float(), [g.detach().float() for g in grads]


def gap(a: tuple, b: tuple) -> tuple[float, float]:
    """Max |difference| of the values, and max over parameters of the gradients' relative max difference."""
    dv = (a[0] - b[0]).abs().max().item()
    dg = max(((x - y).abs().max() / y.abs().max().clamp(min=1e-8)).item() for x, y in zip(a[1], b[1]))
    return dv, dg


def bf16_agrees(fast_err: tuple, plain_err: tuple, slack: tuple) -> bool:
    """The 4D-mask path in bf16 is as close to the fp32 per-row result as the plain bf16 path (2x + slack)."""
    return all(f <= 2 * p + s for f, p, s in zip(fast_err, plain_err, slack))


def set_attention(policy, attn: str) -> None:
    policy.config._attn_implementation = attn
    policy.get_base_model().config._attn_implementation = attn


def check_mask(model: str, device: str) -> dict:
    policy, _ = load_policy(model, device)
    cases, reference = {}, {}
    for dtype in ("float32", "bfloat16"):
        policy.to(getattr(torch, dtype))
        params = [p for n, p in policy.named_parameters() if "lora_" in n]
        for attn in ("sdpa", "eager"):
            set_attention(policy, attn)
            for kind, (fast_fn, plain_fn) in mask_paths(policy, device).items():
                name = f"{kind}/{dtype}/{attn}"
                try:
                    fast, plain = values_and_grads(fast_fn, params), values_and_grads(plain_fn, params)
                except Exception as e:  # one broken case is reported, the others still run
                    cases[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                    print(f"  {name:22s}: ERROR {cases[name]['error']}")
                    continue
                if dtype == "float32":
                    reference.setdefault(kind, plain)  # the fp32 per-row result the bf16 rows are held to
                    err = gap(fast, plain)
                    ok = err[0] <= FP32_TOL[kind][0] and err[1] <= FP32_TOL[kind][1]
                    case = {"dlogp": err[0], "dgrad": err[1], "ok": ok}
                    note = f"vs plain: max|dlogp| {err[0]:.2e}, max rel dgrad {err[1]:.2e} (tol {FP32_TOL[kind]})"
                elif kind not in reference:
                    case = {"ok": False, "error": "no fp32 reference (its case failed)"}
                    ok, note = False, case["error"]
                else:
                    fe, pe = gap(fast, reference[kind]), gap(plain, reference[kind])
                    ok = bf16_agrees(fe, pe, BF16_SLACK[kind])
                    case = {
                        "dlogp": fe[0],
                        "dgrad": fe[1],
                        "plain_dlogp": pe[0],
                        "plain_dgrad": pe[1],
                        "ok": ok,
                    }
                    note = (
                        f"vs fp32 per-row: 4D mask {fe[0]:.2e} / {fe[1]:.2e}, plain {pe[0]:.2e} / {pe[1]:.2e} "
                        "(logp / rel grad; pass: <= 2x plain + slack)"
                    )
                cases[name] = case
                print(f"  {name:22s}: {note} {'ok' if ok else 'MISMATCH'}", flush=True)
    failed = [n for n, c in cases.items() if not c["ok"]]
    return result(
        "FAIL" if failed else "PASS", f"mismatch: {', '.join(failed)}" if failed else None, cases=cases
    )


# -- throughput ------------------------------------------------------------------------------------------
def throughput_sizes(device: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """((batch, tokens) trained, (prompts, new tokens) sampled): sizes a GPU is measured at; small on CPU."""
    if device.startswith("cuda"):
        return (32, 512), (128, 64)
    return (4, 32), (8, 8)


def train_rate(policy, params, shape, device: str, autocast: bool, rounds: int) -> tuple[float, tuple]:
    """Median fwd+bwd tokens/s at ``shape``, halving the batch where it does not fit in GPU memory."""
    vocab = policy.config.vocab_size
    while True:
        x = torch.randint(5, vocab, shape, generator=torch.Generator().manual_seed(0)).to(device)
        try:
            times = []
            for _ in range(rounds + 1):  # the first is warm-up
                sync(device)
                t = time.perf_counter()
                with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
                    loss = policy(input_ids=x, labels=x, use_cache=False).loss
                torch.autograd.grad(loss, params)
                sync(device)
                times.append(time.perf_counter() - t)
            return x.numel() / sorted(times[1:])[len(times[1:]) // 2], shape
        except torch.cuda.OutOfMemoryError:
            if shape[0] == 1:
                raise
            del x
            torch.cuda.empty_cache()
            shape = (shape[0] // 2, shape[1])


def check_throughput(model: str, device: str, rounds: int = 3) -> dict:
    from alignlab.models.generation import SamplingConfig, sample

    policy, tok = load_policy(model, device, lora_std=0.01)
    params = [p for p in policy.parameters() if p.requires_grad]
    train_shape, (n_prompts, n_new) = throughput_sizes(device)
    metrics = {}
    for label, autocast in (("fp32", False), ("bf16-autocast", True)):
        reset_peak(device)
        rate, shape = train_rate(policy, params, train_shape, device, autocast, rounds)
        metrics[f"train/{label}"] = {
            "shape": list(shape),
            "tokens_per_s": rate,
            "peak_mib": peak_memory_mib(device),
        }
        print(
            f"  train fwd+bwd {shape[0]}x{shape[1]} {label:13s}: {rate:9.0f} tokens/s, peak {metrics[f'train/{label}']['peak_mib']:7.0f} MiB"
        )
    prompts = [tok("Movie review: the film", add_special_tokens=False)["input_ids"]] * n_prompts
    cfg = SamplingConfig(max_new_tokens=n_new, temperature=1.0)
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        policy.to(dtype)
        reset_peak(device)
        rates = []
        for r in range(rounds + 1):
            torch.manual_seed(r)
            sync(device)
            t = time.perf_counter()
            gen = sample(policy, tok, prompts, cfg, lean_lora=True)
            sync(device)
            rates.append(gen.completion_mask.sum().item() / (time.perf_counter() - t))
        rate = sorted(rates[1:])[len(rates[1:]) // 2]
        metrics[f"sample/{label}"] = {
            "shape": [n_prompts, n_new],
            "tokens_per_s": rate,
            "peak_mib": peak_memory_mib(device),
        }
        print(
            f"  sample {n_prompts}x{n_new} {label:20s}: {rate:9.0f} tokens/s, peak {metrics[f'sample/{label}']['peak_mib']:7.0f} MiB"
        )
    return result("PASS", **metrics)
