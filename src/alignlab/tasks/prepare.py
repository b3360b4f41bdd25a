"""The prepare step of the sentiment task: real movie-review openings with human ratings, offline after once.

1. ``pip download --no-binary :all: --no-deps vaderSentiment==3.3.2``: the source archive of VADER ships
   ``additional_resources/hutto_ICWSM_2014.tar.gz``, the data of Hutto & Gilbert (2014).
2. From it, ``movieReviewSnippets_GroundTruth.txt``: 10,605 sentences of Rotten Tomatoes reviews (from
   Pang & Lee 2004), each with the mean sentiment rating (-4..4) of 20 human raters, and
   ``movieReviewSnippets_anonDataRatings.txt`` for the raters' standard deviation and count.
   Cached as ``ratings.jsonl`` with ``provenance.json`` (archive hash, files, citation, license).
3. Each sentence gives one review opening: its first k words, k drawn in [min_words, max_words] from a
   generator seeded by (seed, sentence id) (the DPO paper's IMDb prompts were 2-8 token prefixes), always
   leaving at least one word of the sentence out. Openings are de-duplicated (the lowest sentence id
   keeps a repeated opening), shuffled by ``seed`` and split into train/val/test, so no prompt text is in
   two splits.
4. The prompt files land in ``prompts-<hash of the parameters>/{train,val,test}.jsonl`` with a
   ``manifest.json`` written last; a second call finds it and does nothing.

Command: ``alignlab-prepare`` (or ``python -m alignlab.tasks.prepare``); ``--agreement`` also measures
each scorer's correlation with the human ratings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from alignlab.utils.errors import cli_app
from alignlab.utils.hashing import stable_hash
from alignlab.utils.io import write_json, write_jsonl

REQUIREMENT = "vaderSentiment==3.3.2"
ARCHIVE_MEMBER = "additional_resources/hutto_ICWSM_2014.tar.gz"
TRUTH_FILE = "movieReviewSnippets_GroundTruth.txt"
RATERS_FILE = "movieReviewSnippets_anonDataRatings.txt"
SPLITS = ("train", "val", "test")
SOURCE = {
    "dataset": "hutto_ICWSM_2014 movie review snippets (sentence-level, mean of 20 human ratings in [-4, 4])",
    "citation": "C.J. Hutto and E. Gilbert. VADER: A Parsimonious Rule-based Model for Sentiment Analysis of "
    "Social Media Text. ICWSM 2014. Sentences from B. Pang and L. Lee, ACL 2004 (rottentomatoes.com).",
    "license": "vaderSentiment is MIT-licensed; the review snippets are short excerpts distributed with it",
}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def params_hash(*parts: object) -> str:
    """A short stable hash of JSON-serialisable parts (names a cached prompt set)."""
    return stable_hash(parts, 10, ensure_ascii=False)


def fetch_sdist(dest: Path, requirement: str = REQUIREMENT) -> Path:
    """Download the source archive of ``requirement`` with pip (no dependencies, no build) into ``dest``."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--quiet",
        "-d",
        str(dest),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(Path(dest).glob("*.tar.gz"))
    if proc.returncode != 0 or not archives:
        raise RuntimeError(
            f"could not fetch {requirement} with `pip {' '.join(cmd[3:])}`:\n{proc.stderr.strip()}\n"
            "Check that PyPI is reachable, or pass a local copy: alignlab-prepare --archive "
            "vaderSentiment-3.3.2.tar.gz (task.archive=... in configs)"
        )
    return archives[0]


def _inner_archive(sdist: Path) -> tarfile.TarFile:
    with tarfile.open(sdist, "r:gz") as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith(ARCHIVE_MEMBER)), None)
        if member is None:
            raise RuntimeError(
                f"{sdist}: no {ARCHIVE_MEMBER} inside; is this the vaderSentiment-3.3.2 sdist?"
            )
        data = outer.extractfile(member).read()  # type: ignore[union-attr]
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")


