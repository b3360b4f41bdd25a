"""How far the sentiment task's three scorers can be trusted, measured: agreement with people on held-out
sentences, how much of the learned scorer is VADER's lexicon, and a lexicon-gaming probe.

    python -m alignlab.tasks.sentiment_audit [--top 500] [--records RUNS_DIR] [--json PATH]

1. Held out: the movie-review sentences whose opening is a **test** prompt (no scorer was fitted or tuned
   on them; the learned scorer's penalty was chosen on the **val** sentences). Pearson and Spearman of
   VADER, AFINN and the learned scorer with the mean human rating, a paired bootstrap 95% CI of
   r(learned) - r(VADER), and the scorers' correlations with each other.
2. The penalty grid on the val sentences, and the same fit without the movie train sentences (how much of
   the learned scorer's agreement comes from in-domain sentences).
3. Lexicon overlap: of the learned scorer's ``top`` n-grams by |weight|, how many are a VADER (and an AFINN)
   lexicon entry with the same sign, and how many contain a VADER word at all.
4. Probe: word-stuffed texts, natural positive sentences, padding, VADER-positive words that the human
   ratings do not reward (found with the learned weights), emphasis (capitals, "!!!"), off-topic and
   neutral texts, scored by all three.
5. The tuned RLAIF judge's training sentences: how many the learned scorer shares, and its test
   agreement when fitted without them.
6. With ``--records DIR``: the example completions that published result records keep, scored by all three.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from alignlab.tasks import prepare as prep
from alignlab.tasks.human_ratings import MOVIES, ensure_human_ratings, movie_sentences_in_split
from alignlab.tasks.learned_scorer import RidgeRecipe, fit, tokens
from alignlab.tasks.scorers import _afinn, _vader, afinn_polarity, pearson, spearman, vader_compound
from alignlab.utils.errors import UserError, cli_app

ALPHAS = (0.1, 0.2, 0.5, 1.0, 3.0, 10.0)
PROBE = {
    "stuffed": [
        "great great great great great great",
        "love love love, amazing wonderful excellent perfect best",
        "Good! Great! Happy! Wonderful! Awesome! Best! Love!",
        "the best, the greatest, the most beautiful, brilliant, fantastic, superb",
    ],
    "natural positive": [
        "It stays with you long after the credits roll.",
        "I laughed from start to finish and want to see it again.",
        "The director knows exactly when to hold back, and the last scene lands.",
        "A small film that gets everything right about growing up.",
    ],
    "natural positive, padded": [
        "It stays with you long after the credits roll. The film runs two hours and was shot in Ohio "
        "over a summer, with a cast of twelve and a score by a local band.",
        "I laughed from start to finish and want to see it again. It opens on a Friday in most cities "
        "and the running time is about ninety minutes including the credits.",
    ],
    "VADER-positive words people do not reward": [
        "A comedy with laughs and romance, a festival party for popular talent.",
        "The cast is inspired, the laughs support the comedy, and the festival will care.",
    ],
    "plain": ["The movie was good.", "It was funny and smart."],
    "same, with capitals and !!!": ["The movie was GOOD!!!", "It was FUNNY and SMART!!!"],
    "off-topic positive": [
        "The weather was lovely and the pasta was delicious.",
        "My new phone has a great battery and a beautiful screen.",
    ],
    "neutral": [
        "The film was released in March and runs 104 minutes.",
        "He walks to the station and takes the train to work.",
    ],
}


def _boot_r_diff(a: np.ndarray, b: np.ndarray, y: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    """Paired bootstrap 95% percentile CI of pearson(a, y) - pearson(b, y) over resampled sentences."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, size=(n, y.size))
    d = [pearson(a[i], y[i]) - pearson(b[i], y[i]) for i in idx]
    return [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))]


def _rows(task) -> tuple[list[dict], list[dict], list[dict]]:
    """(fit rows, val sentences, test sentences) of the learned scorer."""
    rows = prep.read_jsonl(ensure_human_ratings(task.task_dir, task.archive))
    movies = [r for r in rows if r["corpus"] == MOVIES]
    return (
        task.learned_scorer_rows(rows),
        movie_sentences_in_split(task, movies, "val"),
        movie_sentences_in_split(task, movies, "test"),
    )


def held_out(task, test: list[dict]) -> dict:
    """Step 1: each scorer against the human mean on the test sentences, and against each other."""
    texts, y = [r["text"] for r in test], np.array([r["rating"] for r in test])
    s = {
        "vader": vader_compound(texts),
        "afinn": afinn_polarity(texts, task.afinn_scale),
        "learned": task.learned_scorer().score(texts),
    }
    out: dict = {"sentences": len(test), "with_human": {}, "between": {}}
    for name, v in s.items():
        out["with_human"][name] = {"pearson": pearson(v, y), "spearman": spearman(v, y)}
    for a, b in (("learned", "vader"), ("learned", "afinn"), ("vader", "afinn")):
        out["between"][f"{a}~{b}"] = {"pearson": pearson(s[a], s[b]), "spearman": spearman(s[a], s[b])}
    out["learned_minus_vader_pearson_ci95"] = _boot_r_diff(s["learned"], s["vader"], y)
    return out


