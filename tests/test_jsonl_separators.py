"""A completion may contain U+2028, U+2029 or U+0085, which ``write_jsonl`` writes raw (ensure_ascii=False):
every JSONL reader splits at "\\n" only (str.splitlines would cut the row in two; the standard rerun's
dpo-s1 job died on it in pipeline_record.examples_of)."""

from __future__ import annotations

import json

from alignlab.utils.io import jsonl_lines, write_jsonl

ODD = "a\u2028b\u2029c\x85d\x0be\x1cf"  # every separator str.splitlines knows besides \n and \r


def test_jsonl_lines_keeps_rows_whole(tmp_path):
    rows = [{"prompt": "p", "completion": ODD, "gold": 0.5}, {"prompt": "q", "completion": "x", "gold": 1.0}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    text = path.read_text(encoding="utf-8")
    assert "\u2028" in text  # written raw: the case that matters
    assert [json.loads(x) for x in jsonl_lines(text)] == rows


def test_examples_of_reads_an_evaluation_with_separators(tmp_path):
    from alignlab.pipeline_record import examples_of

    rows = [{"prompt": f"p{i}", "completion": ODD, "gold": 0.1 * i} for i in range(3)]
    write_jsonl(tmp_path / "samples.jsonl", rows)
    assert [r["completion"] for r in examples_of(tmp_path)] == [ODD] * 3


def test_instruct_scoring_reads_separators(tmp_path):
    from alignlab.tasks.instruct import main

    write_jsonl(tmp_path / "samples.jsonl", [{"prompt": "Write about tea.", "completion": ODD}])
    assert main([str(tmp_path / "samples.jsonl")]) in (0, 2)  # scored or refused in one line, never a crash