def _read_member(tar: tarfile.TarFile, name: str) -> list[str]:
    member = next((m for m in tar.getmembers() if m.name.endswith("/" + name) or m.name == name), None)
    if member is None:
        raise RuntimeError(f"{ARCHIVE_MEMBER}: no {name} inside")
    text = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
    return [line for line in text.splitlines() if line.strip()]


def read_movie_ratings(sdist: Path) -> list[dict]:
    """Rows ``{id, text, rating, rating_std, n_raters}`` of the human-rated movie-review sentences."""
    with _inner_archive(sdist) as tar:
        rater_lines, truth_lines = _read_member(tar, RATERS_FILE), _read_member(tar, TRUTH_FILE)
    raters = {}
    for line in rater_lines:
        sid, _mean, std, votes = line.split("\t")
        raters[int(sid)] = (float(std), len(json.loads(votes)))
    rows = []
    for line in truth_lines:
        sid, mean, text = line.split("\t", 2)
        std, n = raters.get(int(sid), (None, None))
        rows.append(
            {
                "id": int(sid),
                "text": clean_text(text),
                "rating": float(mean),
                "rating_std": std,
                "n_raters": n,
            }
        )
    return rows


def clean_text(text: str) -> str:
    """Undo the corpus' typography: ``''`` quotes become ``"``, runs of spaces (removed dashes) one space."""
    return " ".join(text.replace("''", '"').split())


def make_openings(ratings: list[dict], min_words: int, max_words: int, seed: int) -> list[dict]:
    """One opening per sentence (first k words, k in [min_words, max_words], one word always left out),
    de-duplicated; the lowest sentence id keeps a repeated opening."""
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words ({min_words}) <= max_words ({max_words})")
    seen: dict[str, dict] = {}
    for row in sorted(ratings, key=lambda r: r["id"]):
        opening = opening_of(row, min_words, max_words, seed)
        if opening is not None and opening not in seen:
            seen[opening] = {"opening": opening, "source_id": row["id"], "source_rating": row["rating"]}
    return list(seen.values())


def opening_of(row: dict, min_words: int, max_words: int, seed: int) -> str | None:
    """The opening a sentence row ``{id, text}`` gives (None: too short to leave a word out)."""
    words = row["text"].split()
    if len(words) <= min_words:
        return None
    k = random.Random(f"{seed}:{row['id']}").randint(min_words, min(max_words, len(words) - 1))
    return " ".join(words[:k])


