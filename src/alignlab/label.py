"""Label app: ``python -m alignlab.label [task=<name>] judge=gold model=smollm2_135m n_prompts=64``.

Wiring only: sample two completions per prompt from a policy (``alignlab.tasks.pairs.sample_pairs``),
label the pairs with the configured judge (``label_pairs``), write the preference rows and the labelling
report atomically, print the counts, the agreement with the gold ordering and the throughput.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from alignlab.utils.app import hydra_app
from alignlab.utils.errors import UserError
from alignlab.utils.runtime import configure_runtime, get_logger

log = get_logger(__name__)


def check_label_config(cfg: DictConfig) -> None:
    from alignlab.utils.config import ConfigError

    suffix = Path(str(cfg.output_path)).suffix
    if suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"output_path={cfg.output_path!r} must end in .jsonl or .parquet")
    from alignlab.sample import check_sample_config

    check_sample_config(cfg)  # n_prompts, batch_size, model: the sampling half of the label app


def label(cfg: DictConfig) -> dict:
    """Run one labelling job described by ``cfg``; returns the labelling report."""
    configure_runtime()
    from hydra.utils import instantiate

    check_label_config(cfg)
    judge = instantiate(cfg.judge)
    judge_precision = local_judge_precision(judge)
    check_server = getattr(judge, "check_server", None)  # a judge behind a server is asked once, first:
    if check_server is not None:  # a dead server fails in seconds, before heavy imports, model or sampling
        check_server()

    from alignlab.judges.base import bind_task
    from alignlab.judges.report import format_report, judge_question, report_path
    from alignlab.tasks import build_task
    from alignlab.tasks.pairs import PairSet, label_pairs
    from alignlab.utils.config import save_resolved_config
    from alignlab.utils.io import write_json, write_rows

    out = Path(str(cfg.output_path))
    save_resolved_config(cfg, out.parent)
    task = build_task(cfg.task)  # the run's one task object
    bind_task(judge, task)

    # 1. pairs: sampled from the policy, or read from an earlier run's samples. Finished sampling batches
    #    are journaled beside the output, so a killed run resumes there (and its judge calls are cached)
    journal = out.parent / f".{out.stem}.sampling.journal.jsonl"
    precision = None  # the policy's precision when this run samples the pairs
    if cfg.get("pairs_path"):
        pairs = PairSet.load(str(cfg.pairs_path))
        log.info("labelling %d pairs from %s", len(pairs.prompts), cfg.pairs_path)
    else:  # the sample app's sampling (alignlab.sample); the policy is freed before a judge model loads
        from alignlab.sample import sample_pair_set

        pairs, precision = sample_pair_set(cfg, task, journal)
        if cfg.get("samples_path"):
            pairs.save(str(cfg.samples_path))

    # 2. labels
    rows, report = label_pairs(judge, pairs, task, bool(cfg.keep_ties), progress=cfg.progress)
    report.update(
        {
            "task": getattr(task, "name", None),
            "split": cfg.get("split"),
            "output": str(out),
            "policy": cfg.get("policy_path") or cfg.model.get("source"),
            "pairs_path": cfg.get("pairs_path"),
            "precision": precision,
            "judge_precision": judge_precision,
            "question": judge_question(judge),  # what the labeller was asked (the report names it)
        }
    )

    # 3. outputs, written atomically (the report even when no pair could be labelled)
    rep_path = write_json(report_path(out), report)
    if not rows:
        raise nothing_labelled(report, rep_path)
    write_rows(out, rows)
    journal.unlink(missing_ok=True)  # the work is saved: the next run samples afresh

    # 4. what happened, in a few lines
    print(format_report(report), flush=True)
    agree = report.get("gold_accuracy")
    exp = report.get("expected_gold_accuracy")
    cps = report.get("completions_per_s")
    print(
        f"[label] pairs={report['pairs_sampled']} labelled={report['decided']} ties={report['ties']} "
        f"identical skipped={report['identical_skipped']} empty skipped={report['empty_skipped']} "
        f"invalid={report['invalid']}",
        flush=True,
    )
    if agree is not None:
        print(
            f"[label] agreement with the noiseless gold ordering: {agree:.3f} over {report['gold_compared']} "
            f"pairs (expected from the judge's probabilities: {exp:.3f})",
            flush=True,
        )
    if cps is not None:
        print(
            f"[label] sampling: {2 * report['pairs_sampled']} completions in {report['sampling_seconds']:.1f} s "
            f"= {cps:.2f} completions/s",
            flush=True,
        )
    print(f"[label] wrote {len(rows)} rows to {out} (report: {rep_path})", flush=True)
    return report


def nothing_labelled(report: dict, rep_path) -> UserError:
    """The one line for a labelling run that produced no row: the counts, then what to try for each."""
    asked, invalid, ties = report.get("pairs", 0), report.get("invalid", 0), report.get("ties", 0)
    skipped = report.get("identical_skipped", 0) + report.get("empty_skipped", 0)
    hints = []
    if invalid:
        hints.append(f"read the judge's raw answers in {rep_path} and fix the server, judge.model or "
                     "judge.template (non-answers are not cached: a rerun asks again)")  # fmt: skip
    if ties:
        hints.append("set keep_ties=true, or lower judge.tie_margin / judge.min_confidence")
    if skipped:
        hints.append("sample more varied completions (a higher sampling.temperature or more max_new_tokens)")
    return UserError(
        f"no pair could be labelled: {asked} pair(s) asked, {invalid} invalid answer(s), {ties} tie(s), "
        f"{skipped} pair(s) not asked (identical {report.get('identical_skipped', 0)}, empty "
        f"{report.get('empty_skipped', 0)}); try: {'; '.join(hints) or f'see {rep_path}'}"
    )


def local_judge_precision(judge) -> str | None:
    """An in-process judge LM (``LocalJudge``) is loaded in inference's precision on its device (bf16
    weights on a CPU with native bf16, as the policy samples: ``inference_spec``); returns that precision
    (``fp32``, ``bf16``), None for a judge without a model here (gold, HTTP)."""
    from alignlab.judges.local import LocalJudge
    from alignlab.models.reference import PRECISION_NAMES, inference_spec

    if not isinstance(judge, LocalJudge):
        return None
    judge.spec = inference_spec(judge.spec, judge.device)  # before its model loads (on the first miss)
    return PRECISION_NAMES[judge.spec.resolved_dtype()]


def ping_judge_server(cfg: DictConfig) -> None:
    """A judge behind a server (one with ``check_server``) is asked once, first: a dead server fails in
    seconds, before the typed-config check, heavy imports, the model or sampling."""
    from hydra.utils import get_class, instantiate

    target = (cfg.get("judge") or {}).get("_target_")
    if target and hasattr(get_class(target), "check_server"):
        instantiate(cfg.judge).check_server()


@hydra_app("label", precheck=ping_judge_server)
def main(cfg: DictConfig) -> None:
    label(cfg)


if __name__ == "__main__":
    main()
