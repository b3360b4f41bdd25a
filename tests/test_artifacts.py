"""Content-addressed artifacts: same spec -> same directory, done once; a crashed stage reruns in place."""

from __future__ import annotations

import pytest

from alignlab.artifacts import Store, content_key


def test_same_spec_runs_once(tmp_path):
    store, calls = Store(tmp_path), []

    def work(out):
        calls.append(out)
        (out / "data.txt").write_text("x")
        return {"rows": 3}

    p1, rec1, cached1 = store.run("pairs", {"n": 3, "seed": 0}, work)
    p2, rec2, cached2 = store.run("pairs", {"seed": 0, "n": 3}, work)  # key order does not matter
    assert (cached1, cached2) == (False, True) and p1 == p2 and len(calls) == 1
    assert rec2["info"] == {"rows": 3} and rec2["seconds"] >= 0
    p3, _, cached3 = store.run("pairs", {"n": 4, "seed": 0}, work)
    assert p3 != p1 and not cached3 and content_key({"a": 1}) != content_key({"a": 2})


def test_crashed_stage_reruns_in_the_same_directory(tmp_path):
    store = Store(tmp_path)

    def crash(out):
        (out / "partial.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.run("train", {"k": 1}, crash)
    seen = []
    path, _, cached = store.run("train", {"k": 1}, lambda out: seen.append((out / "partial.txt").read_text()))
    assert not cached and seen == ["half"] and (path / "DONE.json").exists()