def split_rows(
    rows: list[dict], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[dict]]:
    """Shuffle by ``seed`` and cut into train/val/test (val and test get at least one row each)."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) "
            "and sum to less than 1"
        )
    if len(rows) < 3:
        raise ValueError(f"need at least 3 prompts to split, got {len(rows)}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(rows) * val_fraction))
    n_test = max(1, round(len(rows) * test_fraction))
    cut = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    return {s: [rows[i] for i in cut[s]] for s in SPLITS}


def ensure_ratings(task_dir: Path, archive: str | None = None, force: bool = False) -> Path:
    """``task_dir/ratings.jsonl`` (fetched and extracted once; ``provenance.json`` marks it complete)."""
    ratings, prov = task_dir / "ratings.jsonl", task_dir / "provenance.json"
    if prov.exists() and ratings.exists() and not force:
        return ratings
    task_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=task_dir) as tmp:
        if archive:
            sdist = Path(archive).expanduser()
            if not sdist.exists():
                raise FileNotFoundError(
                    f"archive {archive!r} does not exist; give the vaderSentiment-3.3.2 sdist"
                )
            how = f"local file {sdist}"
        else:
            print(f"[alignlab] fetching {REQUIREMENT} (source archive) with pip ...", flush=True)
            sdist = fetch_sdist(Path(tmp))
            how = f"pip download --no-binary :all: --no-deps {REQUIREMENT}"
        rows = read_movie_ratings(sdist)
        write_jsonl(ratings, rows)
        write_json(
            prov,
            {
                **SOURCE,
                "requirement": REQUIREMENT,
                "fetched_with": how,
                "archive": sdist.name,
                "archive_sha256": file_sha256(sdist),
                "member": f"{ARCHIVE_MEMBER}!{TRUTH_FILE} + {RATERS_FILE}",
                "sentences": len(rows),
                "ratings_sha256": file_sha256(ratings),
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.time() - t0, 2),
            },
        )
    return ratings


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_splits(
    out_dir: Path, rows: list[dict], params: dict, prompt_template: str, extra: dict | None = None
) -> dict[str, Path]:
    """Split ``rows`` (each with ``opening``), render prompts, write the split files and the manifest last."""
    splits = split_rows(rows, params["val_fraction"], params["test_fraction"], params["seed"])
    paths = {}
    for split, part in splits.items():
        paths[split] = write_jsonl(
            out_dir / f"{split}.jsonl",
            [{"prompt": prompt_template.format(opening=r["opening"]), **r} for r in part],
        )
    write_json(
        out_dir / "manifest.json",
        {
            "params": {**params, "prompt_template": prompt_template},
            "distinct_prompts": len(rows),
            "sizes": {s: len(p) for s, p in splits.items()},
            "sha256": {s: file_sha256(p) for s, p in paths.items()},
            **(extra or {}),
        },
    )
    return paths


def split_paths(out_dir: Path) -> dict[str, Path] | None:
    """The split files when ``out_dir`` holds a complete set (its manifest exists), else None."""
    if not (out_dir / "manifest.json").exists():
        return None
    paths = {s: out_dir / f"{s}.jsonl" for s in SPLITS}
    return paths if all(p.exists() for p in paths.values()) else None


def describe(out_dir: Path) -> str:
    m = json.loads((out_dir / "manifest.json").read_text())
    sizes = " ".join(f"{s}={n}" for s, n in m["sizes"].items())
    return f"{m['distinct_prompts']} distinct prompts: {sizes} ({out_dir})"


@cli_app("alignlab-prepare")
def main(argv: list[str] | None = None) -> None:
    """``alignlab-prepare [--task sentiment] [--force] [--archive SDIST] [--agreement]``."""
    ap = argparse.ArgumentParser(prog="alignlab-prepare", description="Prepare a task's prompts (cached).")
    ap.add_argument(
        "--task", default="sentiment", help="a conf/task option or a task YAML's path (default: sentiment)"
    )
    ap.add_argument(
        "--cache-dir", default=None, help="cache root (default: $ALIGNLAB_CACHE or ~/.cache/alignlab)"
    )
    ap.add_argument(
        "--archive", default=None, help="local vaderSentiment-3.3.2.tar.gz instead of pip download"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the openings and the splits")
    ap.add_argument("--force", action="store_true", help="rebuild even when the cache is complete")
    ap.add_argument("--agreement", action="store_true", help="also measure the scorers against human ratings")
    args = ap.parse_args(argv)

    from alignlab.tasks import compose_task

    task = compose_task(args.task, cache_dir=args.cache_dir, archive=args.archive, seed=args.seed)
    if not hasattr(task, "prepare"):  # no build step: its prompt files are written from prompts()
        for split in task.splits:
            path = task.prompt_file(split)
            print(f"[alignlab] {task.name} {split}: {len(task.prompts(split))} prompts ({path})", flush=True)
        if args.agreement:
            print(f"[alignlab] {task.name}: no human ratings to measure the scorers against", flush=True)
        return
    cached = not args.force and split_paths(task.prompt_dir) is not None
    out_dir = task.prepare(force=args.force)  # prints the split sizes when it builds them
    if cached:
        print(f"[alignlab] {args.task} (cached): {describe(out_dir)}", flush=True)
    if args.agreement:
        rep = task.scorer_agreement()
        for name, r in rep["scorers"].items():
            print(
                f"[alignlab] {name}: Pearson {r['pearson']:.3f}  Spearman {r['spearman']:.3f}  "
                f"({rep['sentences']} sentences, {r['seconds']:.2f} s)",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
