"""Regenerate the small synthetic data shipped for fast tests (src/alignlab/resources/*.jsonl).

python scripts/make_toy_data.py
"""

import itertools
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "alignlab" / "resources"
OPENINGS = [
    "The movie",
    "This film",
    "The plot",
    "The acting",
    "The story",
    "The ending",
    "The cast",
    "The script",
]
VERBS = ["was", "felt", "seemed", "is"]
GOOD = ["great and moving.", "wonderful, a joy.", "brilliant fun.", "lovely and warm.", "superb work."]
BAD = ["awful and dull.", "terrible, a bore.", "boring mess.", "bad and cold.", "weak work."]


def main() -> None:
    rng = random.Random(0)
    prompts = [f"{o} {v}" for o, v in itertools.product(OPENINGS, VERBS)]
    sft, pref = [], []
    for p in prompts:
        for _ in range(2):
            sft.append({"prompt": p, "completion": " " + rng.choice(GOOD)})
            pref.append({"prompt": p, "chosen": " " + rng.choice(GOOD), "rejected": " " + rng.choice(BAD)})
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in [
        ("sft_toy.jsonl", sft),
        ("pref_toy.jsonl", pref),
        ("prompts_toy.jsonl", [{"prompt": p} for p in prompts]),
    ]:
        with open(OUT / name, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(OUT / name, len(rows))


if __name__ == "__main__":
    main()
