"""Evaluate a policy on a task's held-out prompts: ``python -m alignlab.evaluate [overrides]``.

Reports the mean gold reward with a bootstrap 95% CI, the task's second scorer, the KL to the reference
policy, completion length and distinct-1/2, and writes ``metrics.json`` (and ``samples.jsonl``) into
the run directory. A task without a gold reward (``Task.has_gold`` false) gets no gold columns: its
headline is the judge's win rate against a reference policy's samples (``judge``,
``win_rate.reference_samples``; ``alignlab.win_rate.paired_win_rate``), and ``evaluator`` in the record
names what produced the headline (``gold scorer`` or ``judge <identity>``). The core is the plain function ``evaluate_policy`` so that other stages can call it.

KL estimate (sequence level, Monte Carlo): for completions y ~ pi(.|x),
    KL(pi || pi_ref) ≈ mean over samples of sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)],
unbiased when sampling at temperature 1 without top-p/top-k truncation (the default here). log pi is
read from the decoding steps' logits, so the KL costs one reference forward per batch (the adapter
disabled under LoRA). On CPU the policy is evaluated in bf16 weights where the CPU computes bf16
natively (``trainer=cpu``'s rule, ``$ALIGNLAB_CPU_PRECISION`` overrides it); ``precision`` in
``metrics.json`` says which.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from alignlab.utils.app import hydra_app
from alignlab.utils.runtime import configure_runtime, get_logger

log = get_logger(__name__)


@dataclass
class EvalSamples:
    """Everything sampled and scored, one entry per prompt (what metric hooks receive)."""

    prompts: list[str]
    completions: list[str]
    gold: np.ndarray | None  # None: the task has no gold reward
    second: np.ndarray | None
    kl: np.ndarray | None
    lengths: np.ndarray
    stopped: np.ndarray
    extra: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        out = []
        for i, (p, c) in enumerate(zip(self.prompts, self.completions)):
            row = {
                "prompt": p,
                "completion": c,
                "gold": None if self.gold is None else float(self.gold[i]),
                "length": int(self.lengths[i]),
                "stopped": bool(self.stopped[i]),
            }
            if self.second is not None:
                row["second"] = float(self.second[i])
            if self.kl is not None:
                row["kl"] = float(self.kl[i])
            out.append(row)
        return out


# A hook adds columns from the samples (the judge win rate of the RLAIF issue plugs in here).
MetricHook = Callable[[EvalSamples], dict]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams, over all completions."""
    grams = []
    for t in texts:
        words = t.split()
        grams.extend(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def completion_kl(
    model,
    reference,
    prompt_ids: list[list[int]],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int,
    policy_logps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample sum_t [log pi(y_t) - log pi_ref(y_t)] over the completion tokens, shape (B,).

    ``reference``: the policy's ``ReferenceModel`` (``alignlab.models.reference``).
    ``policy_logps``: log pi(y_t) of the completion tokens (B, L), 0 past each completion, as sampling
    returned them (``sample(return_logps=True)``): then only the reference runs a forward (the same
    numbers up to float rounding, see tests/test_eval_precision.py); None: the policy's forward too.
    """
    from alignlab.data.collate import join
    from alignlab.models.logprobs import token_logprobs

    completions = [c[m.bool()].tolist() for c, m in zip(completion_ids, completion_mask)]
    device = next(model.parameters()).device
    ids, attn, loss = (t.to(device) for t in join(prompt_ids, completions, pad_id))  # (B, T)
    with reference as ref:
        ref_logps, mask = token_logprobs(ref, ids, attn, loss)  # (B, T-1)
    ref_sum = (ref_logps.float() * mask).sum(-1)  # (B,)
    if policy_logps is not None:
        return (policy_logps.float().sum(-1).to(device) - ref_sum).cpu()
    logps, _ = token_logprobs(model, ids, attn, loss)
    return ((logps.float() * mask).sum(-1) - ref_sum).cpu()


def evaluate_policy(
    model,
    tokenizer,
    task,
    prompts: Sequence[str],
    sampling,
    *,
    reference="auto",
    batch_size: int = 16,
    seed: int = 0,
    use_chat_template: bool | str = "auto",
    system_prompt: str | None = None,
    max_prompt_length: int = 64,
    n_bootstrap: int = 1000,
    hooks: Sequence[MetricHook] = (),
    return_samples: bool = False,
    journal_path: str | Path | None = None,
    fingerprint: str = "",
    samples_per_prompt: int = 1,
    reuse_sampling_logps: bool = True,
):
    """Sample one completion per prompt, score it and measure the KL to the reference. Returns the metrics
    dict (and the ``EvalSamples`` with ``return_samples``).

    ``reference``: ``"auto"`` (adapter disabled for a LoRA model, else no KL), a ``ReferenceModel`` (one of
    kind ``policy``, the policy itself, gives KL = 0 exactly with no extra forward) or None (no KL).
    ``samples_per_prompt``: k completions per prompt; every statistic is over prompts (the mean of
    their k scores), the unit a paired comparison of two policies on the same prompts pairs.
    ``journal_path``: finished batches are journaled there (``alignlab.tasks.pairs.BatchJournal``) and
    not sampled again by a rerun with the same ``fingerprint`` (policy identity), so a killed run resumes.
    ``reuse_sampling_logps``: the KL's log pi(y_t) are read from the decoding steps' logits (one reference
    forward per batch, no policy forward); False: a policy forward as well (the slower path, same numbers).
    The metrics' ``precision`` is the policy weights' dtype (``fp32``, ``bf16``).
    """
    from alignlab.data.tokenize import Formatter
    from alignlab.evaluator import has_gold
    from alignlab.models.generation import sample
    from alignlab.models.peft import is_peft
    from alignlab.models.reference import ReferenceModel, precision_name
    from alignlab.report_checks import prompts_sha
    from alignlab.stats import bootstrap_mean_ci
    from alignlab.tasks.pairs import BatchJournal, work_fingerprint

    if not prompts:
        raise ValueError("evaluate_policy needs at least one prompt")
    k = int(samples_per_prompt)
    if k < 1:
        raise ValueError(f"samples_per_prompt={k} must be >= 1")
    unique = list(prompts)
    prompts = [p for p in unique for _ in range(k)]  # (N * k,): the k samples of a prompt side by side
    if isinstance(reference, str) and reference == "auto":
        reference = ReferenceModel(model) if is_peft(model) else None
    if reference is not None and not isinstance(reference, ReferenceModel):
        raise TypeError(f"reference={reference!r}: give 'auto', None or the policy's ReferenceModel")
    fmt = Formatter(
        tokenizer,
        use_chat_template,
        system_prompt,
        max_prompt_length,
        max_prompt_length + sampling.max_new_tokens + 1,
    )
    prompt_ids = [fmt.prompt_ids(p, f"prompt {i}") for i, p in enumerate(prompts)]
    texts, lengths, stopped, kls = [], [], [], []
    was_training = model.training
    model.eval()
    ref_kind = "none" if reference is None else reference.kind
    forward_kl = ref_kind not in ("none", "policy")  # a reference forward per batch
    precision = precision_name(model)  # a batch journaled in another precision is sampled again
    work = work_fingerprint(fingerprint, prompt_ids, vars(sampling), batch_size, seed, ref_kind, k, precision)
    journal = BatchJournal(journal_path, work)
    elapsed = 0.0
    # 1. sample and measure the KL, batch by batch (each batch seeded on its own: journaled batches are
    #    exactly what a rerun would sample)
    from tqdm import tqdm

    starts = range(0, len(prompts), batch_size)
    for b in tqdm(starts, desc="evaluation sampling", unit="batch", disable=None):  # bar on a terminal
        ids = prompt_ids[b : b + batch_size]
        if b not in journal.done:
            start = time.perf_counter()
            # lean LoRA modules while decoding: the same function as peft's wrappers, faster (models.peft)
            reuse = forward_kl and reuse_sampling_logps  # log pi from the decoding steps' logits
            gen = sample(
                model, tokenizer, ids, sampling, generator_seed=seed + b, lean_lora=True, return_logps=reuse
            )
            kl = None
            if ref_kind == "policy":
                kl = [0.0] * len(ids)
            elif forward_kl:
                kl = completion_kl(
                    model, reference, ids, gen.completion_ids, gen.completion_mask, tokenizer.pad_token_id,
                    policy_logps=gen.completion_logps,
                ).tolist()  # fmt: skip
            n_tokens = gen.completion_mask.sum(-1).tolist()
            seconds = time.perf_counter() - start
            journal.record(
                b, texts=gen.texts, lengths=n_tokens, stopped=gen.stopped.tolist(), kl=kl, seconds=seconds
            )
        done = journal.done[b]
        texts += done["texts"]
        lengths += done["lengths"]
        stopped += done["stopped"]
        kls += done["kl"] or []
        elapsed += float(done["seconds"])
    model.train(was_training)
    # 2. score with the gold reward (a task without one: None) and the second scorer
    gold = np.asarray(task.gold_scores(list(prompts), texts), dtype=np.float64) if has_gold(task) else None
    second = task.second_scores(list(prompts), texts)
    second = None if second is None else np.asarray(second, dtype=np.float64)
    samples = EvalSamples(
        list(prompts),
        texts,
        gold,
        second,
        np.asarray(kls) if reference is not None else None,
        np.asarray(lengths),
        np.asarray(stopped, dtype=bool),
    )
    # 3. summarise over prompts: the mean of each prompt's k samples, saved per prompt for paired tests
    m: dict = {"n": len(unique), "samples_per_prompt": k, "precision": precision, "per_prompt": {}}
    m["prompts_sha"] = prompts_sha(unique)  # alignlab.compare pairs only results on the same prompts
    for name, values in (("gold_reward", gold), ("second_reward", second), ("kl", samples.kl)):
        if values is None:
            m[name] = None
            continue
        values = values.reshape(len(unique), k).mean(axis=1)  # (N,)
        m["per_prompt"][name] = [round(float(x), 6) for x in values]
        lo, hi = bootstrap_mean_ci(values, n_bootstrap, seed=seed)
        m.update(
            {
                name: float(values.mean()),
                f"{name}_ci_low": lo,
                f"{name}_ci_high": hi,
                f"{name}_std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            }
        )
    # the completions themselves (prompt order, k per prompt side by side): a scorer added later can score
    # a published run without sampling it again
    m["completions"] = list(texts)
    m["completion_length"] = float(samples.lengths.mean())
    m["stopped_frac"] = float(samples.stopped.mean())
    m["distinct_1"] = distinct_n(texts, 1)
    m["distinct_2"] = distinct_n(texts, 2)
    m["completions_per_s"] = len(prompts) / max(elapsed, 1e-9)
    # 4. extra columns (e.g. judge win rate)
    for hook in hooks:
        m.update(hook(samples))
    return (m, samples) if return_samples else m


def evaluate(cfg: DictConfig) -> dict:
    """Run one evaluation described by ``cfg``; returns the metrics written to ``metrics.json``."""
    configure_runtime()
    from hydra.utils import instantiate

    from alignlab.evaluator import evaluator_of, has_gold, refuse_gold
    from alignlab.models.generation import SamplingConfig
    from alignlab.models.reference import load_policy
    from alignlab.report_checks import eval_fingerprint
    from alignlab.tasks.pairs import dir_stamp, work_fingerprint
    from alignlab.utils.io import write_json, write_jsonl

    out = Path(cfg.paths.output_dir)
    torch.manual_seed(cfg.seed)
    from alignlab.tasks import build_task

    task = build_task(cfg.task)
    refuse_gold(cfg, task)  # judge=gold on a task without gold reward: one line, before the model loads
    prompts = task.prompts(cfg.split)
    if cfg.get("n_prompts"):
        prompts = prompts[: int(cfg.n_prompts)]
    device = "cuda" if torch.cuda.is_available() and cfg.get("device", "auto") != "cpu" else "cpu"
    policy = load_policy(instantiate(cfg.model), cfg.get("policy_path"), device)
    model, tokenizer, reference = policy.model, policy.tokenizer, policy.ref_model
    name = "base" if policy.kind == "base" else str(cfg.policy_path)
    sampling = instantiate(cfg.sampling) if "_target_" in cfg.sampling else SamplingConfig(**cfg.sampling)
    fmt = cfg.prompt_format
    # a killed evaluation resumes at its first unfinished batch (the journal is dropped once metrics exist)
    journal = out / ".evaluate.journal.jsonl"
    policy_path = cfg.get("policy_path")
    work = work_fingerprint(
        OmegaConf.to_container(cfg.model, resolve=True), policy_path, dir_stamp(policy_path), device
    )
    hooks, judge = [], None
    reference_samples = (cfg.get("win_rate") or {}).get("reference_samples")
    if cfg.get("judge") and reference_samples:  # the judge's win rate against a reference policy's samples
        from alignlab.label import local_judge_precision
        from alignlab.win_rate import win_rate_hook

        judge = instantiate(cfg.judge)
        judge_precision = local_judge_precision(judge)  # an in-process judge LM: the policy's rule
        k = int(cfg.get("samples_per_prompt") or 1)  # a task without gold: both orders, the headline
        hooks.append(win_rate_hook(judge, task, reference_samples, int(cfg.seed), not has_gold(task), k))
        hooks.append(lambda _samples: {"judge_precision": judge_precision})
    metrics, samples = evaluate_policy(
        model,
        tokenizer,
        task,
        prompts,
        sampling,
        hooks=hooks,
        samples_per_prompt=int(cfg.get("samples_per_prompt") or 1),
        reference=reference,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        use_chat_template=fmt.use_chat_template,
        system_prompt=fmt.system_prompt,
        max_prompt_length=fmt.max_prompt_length,
        n_bootstrap=cfg.n_bootstrap,
        return_samples=True,
        journal_path=journal,
        fingerprint=work,
    )
    record = {
        "policy": name,
        "model": cfg.model.get("source"),
        "task": getattr(task, "name", str(cfg.task)),
        "split": cfg.split,
        "seed": cfg.seed,
        "sampling": asdict(sampling),
        **metrics,
        "evaluator": evaluator_of(task, judge if hooks else None),  # what produced the headline number
    }
    record["eval_fingerprint"] = eval_fingerprint(record)  # what compare's pairing relies on, hashed
    write_json(out / "metrics.json", record)
    if cfg.get("write_samples", True):
        write_jsonl(out / "samples.jsonl", samples.rows())
    journal.unlink(missing_ok=True)
    print(summary(record))
    print(f"metrics written to {out / 'metrics.json'}")
    return record


def summary(m: dict) -> str:
    def ci(name: str) -> str:
        if m.get(name) is None:
            return f"{name}: n/a"
        return f"{name}: {m[name]:+.4f} [{m[name + '_ci_low']:+.4f}, {m[name + '_ci_high']:+.4f}]"

    return "\n".join(
        [
            f"policy {m.get('policy')} on {m.get('task')}@{m.get('split')} ({m['n']} prompts x "
            f"{m.get('samples_per_prompt', 1)} samples)",
            f"  evaluator: {m.get('evaluator') or 'none (no gold reward, no judge)'}",
            "  " + ci("gold_reward"),
            *(["  " + ci("win_rate")] if m.get("win_rate") is not None else []),
            "  " + ci("second_reward"),
            "  " + ci("kl"),
            f"  completion_length: {m['completion_length']:.1f} tokens, stopped {m['stopped_frac']:.0%}, "
            f"distinct-1 {m['distinct_1']:.3f}, distinct-2 {m['distinct_2']:.3f}, {m['completions_per_s']:.1f} completions/s",
        ]
    )


@hydra_app("evaluate")
def main(cfg: DictConfig) -> float:
    from alignlab.evaluator import headline

    return headline(evaluate(cfg))[1]


if __name__ == "__main__":
    main()
