"""The one short stable hash: its values are part of the cache format (artifact directories, cached prompt
sets, judge identities, published-record keys), so they are pinned here; a change that moves any of them
invalidates every cache and published key and must be deliberate."""

from __future__ import annotations

from alignlab.utils.hashing import canonical_json, stable_hash, text_hash

SPEC = {"b": [1, 2.5, None], "a": "é"}


def test_pinned_values():
    assert stable_hash(SPEC) == "fc10ba9755cfc69c"
    assert stable_hash(SPEC, ensure_ascii=False) == "c8e177ab11af9dbe"
    assert stable_hash(["x"], 10) == "cd65ea2c2a"
    assert text_hash("é\n") == "edd3a863872a0423"


def test_dict_order_does_not_matter_and_content_does():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1, "b": 2}) != stable_hash({"a": 1, "b": 3})
    assert len(stable_hash(SPEC, 12)) == 12


def test_what_json_cannot_encode_is_written_as_its_str():
    class Odd:
        def __str__(self) -> str:
            return "odd"

    assert canonical_json({"k": Odd()}) == '{"k": "odd"}'


def test_the_callers_use_it():
    from alignlab.artifacts import content_key
    from alignlab.judges.templates import text_hash as judge_hash
    from alignlab.report_checks import prompts_sha

    assert content_key(SPEC) == stable_hash(SPEC)
    assert judge_hash("a", {"y": 1, "x": 2}) == stable_hash(["a", {"x": 2, "y": 1}], ensure_ascii=False)
    assert prompts_sha(["p", "q"]) == stable_hash(["p", "q"])