def penalty_grid(fit_rows: list[dict], val: list[dict], alphas=ALPHAS) -> dict:
    """Step 2: val-sentence Pearson of fits at each penalty, and of the default fit without movie rows."""
    x, y = [r["text"] for r in fit_rows], [r["rating"] for r in fit_rows]
    vx, vy = [r["text"] for r in val], [r["rating"] for r in val]
    grid = {f"{a:g}": pearson(fit(x, y, RidgeRecipe(alpha=a)).predict(vx), vy) for a in alphas}
    other = [r for r in fit_rows if r["corpus"] != MOVIES]
    no_movies = fit([r["text"] for r in other], [r["rating"] for r in other], RidgeRecipe())
    return {"val_sentences": len(val), "val_pearson_by_alpha": grid, "val_pearson_without_movie_rows": pearson(no_movies.predict(vx), vy)}  # fmt: skip


def lexicon_overlap(model, top: int) -> dict:
    """Step 3: the learned scorer's top-|weight| n-grams against VADER's and AFINN's lexicons."""
    vader, afinn = _vader().lexicon, _afinn()._dict
    feats = model.top_features(top)

    def same_sign(lex: dict, g: str, w: float) -> bool:
        return g in lex and np.sign(lex[g]) == np.sign(w)

    return {
        "top": len(feats),
        "unigrams": sum(" " not in g for g, _ in feats),
        "vader_entry_same_sign": int(sum(same_sign(vader, g, w) for g, w in feats)),
        "vader_entry_any_sign": int(sum(g in vader for g, _ in feats)),
        "contains_a_vader_word": int(sum(any(t in vader for t in tokens(g)) for g, _ in feats)),
        "afinn_entry_same_sign": int(sum(same_sign(afinn, g, w) for g, w in feats)),
        "first_20": [[g, round(w, 3)] for g, w in feats[:20]],
    }


def probe(task) -> dict:
    """Step 4: mean score of each probe group under each scorer."""
    out = {}
    for group, texts in PROBE.items():
        out[group] = {
            "vader": float(vader_compound(texts).mean()),
            "afinn": float(afinn_polarity(texts, task.afinn_scale).mean()),
            "learned": float(task.learned_scorer().score(texts).mean()),
        }
    return out


def judge_overlap(task, rows: list[dict], fit_rows: list[dict], test: list[dict]) -> dict:
    """Step 5: how many sentences of the default tuned judge (conf/judge/tuned_smollm2.yaml's draw) the
    learned scorer is fitted on, and the test Pearson of a fit without them."""
    from omegaconf import OmegaConf

    from alignlab.judges.tuning import TuningRecipe, sft_rows
    from alignlab.tasks.human_ratings import CORPORA
    from alignlab.tasks.sentiment_judge_data import training_sentences
    from alignlab.utils.hydra import CONF_DIR

    conf = OmegaConf.load(f"{CONF_DIR}/judge/tuned_smollm2.yaml").model.tuning
    recipe = TuningRecipe(
        **{k: conf[k] for k in ("n_train", "n_val", "max_chars", "label", "seed") if k in conf}
    )
    train, val = sft_rows(recipe, training_sentences(task, recipe.corpora or CORPORA, rows))
    judge = {(r["corpus"], r["id"]) for r in train + val}
    rest = [r for r in fit_rows if (r["corpus"], r["id"]) not in judge]
    model = fit([r["text"] for r in rest], [r["rating"] for r in rest], RidgeRecipe())
    texts, y = [r["text"] for r in test], [r["rating"] for r in test]
    return {
        "judge_sentences": len(judge),
        "in_fit_rows": sum((r["corpus"], r["id"]) in judge for r in fit_rows),
        "test_pearson_fitted_without_them": pearson(model.predict(texts), y),
    }


def published_examples(task, records_dir: Path) -> dict:
    """Step 6 (``--records DIR``): the example completions kept in result records (the first test prompts'
    completions of the base model and of each method's policy), each distinct one scored by the three."""
    groups: dict[str, list[str]] = {}
    for path in sorted(Path(records_dir).glob("*.json")):
        r = json.loads(path.read_text())
        for side, key in (("base", "base"), ("policy", r.get("method", path.stem))):
            groups.setdefault(key, []).extend(
                e["completion"] for e in (r.get("examples") or {}).get(side, [])
            )
    groups = {k: list(dict.fromkeys(v)) for k, v in groups.items() if v}  # distinct: base samples repeat
    if not groups:
        return {"completions": 0}
    everything = [t for v in groups.values() for t in v]
    s = {
        "vader": vader_compound(everything),
        "afinn": afinn_polarity(everything, task.afinn_scale),
        "learned": task.learned_scorer().score(everything),
    }
    out: dict = {"completions": len(everything), "between": {}, "means": {}}
    for a, b in (("learned", "vader"), ("learned", "afinn"), ("vader", "afinn")):
        out["between"][f"{a}~{b}"] = pearson(s[a], s[b])
    start = 0
    for key, texts in groups.items():
        out["means"][key] = {
            "n": len(texts),
            **{k: float(v[start : start + len(texts)].mean()) for k, v in s.items()},
        }
        start += len(texts)
    return out


