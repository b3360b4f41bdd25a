"""alignlab.compare refuses result files it cannot pair (unreadable, per-prompt lists cut, evaluated
differently) with one line naming the file and the fix, exit 2; ``--skip-bad`` leaves them out and the
report says which and why."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from alignlab.compare import find_results, main, write_report
from alignlab.report_checks import eval_fingerprint, prompts_sha, screen_results
from conftest import REPO

N = 48
PROMPTS = [f"prompt {i}" for i in range(N)]
BASE = np.random.default_rng(0).normal(0.1, 0.3, N)
SHIFTS = {"dpo": 0.3, "rloo": 0.25, "ppo": 0.0}


def _eval(values: np.ndarray, seed: int = 0) -> dict:
    ev = {"task": "letters", "split": "test", "n": N, "samples_per_prompt": 1, "seed": seed,
          "sampling": {"max_new_tokens": 16, "temperature": 1.0, "top_p": 1.0, "top_k": 0},
          "gold_reward": float(values.mean()), "kl": 1.0, "prompts_sha": prompts_sha(PROMPTS),
          "per_prompt": {"gold_reward": values.tolist(), "kl": [1.0] * N}}  # fmt: skip
    ev["eval_fingerprint"] = eval_fingerprint(ev)  # as alignlab.evaluate records it
    return ev


def _write(root: Path, method: str, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed + len(method))
    rec = {"method": method, "seed": seed, "variant": {}, "labeller": "gold",
           "eval": _eval(BASE + SHIFTS[method] + rng.normal(0, 0.05, N)), "base_eval": _eval(BASE)}  # fmt: skip
    path = root / method / str(seed) / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(rec))
    return path


def _runs(root: Path) -> dict[str, Path]:
    """Three methods x two seeds; returns each method's seed-1 file."""
    return {m: [_write(root, m, s) for s in (0, 1)][-1] for m in SHIFTS}


def _edit(path: Path, change) -> None:
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _cut(rec: dict) -> None:
    rec["eval"]["per_prompt"]["gold_reward"] = rec["eval"]["per_prompt"]["gold_reward"][:40]


def _reseed(rec: dict) -> None:  # both evaluations' seed changed, their recorded fingerprints dropped
    for side in ("eval", "base_eval"):
        rec[side]["seed"] = 1
        del rec[side]["eval_fingerprint"]


def _other_prompts(rec: dict) -> None:
    rec["eval"]["prompts_sha"] = prompts_sha(PROMPTS[::-1])


def _no_eval(rec: dict) -> None:
    del rec["eval"]


def _edited_temperature(rec: dict) -> None:  # the fields changed, the recorded fingerprint did not
    rec["eval"]["sampling"]["temperature"] = 0.7


def _base_reseeded(rec: dict) -> None:
    rec["base_eval"]["seed"] = 3
    del rec["base_eval"]["eval_fingerprint"]


