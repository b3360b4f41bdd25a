"""The four human-rated corpora of the sentiment task's source archive, for tuning a judge and for
calibrating simulated annotators.

``hutto_ICWSM_2014`` (inside the vaderSentiment-3.3.2 source archive, see ``alignlab.tasks.prepare``)
holds, per corpus, ``<corpus>_GroundTruth.txt`` (id, mean rating in [-4, 4], sentence) and
``<corpus>_anonDataRatings.txt`` (id, mean, std, every rater's integer score):

* ``tweets`` (4,200), ``amazonReviewSnippets`` (3,708), ``nytEditorialSnippets`` (5,190): never prompts
  of the sentiment task;
* ``movieReviewSnippets`` (10,605): the task's prompts are openings of these sentences, so only the
  sentences whose opening lies in the task's **train** split may be used (``movie_sentences_in_split``).

The rows are cached once as ``<task dir>/human_ratings.jsonl`` (``human_ratings.provenance.json`` marks
it complete): ``{corpus, id, text, rating, ratings}``, ``ratings`` being the raters' scores, or None where
the rater file does not match the ground truth (199 tweets, whose rater rows are out of order).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from alignlab.tasks import prepare as prep
from alignlab.utils.io import write_json, write_jsonl

CORPORA = ("tweets", "amazonReviewSnippets", "nytEditorialSnippets", "movieReviewSnippets")
MOVIES = "movieReviewSnippets"


def _lines(tar, name: str) -> list[str]:
    return [line.lstrip("\ufeff") for line in prep._read_member(tar, name)]


def read_corpora(sdist: Path, corpora: tuple[str, ...] = CORPORA) -> list[dict]:
    """Rows ``{corpus, id, text, rating, ratings}`` of the human-rated sentences in ``sdist``."""
    rows = []
    with prep._inner_archive(sdist) as tar:
        for corpus in corpora:
            raters = {}
            for line in _lines(tar, f"{corpus}_anonDataRatings.txt"):
                sid, _mean, _std, votes = line.split("\t")
                raters[sid] = [int(v) for v in json.loads(votes)]
            for line in _lines(tar, f"{corpus}_GroundTruth.txt"):
                sid, mean, text = line.split("\t", 2)
                votes = raters.get(sid)
                if votes and abs(sum(votes) / len(votes) - float(mean)) > 0.01:
                    votes = None  # the rater row belongs to another sentence
                rows.append(
                    {
                        "corpus": corpus,
                        "id": sid,
                        "text": prep.clean_text(text),
                        "rating": float(mean),
                        "ratings": votes,
                    }
                )
    return rows


def ensure_human_ratings(task_dir: str | Path, archive: str | None = None, force: bool = False) -> Path:
    """``<task_dir>/human_ratings.jsonl`` (all four corpora), fetched with pip and extracted once."""
    task_dir = Path(task_dir).expanduser()
    out, prov = task_dir / "human_ratings.jsonl", task_dir / "human_ratings.provenance.json"
    if out.exists() and prov.exists() and not force:
        return out
    task_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=task_dir) as tmp:
        if archive:
            sdist = Path(archive).expanduser()
            if not sdist.exists():
                raise FileNotFoundError(
                    f"archive {archive!r} does not exist; give the vaderSentiment-3.3.2 sdist"
                )
        else:
            print(f"[alignlab] fetching {prep.REQUIREMENT} (source archive) with pip ...", flush=True)
            sdist = prep.fetch_sdist(Path(tmp))
        rows = read_corpora(sdist)
        write_jsonl(out, rows)
        write_json(
            prov,
            {
                **prep.SOURCE,
                "dataset": "hutto_ICWSM_2014: tweets, Amazon, NYT and movie-review sentences with every "
                "rater's score in [-4, 4]",
                "archive": sdist.name,
                "archive_sha256": prep.file_sha256(sdist),
                "sentences": {c: sum(r["corpus"] == c for r in rows) for c in CORPORA},
                "rows_sha256": prep.file_sha256(out),
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    return out


def movie_sentences_in_split(task, rows: list[dict], split: str = "train") -> list[dict]:
    """The movie-review rows whose opening (cut as the task cuts it) is a prompt of ``split`` and of no
    other split; sentences too short to give an opening are left out too."""
    p = task.params
    by_split = {s: {r["opening"] for r in prep.read_jsonl(task.prompt_file(s))} for s in task.splits}
    others = set().union(*(v for s, v in by_split.items() if s != split))
    keep = []
    for r in rows:
        op = prep.opening_of(
            {"id": int(r["id"]), "text": r["text"]}, p["min_words"], p["max_words"], p["seed"]
        )
        if op is not None and op in by_split[split] and op not in others:
            keep.append(r)
    return keep
