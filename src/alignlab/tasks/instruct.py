"""The instruction-following task: requests with 1-3 verifiable instructions (IFEval-style), built offline.

Each prompt is a request made of a template and a topic ("Describe {topic} to a friend." x "the ocean")
followed by 1-3 constraints stated in plain English ("Answer with at most 15 words. Do not use any
commas."); ``alignlab.tasks.constraints`` defines every constraint and its exact checker. The prompts are
built deterministically from a data seed (``seed``, not the run's): 8 templates x 32 topics = 256
(template, topic) combinations, ``variants`` constraint draws each. The splits are disjoint by
combination: a (template, topic) pair of the test split never appears in training.

The first constraint of each prompt asks for something the response must contain
(``constraints.PRODUCTIVE``: at least N words, include a word, exactly N sentences, a bullet list, start
with a word), so no fixed short reply ("OK.") satisfies every prompt; the others are drawn from all kinds,
never two of a kind and never a contradictory pair (``constraints.CONFLICTS``).

Gold reward: the fraction of the prompt's constraints the completion satisfies (IFEval's
instruction-level accuracy). Second scorer: 1 when the completion satisfies all of them, else 0 (IFEval's
prompt-level strict accuracy): stricter, and it shows when a policy trades one instruction for another.

The scorers read the constraints back out of the prompt string (``constraints.parse_constraints``): every
constraint sentence has one fixed wording and an inverse pattern, so a prompt scores the same whatever data
seed or process made it, and a hand-written prompt that uses those sentences is scored too. A test checks
that every built prompt parses back to the constraints it was built from.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alignlab.tasks import constraints as C
from alignlab.tasks.base import Task
from alignlab.utils.config import ConfigError
from alignlab.utils.errors import MissingPathError, UserError, cli_app
from alignlab.utils.hashing import stable_hash
from alignlab.utils.io import write_json, write_jsonl

SPLITS = ("train", "val", "test")
RUBRIC = (
    "Both responses answer the same request, which ends with explicit instructions about length, wording "
    "or format. Prefer the response that follows more of those instructions exactly. Judge only whether "
    "the instructions are followed, not style, facts or helpfulness."
)
QUESTION = "Does the response follow every instruction in the request?"
TEMPLATES = (
    "Write a short paragraph about {topic}.",
    "Describe {topic} to a friend.",
    "Tell me something interesting about {topic}.",
    "Write a short note about {topic}.",
    "Give some advice about {topic}.",
    "Share a few facts about {topic}.",
    "Write a short story that involves {topic}.",
    "Explain what you like about {topic}.",
)
# (topic as written in the request, its key word: what an "avoid" constraint forbids)
TOPICS = (
    ("the ocean", "ocean"),
    ("coffee", "coffee"),
    ("a city park", "park"),
    ("winter", "winter"),
    ("riding a bicycle", "bicycle"),
    ("reading books", "book"),
    ("the moon", "moon"),
    ("a vegetable garden", "garden"),
    ("the rain", "rain"),
    ("trains", "train"),
    ("dogs", "dog"),
    ("learning music", "music"),
    ("volcanoes", "volcano"),
    ("baking bread", "bread"),
    ("mountains", "mountain"),
    ("chess", "chess"),
    ("honey bees", "bee"),
    ("recycling", "recycling"),
    ("friendship", "friendship"),
    ("the night sky", "sky"),
    ("a summer holiday", "holiday"),
    ("cooking pasta", "pasta"),
    ("the desert", "desert"),
    ("a small village", "village"),
    ("robots", "robot"),
    ("the forest", "forest"),
    ("cats", "cat"),
    ("a football match", "football"),
    ("the river", "river"),
    ("a birthday party", "birthday"),
    ("a museum", "museum"),
    ("a lighthouse", "lighthouse"),
)
KEYWORDS = (
    "bright",
    "simple",
    "together",
    "quiet",
    "history",
    "future",
    "color",
    "journey",
    "gentle",
    "dream",
)
START_WORDS = ("Today", "Yes", "Imagine", "Honestly", "Sometimes", "Once")
ARGS = {
    "min_words": (15, 20, 25),
    "max_words": (10, 15, 20),
    "n_sentences": (2, 3),
    "bullets": (2, 3, 4),
    "end_punct": ("!", "?"),
    "include_keyword": KEYWORDS,
    "starts_with": START_WORDS,
}


def draw_constraints(
    rng: random.Random, keyword: str, kinds: Sequence[str], n: int
) -> tuple[C.Constraint, ...]:
    """``n`` compatible constraints (fewer if the kinds run out): a productive one first, then any."""
    productive = [k for k in kinds if k in C.PRODUCTIVE]
    chosen = [rng.choice(productive)]
    while len(chosen) < n:
        left = [
            k for k in kinds if k not in chosen and all(frozenset((k, c)) not in C.CONFLICTS for c in chosen)
        ]
        if not left:
            break
        chosen.append(rng.choice(left))
    out = []
    for kind in chosen:
        arg = keyword if kind == "avoid_keyword" else rng.choice(ARGS[kind]) if kind in ARGS else None
        out.append(C.Constraint(kind, arg))
    return tuple(out)


def build_rows(
    seed: int,
    variants: int,
    min_constraints: int,
    max_constraints: int,
    kinds: Sequence[str],
    val_fraction: float,
    test_fraction: float,
) -> dict[str, list[dict]]:
    """The prompt rows of each split. Deterministic in its arguments; splits disjoint by (template, topic)."""
    combos = [(t, c) for t in range(len(TEMPLATES)) for c in range(len(TOPICS))]
    random.Random(f"{seed}:split").shuffle(combos)
    n_test = max(1, round(test_fraction * len(combos)))
    n_val = max(1, round(val_fraction * len(combos)))
    parts = {
        "test": combos[:n_test],
        "val": combos[n_test : n_test + n_val],
        "train": combos[n_test + n_val :],
    }
    out: dict[str, list[dict]] = {}
    for split in SPLITS:
        rows, seen = [], set()
        for t, c in sorted(parts[split]):
            topic, keyword = TOPICS[c]
            for v in range(variants):
                rng = random.Random(f"{seed}:{t}:{c}:{v}")
                n = rng.randint(min_constraints, max_constraints)
                cons = draw_constraints(rng, keyword, kinds, n)
                prompt = " ".join([TEMPLATES[t].format(topic=topic), *(k.text for k in cons)])
                if prompt in seen:
                    continue
                seen.add(prompt)
                rows.append(
                    {
                        "prompt": prompt,
                        "template": t,
                        "topic": topic,
                        "constraints": [k.to_dict() for k in cons],
                    }
                )
        random.Random(f"{seed}:{split}:order").shuffle(rows)
        out[split] = rows
    return out


class InstructTask(Task):
    """Requests with 1-3 verifiable instructions; gold reward = fraction of the instructions followed."""

    splits = SPLITS

    def __init__(
        self,
        name: str = "instruct",
        rubric: str = RUBRIC,
        question: str = QUESTION,
        use_chat_template: bool = True,
        max_prompt_tokens: int = 96,
        max_new_tokens: int = 48,
        labeller: str = "smollm2_135m",
        tags: Sequence[str] = ("instruct",),
        seed: int = 0,
        variants: int = 4,
        min_constraints: int = 1,
        max_constraints: int = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        kinds: Sequence[str] | None = None,
        cache_dir: str | None = None,
    ):
        """
        Args:
            name: the task's name (reports, tags, cache directory).
            rubric: what a pairwise judge is asked to prefer.
            question: the yes/no question a pointwise judge is asked about each response.
            use_chat_template: feed the requests through the model's chat template (a chat model answers).
            max_prompt_tokens: prompt length budget in tokens, chat template included.
            max_new_tokens: completion length in tokens (enough for the longest instruction, 25 words).
            labeller: the conf/judge config that labels pairs for RLAIF on this task.
            tags: run tags (wandb) of this task.
            seed: the data seed: prompts and splits (the data set's identity, not the run's seed).
            variants: constraint draws per (template, topic) combination.
            min_constraints: fewest constraints per prompt (>= 1).
            max_constraints: most constraints per prompt.
            val_fraction: share of the (template, topic) combinations in the validation split.
            test_fraction: share of the combinations in the test split.
            kinds: the constraint kinds to draw from (``constraints.KINDS``); null = all.
            cache_dir: cache root of the prompt files; default ``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab``.
        """
        super().__init__()
        kinds = list(C.KINDS if kinds is None else kinds)
        unknown = sorted(set(kinds) - set(C.KINDS))
        if unknown:
            raise ConfigError(
                f"task.kinds: unknown constraint kind(s) {unknown}; choose from {list(C.KINDS)}"
            )
        if not set(kinds) & set(C.PRODUCTIVE):
            raise ConfigError(f"task.kinds={kinds} needs at least one of {list(C.PRODUCTIVE)}")
        if not 1 <= min_constraints <= max_constraints:
            raise ConfigError(
                f"task.min_constraints={min_constraints}, task.max_constraints={max_constraints}: "
                "need 1 <= min_constraints <= max_constraints"
            )
        if variants < 1:
            raise ConfigError(f"task.variants={variants} must be >= 1")
        if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
            raise ConfigError(
                f"task.val_fraction={val_fraction}, task.test_fraction={test_fraction}: each must be > 0 and "
                "their sum < 1"
            )
        self.name = name
        self.rubric = rubric
        self.question = question
        self.use_chat_template = use_chat_template
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.max_new_tokens = int(max_new_tokens)
        self.labeller = labeller
        self.tags = tuple(tags)
        self.params = {
            "seed": seed,
            "variants": variants,
            "min_constraints": min_constraints,
            "max_constraints": max_constraints,
            "kinds": kinds,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        }
        self.rows = build_rows(**self.params)
        if cache_dir is None:
            from alignlab.models.bundled import default_cache_dir

            cache_dir = str(default_cache_dir())
        self.task_dir = Path(cache_dir).expanduser() / "tasks" / self.name
        self._spec: dict[str, tuple[C.Constraint, ...]] = {}

    # -- prompts -----------------------------------------------------------------------------------------
    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ConfigError(f"task {self.name!r} has splits {', '.join(self.splits)}; got split={split!r}")

    def prompts(self, split: str) -> list[str]:
        self._check_split(split)
        return [r["prompt"] for r in self.rows[split]]

    @property
    def prompt_dir(self) -> Path:
        """Where this parameter set's split files live (a hash of the parameters and the contents names it)."""
        digest = stable_hash([self.params, TEMPLATES, TOPICS, ARGS], 10, ensure_ascii=False)
        return self.task_dir / f"prompts-{digest}"

    def prompt_file(self, split: str) -> str:
        """The JSONL of ``split`` (``prompt``, ``template``, ``topic``, ``constraints`` per row), written once."""
        self._check_split(split)
        out = self.prompt_dir
        if not (out / "manifest.json").exists():
            for s in self.splits:
                write_jsonl(out / f"{s}.jsonl", self.rows[s])
            sizes = {s: len(self.rows[s]) for s in self.splits}
            write_json(out / "manifest.json", {"params": self.params, "sizes": sizes})  # written last
        return str(out / f"{split}.jsonl")

    # -- rewards -----------------------------------------------------------------------------------------
    def constraints_of(self, prompt: str) -> tuple[C.Constraint, ...]:
        """The constraints stated in ``prompt`` (read back from its text; cached)."""
        if prompt not in self._spec:
            found = C.parse_constraints(prompt)
            if not found:
                raise ValueError(
                    f"task {self.name!r}: the prompt {prompt[:80]!r} states no instruction this task can "
                    "check; score only this task's prompts (task.prompts(split))"
                )
            self._spec[prompt] = found
        return self._spec[prompt]

    def _passed(self, prompts: Sequence[str], completions: Sequence[str]) -> list[list[bool]]:
        if isinstance(prompts, str) or isinstance(completions, str):
            raise TypeError("gold_scores takes sequences of prompts and completions, not single strings")
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [C.satisfied(self.constraints_of(p), c) for p, c in zip(prompts, completions)]

    def gold_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Fraction of each prompt's constraints its completion satisfies, shape (N,), in [0, 1]."""
        return np.array([sum(p) / len(p) for p in self._passed(prompts, completions)], dtype=np.float64)

    def second_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """1.0 when the completion satisfies every constraint of its prompt, else 0.0, shape (N,)."""
        return np.array([float(all(p)) for p in self._passed(prompts, completions)], dtype=np.float64)

    def pass_rates(self, prompts: Sequence[str], completions: Sequence[str]) -> dict[str, dict]:
        """Per constraint kind: how many completions were asked it (``n``) and the share that passed."""
        counts: dict[str, list[int]] = {}
        for p, c in zip(prompts, completions):
            for con, ok in zip(self.constraints_of(p), C.satisfied(self.constraints_of(p), c)):
                counts.setdefault(con.kind, [0, 0])
                counts[con.kind][0] += 1
                counts[con.kind][1] += int(ok)
        return {k: {"n": n, "pass_rate": ok / n} for k, (n, ok) in sorted(counts.items())}


