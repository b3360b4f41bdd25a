"""Bad input gets a message naming the file, the row, the field and the fix; skips are counted."""

from __future__ import annotations

import json

import pytest

from alignlab.data.rows import DataError, load_rows


def _jsonl(path, lines: list[str | bytes]):
    with open(path, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return str(path)


GOOD = json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"})


def test_malformed_json_line_names_file_line(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [GOOD, '{"prompt": "p", "chosen": "x",', GOOD])
    with pytest.raises(DataError) as e:
        load_rows(path, "preference")
    msg = str(e.value)
    assert f"{path}:2" in msg and "malformed JSON" in msg and "skip_invalid" in msg


@pytest.mark.parametrize(
    "row, field, words",
    [
        ({"prompt": "p", "chosen": "a"}, "rejected", "missing field"),
        ({"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen", "must be a string"),
        ({"prompt": "p", "chosen": "  ", "rejected": "b"}, "chosen", "is empty"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen", "identical"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "p_chosen": "high"}, "p_chosen", "number in [0, 1]"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "p_chosen": 1.5}, "p_chosen", "number in [0, 1]"),
    ],
)
def test_invalid_fields_named(tmp_path, row, field, words):
    path = _jsonl(tmp_path / "pairs.jsonl", [GOOD, json.dumps(row)])
    with pytest.raises(DataError) as e:
        load_rows(path, "preference")
    msg = str(e.value)
    assert f"{path}:2" in msg and f"'{field}'" in msg and words in msg


def test_invalid_utf8(tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [GOOD, b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}'])
    with pytest.raises(DataError, match=r"pairs.jsonl:2: invalid UTF-8"):
        load_rows(path, "preference")


def test_skip_invalid_counts_reasons(tmp_path):
    lines = [
        GOOD,
        "not json",
        json.dumps({"prompt": "p", "chosen": "x", "rejected": "x"}),
        json.dumps({"prompt": "p", "chosen": "x"}),
        GOOD,
    ]
    rows, report = load_rows(_jsonl(tmp_path / "p.jsonl", lines), "preference", skip_invalid=True)
    assert len(rows) == 2 and report.read == 5 and report.kept == 2
    assert report.skipped == {"malformed JSON": 1, "identical pair": 1, "missing rejected": 1}
    assert "2/5 rows kept" in report.summary()


def test_column_mapping_and_soft_label(tmp_path):
    row = {"question": "q", "good": "a", "bad": "b", "prob": 0.8}
    path = _jsonl(tmp_path / "p.jsonl", [json.dumps(row)])
    rows, _ = load_rows(
        path,
        "preference",
        columns={"prompt": "question", "chosen": "good", "rejected": "bad", "p_chosen": "prob"},
    )
    assert rows[0]["prompt"] == "q" and rows[0]["chosen"] == "a" and rows[0]["p_chosen"] == pytest.approx(0.8)


def test_misnamed_column_suggests_mapping(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [json.dumps({"question": "q", "answer": "a"})])
    with pytest.raises(DataError) as e:
        load_rows(path, "sft")
    assert "missing field 'prompt'" in str(e.value) and "data.columns.prompt" in str(e.value)
    assert "answer, question" in str(e.value)


def test_conversation_pairs_are_split(tmp_path):
    msgs = [{"role": "user", "content": "Hi?"}]
    row = {
        "chosen": [*msgs, {"role": "assistant", "content": "Hello!"}],
        "rejected": [*msgs, {"role": "assistant", "content": "Go away."}],
    }
    full = {"chosen": "Human: hi Assistant: hello there", "rejected": "Human: hi Assistant: go away"}
    rows, _ = load_rows(_jsonl(tmp_path / "c.jsonl", [json.dumps(row), json.dumps(full)]), "preference")
    assert rows[0]["prompt"] == msgs and rows[0]["chosen"] == "Hello!" and rows[0]["rejected"] == "Go away."
    assert rows[1]["prompt"] == "Human: hi Assistant:"  # the marker ends the prompt, as in HH-RLHF
    assert (rows[1]["chosen"], rows[1]["rejected"]) == (" hello there", " go away")


def test_csv_and_parquet(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"prompt": ["a", "b"], "completion": ["x", ""]})
    df.to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match=r"d.csv:3: field 'completion' is empty"):
        load_rows(str(tmp_path / "d.csv"), "sft")
    df.iloc[:1].to_parquet(tmp_path / "d.parquet")
    rows, _ = load_rows(str(tmp_path / "d.parquet"), "sft")
    assert rows[0]["completion"] == "x"


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_rows(str(tmp_path / "nope.jsonl"), "sft")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(str(tmp_path / "x.txt"), "sft")


def _pref_module(path, tokenizer, **kw):
    from alignlab.data.datamodules import PreferenceDataModule

    dm = PreferenceDataModule(
        train_path=path, val_fraction=0.5, max_length=40, max_prompt_length=16, tokenizer=tokenizer, **kw
    )
    dm.setup("fit")
    return dm


def test_over_length_rows_error_drop_or_truncate(tmp_path, tiny_lm):
    long = json.dumps({"prompt": "p", "chosen": "x" * 100, "rejected": "no"})
    path = _jsonl(tmp_path / "p.jsonl", [GOOD, long, GOOD, GOOD])
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'chosen' is too long \(102 tokens > 40\)"):
        _pref_module(path, tiny_lm.tokenizer, truncation="error")
    dm = _pref_module(path, tiny_lm.tokenizer, truncation="drop")
    assert len(dm.train_set) + len(dm.val_set) == 3 and dm.truncation_counts == {"dropped over-length": 1}
    dm = _pref_module(path, tiny_lm.tokenizer, truncation="truncate")
    assert len(dm.train_set) + len(dm.val_set) == 4 and dm.truncation_counts == {"chosen truncated": 1}
    batch = dm.collator()([dm.train_set[i] for i in range(len(dm.train_set))] + [dm.val_set[0]])
    assert batch["chosen_input_ids"].shape[1] <= 40  # padded to the batch's longest, never beyond max_length


# -- whole transcripts (HH-RLHF) are split at the last assistant turn ------------------------------------
HH_PROMPT = (
    "\n\nHuman: Which river is the longest?\n\nAssistant: Do you mean by length?\n\nHuman: Yes.\n\nAssistant:"
)


@pytest.mark.parametrize(
    "chosen,rejected",
    [
        (" The Nile, at about 6,650 km.", " The Amazon."),  # answers sharing their leading word
        (" Paris is the capital of France.", " Paris."),  # one answer a prefix of the other
        (" Paris.", " Paris is the capital of France."),
    ],
    ids=["shared-leading-word", "rejected-is-prefix", "chosen-is-prefix"],
)
def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path, chosen, rejected):
    row = {"chosen": HH_PROMPT + chosen, "rejected": HH_PROMPT + rejected}
    rows, _ = load_rows(_jsonl(tmp_path / "hh.jsonl", [json.dumps(row)]), "preference")
    assert rows[0]["prompt"] == HH_PROMPT
    assert (rows[0]["chosen"], rows[0]["rejected"]) == (chosen, rejected)


def test_transcripts_that_differ_before_the_last_turn_are_refused(tmp_path):
    row = {"chosen": HH_PROMPT + " The Nile.", "rejected": "\n\nHuman: Hi\n\nAssistant: The Amazon."}
    path = _jsonl(tmp_path / "hh.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match=r"hh.jsonl:1: .*differ before the last 'Assistant:' turn"):
        load_rows(path, "preference")


def test_message_lists_split_at_the_last_assistant_message(tmp_path):
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Longest river?"},
        {"role": "assistant", "content": "By length?"},
        {"role": "user", "content": "Yes."},
    ]
    row = {
        "chosen": [*conv, {"role": "assistant", "content": "The Nile."}],
        "rejected": [*conv, {"role": "assistant", "content": "The Amazon."}],
    }
    rows, _ = load_rows(_jsonl(tmp_path / "m.jsonl", [json.dumps(row)]), "preference")
    assert rows[0]["prompt"] == conv and (rows[0]["chosen"], rows[0]["rejected"]) == (
        "The Nile.",
        "The Amazon.",
    )
    trailing = {k: [*v, {"role": "user", "content": "Thanks"}] for k, v in row.items()}
    with pytest.raises(DataError, match="end with it"):
        load_rows(_jsonl(tmp_path / "t.jsonl", [json.dumps(trailing)]), "preference")


@pytest.mark.parametrize(
    "a,b,prompt",
    [
        ("Q: capital of France? A: Paris", "Q: capital of France? A: Paris is", "Q: capital of France? A: "),
        ("Q: longest? The Nile", "Q: longest? The Amazon", "Q: longest? The "),
        ("Q: x? Neverland", "Q: x? Nevermore", "Q: x? "),  # the shared "Never" stays in the answers
        ("Q: hi ", "Q: hi there", "Q: "),  # an answer that is the other's first word and a space
    ],
    ids=["prefix", "shared-word", "shared-part-of-a-word", "prefix-ending-in-space"],
)
def test_common_prefix_fallback_never_cuts_inside_a_word(tmp_path, a, b, prompt):
    rows, _ = load_rows(
        _jsonl(tmp_path / "c.jsonl", [json.dumps({"chosen": a, "rejected": b})]), "preference"
    )
    assert rows[0]["prompt"] == prompt
    assert rows[0]["chosen"] == a[len(prompt) :] and rows[0]["rejected"] == b[len(prompt) :]


def test_an_empty_prompt_in_a_prompts_file_is_named_or_counted(tmp_path):
    rows = [
        json.dumps({"prompt": "The movie was"}),
        json.dumps({"prompt": "  "}),
        json.dumps({"prompt": "It"}),
    ]
    path = _jsonl(tmp_path / "prompts.jsonl", rows)
    with pytest.raises(DataError, match=rf"^{path}:2: field 'prompt' is empty; fix the row, or set "):
        load_rows(path, "prompts")
    kept, report = load_rows(path, "prompts", skip_invalid=True)
    assert [r["prompt"] for r in kept] == ["The movie was", "It"] and report.skipped == {"empty prompt": 1}
    sft = _jsonl(tmp_path / "sft.jsonl", [json.dumps({"prompt": "", "completion": "text"})])
    assert load_rows(sft, "sft")[0][0]["prompt"] == ""  # an SFT row may have no prompt (plain text)


def test_a_control_character_is_reported_without_a_doubled_word(tmp_path):
    path = _jsonl(tmp_path / "prompts.jsonl", ['{"prompt": "The\tmovie"}'])
    with pytest.raises(DataError) as e:
        load_rows(path, "prompts")
    assert f"{path}:1: malformed JSON (Invalid control character at column 16)" in str(e.value)
    assert "at at" not in str(e.value)