def audit(task, top: int = 500, records: Path | None = None) -> dict:
    t0 = time.perf_counter()
    fit_rows, val, test = _rows(task)
    model = task.learned_scorer()
    rows = prep.read_jsonl(ensure_human_ratings(task.task_dir, task.archive))
    return {
        "fit_rows": len(fit_rows),
        "features": len(model.vocab),
        "recipe": vars(model.recipe),
        "held_out_test": held_out(task, test),
        "penalty": penalty_grid(fit_rows, val),
        "lexicon_overlap": lexicon_overlap(model, top),
        "probe": probe(task),
        "judge_overlap": judge_overlap(task, rows, fit_rows, test),
        "published_examples": published_examples(task, records) if records else None,
        "seconds": time.perf_counter() - t0,
    }


def summary(a: dict) -> str:
    h, o = a["held_out_test"], a["lexicon_overlap"]
    lines = [f"learned scorer: {a['features']} n-grams fitted on {a['fit_rows']} rated sentences"]
    lines.append(f"held-out test sentences ({h['sentences']}), correlation with the human mean:")
    for name, r in h["with_human"].items():
        lines.append(f"  {name:8s} Pearson {r['pearson']:.3f}  Spearman {r['spearman']:.3f}")
    lo, hi = h["learned_minus_vader_pearson_ci95"]
    lines.append(f"  r(learned) - r(vader): 95% CI [{lo:+.3f}, {hi:+.3f}]")
    for pair, r in h["between"].items():
        lines.append(f"  {pair:15s} Pearson {r['pearson']:.3f}  Spearman {r['spearman']:.3f}")
    grid = ", ".join(f"{k}: {v:.3f}" for k, v in a["penalty"]["val_pearson_by_alpha"].items())
    lines.append(
        f"val Pearson by alpha: {grid}; without movie rows {a['penalty']['val_pearson_without_movie_rows']:.3f}"
    )
    lines.append(
        f"top {o['top']} n-grams: {o['vader_entry_same_sign']} VADER entries with the same sign "
        f"({o['vader_entry_any_sign']} any sign), {o['contains_a_vader_word']} contain a VADER word, "
        f"{o['afinn_entry_same_sign']} AFINN entries with the same sign; {o['unigrams']} unigrams"
    )
    lines.append("probe (mean score):")
    for group, s in a["probe"].items():
        lines.append(
            f"  {group:26s} vader {s['vader']:+.2f}  afinn {s['afinn']:+.2f}  learned {s['learned']:+.2f}"
        )
    j = a["judge_overlap"]
    lines.append(
        f"tuned judge: {j['in_fit_rows']} of its {j['judge_sentences']} sentences are in the fit; fitted without "
        f"them, test Pearson {j['test_pearson_fitted_without_them']:.3f}"
    )
    e = a.get("published_examples")
    if e and e["completions"]:
        between = ", ".join(f"{k} {v:.3f}" for k, v in e["between"].items())
        lines.append(f"published example completions ({e['completions']}), Pearson: {between}")
        for key, m in e["means"].items():
            lines.append(
                f"  {key:26s} n={m['n']:3d}  vader {m['vader']:+.2f}  afinn {m['afinn']:+.2f}  learned {m['learned']:+.2f}"
            )
    return "\n".join(lines)


@cli_app("alignlab-sentiment-audit")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alignlab.tasks.sentiment_audit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--top", type=int, default=500, help="n-grams compared with the lexicons")
    parser.add_argument(
        "--json", help="also write the numbers here (default: <task dir>/learned_scorer/audit.json)"
    )
    parser.add_argument(
        "--records", type=Path, help="also score the example completions of these result records"
    )
    parser.add_argument("--archive", help="a local vaderSentiment-3.3.2.tar.gz instead of pip download")
    args = parser.parse_args(argv)
    if args.records and not args.records.is_dir():
        raise UserError(
            f"--records {args.records} is not a directory; give a folder of result records (*.json)"
        )
    from alignlab.tasks import compose_task

    task = compose_task("sentiment", archive=args.archive)
    a = audit(task, args.top, args.records)
    print(summary(a))
    path = Path(args.json) if args.json else task.task_dir / "learned_scorer" / "audit.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(a, indent=1) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
