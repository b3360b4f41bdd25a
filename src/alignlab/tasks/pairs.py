"""Pair sampling and labelling, callable without Hydra (the label app and the pipelines use these).

* ``sample_pairs``: two completions per prompt from a policy, batched with the KV cache (both samples of
  a prompt ride in the same generation batch), with a progress bar; returns a ``PairSet``.
* ``label_pairs``: labels a ``PairSet`` with any pairwise judge (``alignlab.judges.base``) and returns
  preference rows that ``PreferenceDataModule`` reads unchanged, plus the labelling report.

Pairs whose two completions are identical, or where one is empty, cannot be labelled: they are counted
(with their indices) in the report, never dropped silently.

A labelled row: ``prompt``, ``chosen``, ``rejected``, ``p_chosen`` (the judge's P(chosen ≻ rejected):
for ``judge=gold`` the Bradley–Terry probability, which is below 0.5 when the simulated annotator went
against the gold ordering), ``tie``, ``label_source`` (judge identity), ``gold_chosen``,
``gold_rejected``, ``second_chosen``, ``second_rejected`` (the task's scorers), ``pair_index`` and
``provenance`` (verdict, which sample was chosen, both orders' probabilities, raw outputs, template hash).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignlab.judges.base import check_judgements, check_pairs
from alignlab.utils.hashing import stable_hash
from alignlab.utils.io import write_rows, write_text
from alignlab.utils.runtime import get_logger

log = get_logger(__name__)


def work_fingerprint(*parts) -> str:
    """A short hash of what a sampling loop computes (JSON-serialisable parts; files by size and mtime)."""
    return stable_hash(parts)


def dir_stamp(path: str | Path | None) -> list:
    """(name, size, mtime) of the files in a policy directory: a retrained policy is other work."""
    if not path or not Path(path).expanduser().is_dir():
        return []
    files = sorted(f for f in Path(path).expanduser().rglob("*") if f.is_file())
    return [(str(f.name), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


class BatchJournal:
    """The finished batches of a sampling loop, one JSON line each (flushed and fsynced as it ends), so a
    run killed at any moment resumes at its first unfinished batch with identical results (each batch
    is seeded on its own). The first line holds the work's fingerprint: a journal of other work is
    discarded, and a line torn by the kill is dropped. ``path=None``: no journal, nothing is kept."""

    def __init__(self, path: str | Path | None, fingerprint: str):
        self.path = None if path is None else Path(path)
        self.done: dict[int, dict] = {}
        if self.path is None:
            return
        records = []
        if self.path.exists():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # the line being written when the process died
        if records and records[0].get("fingerprint") == fingerprint:
            self.done = {int(r["batch"]): r for r in records[1:]}
            log.info("resuming: %d finished batch(es) read from %s", len(self.done), self.path)
        lines = [{"fingerprint": fingerprint}, *self.done.values()]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in lines))  # without the torn tail

    def record(self, batch: int, **data) -> None:
        self.done[batch] = {"batch": batch, **data}
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(self.done[batch]) + "\n")
                f.flush()
                os.fsync(f.fileno())


@dataclass
class PairSet:
    """Two sampled completions per prompt, not yet labelled."""

    prompts: list[str]
    firsts: list[str]
    seconds: list[str]
    seconds_elapsed: float = 0.0
    """Wall time of the sampling."""

    @property
    def completions_per_s(self) -> float | None:
        return 2 * len(self.prompts) / self.seconds_elapsed if self.seconds_elapsed > 0 else None

    def rows(self) -> list[dict]:
        return [
            {"pair_index": i, "prompt": p, "first": a, "second": b}
            for i, (p, a, b) in enumerate(zip(self.prompts, self.firsts, self.seconds))
        ]

    def save(self, path: str | Path) -> Path:
        """Write the pairs atomically (JSONL or Parquet by suffix), e.g. to relabel them with another judge."""
        return write_rows(path, self.rows())

    @classmethod
    def load(cls, path: str | Path) -> PairSet:
        """Read a file written by ``save`` (fields ``prompt``, ``first``, ``second``)."""
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(
                f"pairs file {p} does not exist (write one with the label app's samples_path)"
            )
        if p.suffix == ".parquet":
            import pandas as pd

            rows = pd.read_parquet(p).to_dict(orient="records")
        else:
            from alignlab.tasks.prepare import read_jsonl

            rows = read_jsonl(p)
        for i, r in enumerate(rows):
            missing = [k for k in ("prompt", "first", "second") if not isinstance(r.get(k), str)]
            if missing:
                raise ValueError(
                    f"{p}: row {i} lacks string field(s) {missing}; expected prompt, first, second"
                )
        return cls([r["prompt"] for r in rows], [r["first"] for r in rows], [r["second"] for r in rows])


def sample_pairs(
    model,
    tokenizer,
    prompts: Sequence[str],
    sampling,
    formatter=None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    journal_path: str | Path | None = None,
    fingerprint: str = "",
) -> PairSet:
    """Sample two completions for each prompt.

    Args:
        model: a causal LM (already on its device).
        tokenizer: its tokenizer.
        prompts: prompt texts.
        sampling: ``alignlab.models.generation.SamplingConfig``.
        formatter: ``alignlab.data.tokenize.Formatter`` that encodes a prompt; default plain text.
        batch_size: prompts per generation call (each contributes two sequences).
        seed: sampling seed; results are reproducible for a given (seed, batch_size).
        progress: show a tqdm progress bar.
        journal_path: a ``BatchJournal`` file: finished batches found there (same ``fingerprint``) are not
            sampled again, so a killed run resumes; the caller removes it once the pairs are saved.
        fingerprint: what identifies the work (policy, prompts, sampling, seed), see ``work_fingerprint``.
    """
    from tqdm.auto import tqdm

    from alignlab.data.tokenize import Formatter
    from alignlab.models.generation import sample

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    prompts = list(prompts)
    fmt = formatter or Formatter(
        tokenizer,
        use_chat_template=False,
        max_prompt_length=128,
        max_length=128 + sampling.max_new_tokens + 1,
    )
    firsts: list[str] = []
    seconds: list[str] = []
    journal = BatchJournal(
        journal_path, work_fingerprint(fingerprint, prompts, batch_size, seed, vars(sampling))
    )
    elapsed = 0.0  # sampling seconds, including those of the batches a killed run finished
    bar = tqdm(total=2 * len(prompts), desc="sampling pairs", unit="completion", disable=not progress)
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = prompts[start : start + batch_size]
        if b not in journal.done:
            t0 = time.perf_counter()
            ids = [fmt.prompt_ids(p) for p in chunk for _ in range(2)]  # (2B,) prompt, prompt, next, ...
            gen = sample(model, tokenizer, ids, sampling, generator_seed=seed * 1_000_003 + b)
            journal.record(b, texts=gen.texts, seconds=time.perf_counter() - t0)
        texts = journal.done[b]["texts"]
        elapsed += float(journal.done[b]["seconds"])
        firsts += texts[0::2]
        seconds += texts[1::2]
        bar.update(len(texts))
        bar.set_postfix(per_s=f"{len(firsts) * 2 / max(elapsed, 1e-9):.2f}")
    bar.close()
    return PairSet(prompts, firsts, seconds, elapsed)


def _scores(fn, prompts: list[str], texts: list[str]) -> list[float | None]:
    if fn is None or not prompts:
        return [None] * len(prompts)
    out = fn(prompts, texts)
    return [None] * len(prompts) if out is None else [float(x) for x in np.asarray(out, dtype=np.float64)]


def label_pairs(
    judge, pairs: PairSet, task=None, keep_ties: bool = False, chunk_size: int = 256, progress: bool = True
) -> tuple[list[dict], dict]:
    """Label ``pairs`` with ``judge`` (already bound to the task); returns (rows, report).

    Args:
        judge: a pairwise judge (``alignlab.judges.base``).
        pairs: the sampled pairs.
        task: the task, for gold and second scores and the agreement with the gold ordering (optional).
        keep_ties: write tied pairs too (``tie: true``, ``p_chosen`` 0.5); by default they are only counted.
        chunk_size: pairs per ``judge_pairs`` call (the progress bar's step).
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    from alignlab.judges.report import labelling_report

    check_pairs(pairs.prompts, pairs.firsts, pairs.seconds)
    n = len(pairs.prompts)
    # 1. pairs that cannot be labelled are counted, never dropped silently
    identical = [i for i in range(n) if pairs.firsts[i] == pairs.seconds[i]]
    same = set(identical)
    empty = [
        i for i in range(n) if i not in same and not (pairs.firsts[i].strip() and pairs.seconds[i].strip())
    ]
    skip = set(identical) | set(empty)
    idx = [i for i in range(n) if i not in skip]
    P = [pairs.prompts[i] for i in idx]
    A = [pairs.firsts[i] for i in idx]
    B = [pairs.seconds[i] for i in idx]
    # 2. judge, chunk by chunk
    t0 = time.perf_counter()
    results: list[dict] = []
    for s in tqdm(range(0, len(idx), chunk_size), desc="labelling", unit="chunk", disable=not progress):
        results += judge.judge_pairs(P[s : s + chunk_size], A[s : s + chunk_size], B[s : s + chunk_size])
    check_judgements(results, len(idx), who=type(judge).__name__)
    label_seconds = time.perf_counter() - t0
    # 3. the task's scorers on both completions
    gold = getattr(task, "gold_scores", None) if getattr(task, "has_gold", True) else None
    second = getattr(task, "second_scores", None)
    g1, g2 = _scores(gold, P, A), _scores(gold, P, B)
    s1, s2 = _scores(second, P, A), _scores(second, P, B)
    # 4. rows: the verdict decides chosen/rejected; p_chosen is the judge's P(chosen ≻ rejected)
    rows = []
    for k, (i, r) in enumerate(zip(idx, results)):
        v = r["verdict"]
        if v == "invalid" or (v == "tie" and not keep_ties):
            continue
        first_chosen = v in ("first", "tie")
        ch, rj = (0, 1) if first_chosen else (1, 0)  # positions of chosen / rejected in (first, second)
        p_first = float(r["p_first"])
        texts, golds, seconds_ = (A[k], B[k]), (g1[k], g2[k]), (s1[k], s2[k])
        rows.append(
            {
                "prompt": P[k],
                "chosen": texts[ch],
                "rejected": texts[rj],
                "p_chosen": p_first if first_chosen else 1.0 - p_first,
                "tie": v == "tie",
                "label_source": r.get("judge", type(judge).__name__),
                "gold_chosen": golds[ch],
                "gold_rejected": golds[rj],
                "second_chosen": seconds_[ch],
                "second_rejected": seconds_[rj],
                "pair_index": i,
                "provenance": {
                    "verdict": v,
                    "chosen": "first" if first_chosen else "second",
                    "p_first": p_first,
                    "p_forward": r.get("p_forward"),
                    "p_backward": r.get("p_backward"),
                    "judge": r.get("judge"),
                    "judge_name": r.get("judge_name"),
                    "template_hash": r.get("template_hash"),
                    "raw": [str(x) for x in r.get("raw") or []],
                },
            }
        )
    # 5. the report: the judge's agreement with the gold ordering, counts, throughput
    has_gold = gold is not None and all(x is not None for x in g1 + g2)
    stats = {
        **(judge.report_stats() if hasattr(judge, "report_stats") else {}),
        "label_seconds": round(label_seconds, 3),
    }
    mode = getattr(judge, "mode", "pairwise")
    gold_ab = (g1, g2) if has_gold else (None, None)
    report = labelling_report(results, *gold_ab, stats, mode, texts=(A, B))
    report.update(
        {
            "pairs_sampled": n,
            "identical_skipped": len(identical),
            "empty_skipped": len(empty),
            "skipped_indices": {"identical": identical, "empty": empty},
            "rows_written": len(rows),
            "ties_written": bool(keep_ties),
            "sampling_seconds": round(pairs.seconds_elapsed, 3),
            "completions_per_s": pairs.completions_per_s,
        }
    )
    if has_gold:
        report["expected_gold_accuracy"] = _expected_accuracy(results, g1, g2)
    return rows, report


def _expected_accuracy(results: list[dict], g1: list, g2: list) -> float | None:
    """Mean of the judge's own P(the gold-better completion wins), over decided pairs where gold is not
    tied: what ``gold_accuracy`` should be if the judge's probabilities are calibrated (for judge=gold,
    the Bradley–Terry agreement rate the temperature implies)."""
    vals = [
        r["p_first"] if a > b else 1.0 - r["p_first"]
        for r, a, b in zip(results, g1, g2)
        if a != b and r["verdict"] in ("first", "second")
    ]
    return float(np.mean(vals)) if vals else None