@cli_app("python -m alignlab.tasks.instruct")
def main(argv: Sequence[str] | None = None) -> None:
    """Mean gold reward, its spread and per-constraint pass rates of an evaluation's ``samples.jsonl``
    (rows with ``prompt`` and ``completion``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m alignlab.tasks.instruct", description=main.__doc__)
    ap.add_argument("samples", help="an evaluation's samples.jsonl")
    path = Path(ap.parse_args(argv).samples)
    if not path.is_file():
        raise MissingPathError(f"{path}: file not found; give an evaluation's samples.jsonl")
    task = InstructTask(cache_dir=str(path.parent))  # scoring reads the prompts only: nothing is written
    prompts, completions = [], []
    # split at \n only: str.splitlines also splits at U+2028 inside a completion (utils.io.jsonl_lines)
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        row = json.loads(line) if line.strip() else None
        if row is None:
            continue
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            raise UserError(f"{path}:{i}: a row needs string fields 'prompt' and 'completion'")
        if not C.parse_constraints(row["prompt"]):
            raise UserError(f"{path}:{i}: the prompt states no instruction of task {task.name!r}")
        prompts.append(row["prompt"])
        completions.append(row["completion"])
    gold, strict = task.gold_scores(prompts, completions), task.second_scores(prompts, completions)
    q = np.quantile(gold, [0.25, 0.5, 0.75])
    print(f"{len(gold)} completions: gold {gold.mean():.3f} (sd {gold.std(ddof=1):.3f}, quartiles "
          f"{q[0]:.2f}/{q[1]:.2f}/{q[2]:.2f}), all-or-nothing {strict.mean():.3f}")  # fmt: skip
    for kind, r in task.pass_rates(prompts, completions).items():
        print(f"  {kind:16s} n={r['n']:3d}  pass {r['pass_rate']:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
