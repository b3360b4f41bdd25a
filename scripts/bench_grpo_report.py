"""``bench/results.md``'s GRPO section (scripts/bench_grpo.py): the rows with their CIs against issue 27's
targets, the settings, and what could not be matched between alignlab and TRL's GRPOTrainer."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench
import bench_workers as bw

SECTION = "## GRPO against TRL"  # bench.KEPT_SECTIONS keeps it when bench.py rewrites results.md
TARGET_SPEEDUP = 1.3  # issue 27: alignlab >= 1.3x TRL's samples/s, and final reward >= TRL's
UNMATCHED = [
    "rollouts: alignlab's own sampler (shared prompt pass over the k samples, lean LoRA decoding, stop at EOS) "
    "against TRL's `model.generate`; rollout tokens/s times alignlab's whole sampling call but only TRL's "
    "`generate` (in TRL's favour)",
    "reference: both the adapter disabled (TRL: `peft_config`, so no `ref` adapter copy); alignlab folds the "
    "pi_old forward into the update's own forward (exact at num_iterations=1, as TRL skips it there)",
    "LoRA initialisation: the same config and seed, but each side draws A in its own order (B = 0: the same "
    "function at step 0)",
    "bf16 (where native): alignlab samples with bf16 weights (autocast off) and autocasts the update; TRL keeps "
    "fp32 weights and runs generation and the update under accelerate's bf16 autocast (`unwrap_model` keeps "
    "the autocast forward)",
    "data order: each framework's own shuffled sampler over the same 32 prompts (same seed, different order)",
    "equal wall time: both stop at the first step that ends past the budget (overshoot up to one step each; "
    "the train seconds are in results.json)",
    "loss_type bnpo and scale_rewards=batch: no alignlab equivalent (bnpo = dapo here: one process, one "
    "accumulation step); not offered",
]


def section(doc: dict, to_run: str, s: dict) -> str:
    """This benchmark's section of results.md: the GRPO rows of ``doc`` with their CIs (or the command
    ``to_run`` when there are none), then settings ``s`` and what is not matched."""
    rows = [r for r in doc.get("cases", []) if bench.case_group(r["case"]).startswith("grpo/")]
    out = [SECTION, ""]
    if not rows:
        out += [
            f"To run (not measured yet): `{to_run}` (precision auto: bf16 where the CPU has avx512_bf16 / "
            "amx_bf16 or on CUDA, fp32 otherwise; 6 worker processes, each a 60 s training budget plus model "
            "loading and the held-out evaluation).",
            "",
        ]
    for group in sorted({bench.case_group(r["case"]) for r in rows}):
        meta = doc.get("meta", {}).get(group, {})
        m = meta.get("machine", {})
        out += [
            f"`{group}`: {meta.get('command', '?')} on {m.get('device', '?')}, {m.get('threads', '?')} "
            f"thread(s), load {meta.get('load_start')} -> {meta.get('load_end')}, {meta.get('date', '?')}; "
            f"TRL {m.get('trl', '?')}. Means over seeds; alignlab/TRL = geometric mean of the per-seed ratios "
            "with a 95% t CI; reward: alignlab - TRL per held-out prompt, crossed seeds x prompts 95% CI.",
            "",
            "| case | precision | metric | alignlab | TRL | alignlab/TRL or difference [95% CI] | target |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if bench.case_group(r["case"]) == group):
            if r["ratio"] is None:
                cmp = f"{r['delta']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                target = (
                    "≥ 0: "
                    + ("met" if r["delta"] >= 0 else "not met")
                    + (", CI excludes 0" if r["ci_low"] > 0 or r["ci_high"] < 0 else ", CI includes 0")
                )
            else:
                cmp = f"{r['ratio']:.2f}x [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                target = ""
                if r["metric"] == "samples_per_s":
                    met = "met" if r["ratio"] >= TARGET_SPEEDUP else "not met"
                    target = f"≥ {TARGET_SPEEDUP}x: {met}, CI low {r['ci_low']:.2f}"
            better = "higher" if r["higher_is_better"] else "lower"
            out.append(
                f"| {r['case']} | {r['precision']} | {r['metric']} ({better} is better) | "
                f"{bench.fmt(r['alignlab'])} | {bench.fmt(r['trl'])} | {cmp} | {target} |"
            )
        out.append("")
    out += [
        f"Settings ({s['size']}): k={s['k']}, {s['prompts_per_step']} prompts per rollout batch, "
        f"{s['max_new_tokens']} new tokens, temperature 1, LoRA r {bw.LORA['r']} alpha {bw.LORA['alpha']}, "
        f"lr {s['lr']} constant, beta {s['beta']} (k3 KL in the loss), epsilon {s['epsilon']} / "
        f"{s['epsilon_high']}, loss_type {s['loss_type']}, scale_rewards group, num_iterations "
        f"{s['num_iterations']}, grad norm 1.0, {s['budget_s']:.0f} s budget, {s['n_eval_prompts']} held-out "
        f"prompts; the reward is one plain Python function on both sides (`bench_grpo.{s['reward']}_score`). "
        "Not matched:",
        "",
        *[f"- {u}" for u in UNMATCHED],
        "",
    ]
    return "\n".join(out)


def write_section(results_md: Path, doc: dict, to_run: str, s: dict) -> None:
    """Replace this section in place (up to the next ``## ``), or insert it before the hand-written bf16
    section (kept by ``bench.write_outputs``), or append it."""
    text = results_md.read_text() if results_md.exists() else ""
    new = section(doc, to_run, s)
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + new + (text[nxt + 1 :] if nxt >= 0 else "")
    elif any(k in text for k in bench.KEPT_SECTIONS):
        at = min(text.index(k) for k in bench.KEPT_SECTIONS if k in text) + 1
        text = text[:at] + new + "\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + new
    results_md.write_text(text)