CASES = {
    "truncated": (None, "cannot be read (", "it is truncated or not JSON"),
    "cut": (_cut, "eval.per_prompt.gold_reward has 40 values but eval.n is 48", "the list was cut"),
    "reseeded": (_reseed, "it was evaluated differently from the other 5 file(s)", "seed=1 (theirs: 0)"),
    "prompts": (_other_prompts, "its eval ran on other prompts than the other files", "prompts_sha"),
    "no-eval": (_no_eval, "has no 'eval' key", "not a whole result record"),
    "edited": (_edited_temperature, "no longer match the eval_fingerprint it recorded", "edited after"),
    "base": (_base_reseeded, "its eval and base_eval were evaluated differently", "seed=0 (base_eval: 3)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_result_file_stops_compare_with_one_line(case, tmp_path, capsys):
    change, what, detail = CASES[case]
    runs = _runs(tmp_path / "runs")
    bad = runs["rloo"]
    if change is None:
        _truncate(bad)
    else:
        _edit(bad, change)
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"alignlab-compare: error: {bad}: "), lines
    assert what in lines[0] and detail in lines[0], lines[0]
    assert "--skip-bad" in lines[0] and "rerun its pipeline job" in lines[0]
    assert not (tmp_path / "report" / "report.md").exists()  # nothing written from a tampered set


@pytest.mark.parametrize("case", ["truncated", "cut", "reseeded"])
def test_skip_bad_lists_the_file_and_the_verdict_uses_only_the_rest(case, tmp_path, capsys):
    change, what, _ = CASES[case]
    runs = _runs(tmp_path / "runs")
    clean = tmp_path / "clean"
    shutil.copytree(tmp_path / "runs", clean)
    shutil.rmtree(clean / "rloo" / "1")  # what the report should come to without the bad file
    bad = runs["rloo"]
    if change is None:
        _truncate(bad)
    else:
        _edit(bad, change)
    report, tab = write_report([tmp_path / "runs"], tmp_path / "report", skip_bad=True)
    text = report.read_text()
    header = text.split("## Verdict")[0]
    assert "Excluded with --skip-bad: 1 result file(s)" in header
    assert f"- `{bad}`: " in header and what in header
    assert str(bad) not in text.split("## Runs")[1]  # not among the runs read
    _, clean_tab = write_report([clean], tmp_path / "clean_report")
    assert tab == clean_tab  # the table and verdict are those of the untouched files alone
    assert "| rloo | 1 |" in tab
    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "r2"), "--skip-bad"]) == 0
    assert "| rloo | 1 |" in capsys.readouterr().out


def test_cross_file_length_check_without_n(tmp_path):
    """Records that carry no ``n`` (older ones): a file whose lists were all cut alike differs from the
    others' length."""
    runs = _runs(tmp_path)

    def drop_n(rec):
        for side in ("eval", "base_eval"):
            del rec[side]["n"], rec[side]["eval_fingerprint"]

    for path in tmp_path.rglob("result.json"):
        _edit(path, drop_n)
    _edit(runs["ppo"], lambda r: [r[s]["per_prompt"].update({k: v[:30] for k, v in r[s]["per_prompt"].items()})
                                  for s in ("eval", "base_eval")])  # fmt: skip
    kept, bad = screen_results(find_results([tmp_path]), [], skip_bad=True)
    assert [p for p, _ in bad] == [str(runs["ppo"])] and len(kept) == 5
    assert "has 30 values where the other files have 48" in bad[0][1]


def test_published_results_pass_and_an_edited_copy_does_not(tmp_path):
    """No false alarm on the published comparison (whose records predate the hash), and its own files
    are checked: one copy with another evaluation seed is refused."""
    pub = REPO / "docs" / "results" / "standard" / "runs"
    results = find_results([pub])
    kept, bad = screen_results(results, [], skip_bad=False)
    assert len(kept) == len(results) > 10 and bad == []
    shutil.copytree(pub, tmp_path / "runs")
    target = tmp_path / "runs" / "dpo-s1.json"
    _edit(target, lambda r: r["base_eval"].update(seed=7))
    with pytest.raises(Exception, match=r"dpo-s1.json: its eval and base_eval were evaluated differently"):
        screen_results(find_results([tmp_path / "runs"]), [])


def test_fingerprint_covers_every_field_the_pairing_relies_on():
    ev = _eval(BASE)
    for key, value in (("task", "other"), ("split", "val"), ("n", N - 1), ("samples_per_prompt", 2),
                       ("seed", 5), ("sampling", {**ev["sampling"], "top_p": 0.9})):  # fmt: skip
        assert eval_fingerprint({**ev, key: value}) != eval_fingerprint(ev), key
    assert eval_fingerprint({**ev, "gold_reward": 9.0}) == eval_fingerprint(ev)  # results are not in it
    assert prompts_sha(PROMPTS) != prompts_sha(PROMPTS[:-1])


def test_the_new_messages_are_in_docs_errors():
    doc = (REPO / "docs" / "errors.md").read_text()
    for fragment in ("it is truncated or not JSON; restore the file", "has 200 values but eval.n is 256",
                     "it was evaluated differently from the other", "non-finite value(s) among",
                     "prompts.jsonl:2: field 'prompt' is empty"):  # fmt: skip
        assert fragment in doc, fragment
