"""A judge LLM tuned on human judgements: a small model taught to answer the judge's yes/no question about
one text the way human raters did. The data is the task's (``Task.judge_tuning_data``; the task's
``judge_data`` setting names the task that supplies it); this module only turns it into a judge.

The stage (``ensure_tuned_judge``), content-addressed and cached like the bundled model
(``<cache>/models/tuned_judge/<key>``, ``DONE.json`` when complete):

1. The task's rated texts, from the sources the recipe names (``corpora``; null: all the task offers).
   Texts longer than ``max_chars`` are left out; ``n_train`` of them are drawn (seeded). What the task
   keeps out (e.g. texts behind its val/test prompts) never reaches the judge.
2. Each row asks the judge's own pointwise question about the text (rendered exactly as ``LocalJudge``
   renders it, plain text ending in ``Answer:``) and answers `` yes`` or `` no``: the vote of **one rater
   drawn at random** among those who did not answer 0 (``label: rater``), so over the data the answer's
   probability follows the share of raters who voted yes (a soft label through plain SFT), or the sign
   of the mean rating (``label: mean``).
3. ``alignlab.train`` (SFT, LoRA on the top ``lora_layers`` layers, ``precision``) tunes it; the adapter is
   the artifact. ``TunedJudgeSpec`` is the ``ModelSpec`` a judge config names: it runs the stage on the
   first load and merges the adapter into the weights for judging.

The judge never reads a task's gold reward: only the human judgements the task hands over.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from alignlab.judges.templates import render_plain
from alignlab.models.loader import ModelSpec
from alignlab.utils.io import write_json, write_jsonl

LLAMA_PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
LLAMA_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class TuningRecipe:
    """How the judge is tuned (every field is part of the artifact's key)."""

    pointwise: str = "Text: {text}\n\n{question} Answer yes or no."
    """The judge's pointwise user message (must match the judge template's ``pointwise``)."""
    question: str = "Is this text positive?"
    """The yes/no question (must match the judge template's ``question``: the task's)."""
    answers: tuple[str, str] = (" yes", " no")
    """The completions taught for a positive / negative vote."""
    corpora: tuple[str, ...] | None = None
    """The task's sources to draw from (``JudgeData.sources``); None: all it offers. Resolved (to the
    task's list) before the key is made."""
    n_train: int = 1600
    """Sentences drawn for training."""
    n_val: int = 64
    """Held-out sentences for the validation loss (logged once, at the end)."""
    max_chars: int = 200
    """Longer sentences are left out (policy completions are about 100 characters)."""
    label: str = "rater"
    """``rater``: one random non-neutral rater's vote per sentence; ``mean``: the sign of the mean rating."""
    steps: int = 100
    batch_size: int = 16
    lr: float = 5.0e-4
    lora_r: int = 16
    lora_layers: int = 8
    """LoRA on the top this many transformer layers (backward passes stop there); 0 = every layer."""
    precision: str = "auto"
    """Lightning precision of the tuning run; ``auto``: bf16-mixed on CUDA, else what ``trainer=cpu`` picks
    (bf16-mixed where the CPU computes bf16 natively, else 32-true). Resolved before the key is made."""
    seed: int = 0

    def __post_init__(self):
        self.answers = tuple(self.answers)
        self.corpora = None if self.corpora is None else tuple(self.corpora)
        if self.label not in ("rater", "mean"):
            raise ValueError(f"tuning.label={self.label!r}: choose rater or mean")
        if self.n_train < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("tuning.n_train, tuning.steps and tuning.batch_size must be >= 1")


def judge_prompt(recipe: TuningRecipe, text: str) -> str:
    """The text the judge continues for ``text``: what ``LocalJudge.render`` gives with the template's
    ``system: null``, ``use_chat_template: false`` and ``pointwise_includes_prompt: false``."""
    return render_plain(
        [{"role": "user", "content": recipe.pointwise.format(text=text, question=recipe.question)}]
    )


def vote(row: dict, how: str, rng: random.Random) -> int | None:
    """+1 / -1 for a sentence row, None when it gives no vote (all raters neutral, mean exactly 0)."""
    votes = [v for v in (row.get("ratings") or []) if v != 0]
    if how == "rater" and votes:
        return 1 if rng.choice(votes) > 0 else -1
    if how == "rater" and row.get("ratings"):
        return None
    return None if row["rating"] == 0 else (1 if row["rating"] > 0 else -1)


def sft_rows(recipe: TuningRecipe, sentences: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train rows, validation rows) of ``{prompt, completion, corpus, id}``, drawn with ``recipe.seed`` from
    ``sentences`` (``JudgeData.rows``) no longer than ``recipe.max_chars``."""
    sentences = [r for r in sentences if len(r["text"]) <= recipe.max_chars]
    rng = random.Random(recipe.seed)
    order = list(range(len(sentences)))
    rng.shuffle(order)
    out: list[dict] = []
    for i in order:
        r = sentences[i]
        v = vote(r, recipe.label, rng)
        if v is None:
            continue
        answer = recipe.answers[0] if v > 0 else recipe.answers[1]
        out.append(
            {
                "prompt": judge_prompt(recipe, r["text"]),
                "completion": answer,
                "corpus": r["corpus"],
                "id": r["id"],
            }
        )
        if len(out) == recipe.n_train + recipe.n_val:
            break
    return out[recipe.n_val :], out[: recipe.n_val]


def lora_targets(n_layers: int, top: int) -> list[str] | None:
    """LoRA target names for the top ``top`` layers of a Llama-style model (None: peft's defaults, all)."""
    if top <= 0 or top >= n_layers:
        return None
    return [f"layers.{i}.{m}" for i in range(n_layers - top, n_layers) for m in (*LLAMA_PROJ, *LLAMA_MLP)]


def train_overrides(
    recipe: TuningRecipe, base: ModelSpec, train: Path, val: Path, run_dir: Path
) -> list[str]:
    """The ``alignlab.train`` command line (SFT with LoRA) that tunes the judge."""
    targets = None
    if recipe.lora_layers > 0:
        from transformers import AutoConfig

        n_layers = AutoConfig.from_pretrained(base.local_path()).num_hidden_layers
        targets = lora_targets(n_layers, recipe.lora_layers)
    ov = [
        f"model.source={base.source}",
        f"model.name_or_path={json.dumps(base.name_or_path)}",
        f"model.cache_dir={json.dumps(base.cache_dir)}",
        f"model.dtype={base.dtype}",
        "peft=lora",
        f"peft.r={recipe.lora_r}",
        f"peft.alpha={2 * recipe.lora_r}",
        "algo=sft",
        f"algo.optimizer.lr={recipe.lr}",
        f"algo.scheduler.warmup_steps={max(1, recipe.steps // 10)}",
        "data=sft",
        f"data.train_path={json.dumps(str(train))}",
        f"data.val_path={json.dumps(str(val))}",
        "data.use_chat_template=false",
        f"data.batch_size={recipe.batch_size}",
        "data.max_length=192",
        "data.max_prompt_length=160",
        "trainer=cpu" if not _cuda() else "trainer=default",
        f"trainer.precision={recipe.precision}",
        f"trainer.max_steps={recipe.steps}",
        f"trainer.val_check_interval={recipe.steps}",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "callbacks=none",
        f"seed={recipe.seed}",
        f"hydra.run.dir={json.dumps(str(run_dir))}",
    ]
    if targets is not None:
        ov.append("peft.target_modules=[" + ",".join(targets) + "]")
    return ov


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_precision(precision: str) -> str:
    """``auto`` -> bf16-mixed on CUDA, else the CPU's precision (``alignlab.utils.precision``); a CPU
    without native bf16 runs bf16 autocast tens of times slower than fp32 (measured: 40x on a matmul)."""
    if precision != "auto":
        return precision
    if _cuda():
        return "bf16-mixed"
    from alignlab.utils.precision import cpu_precision

    return cpu_precision()


def data_task(task: Any, cache_dir: str | None = None):
    """The task whose judge tuning data is learned (a conf/task name or task YAML path, a task config, or a
    ``Task``); None (the run's task sets no ``judge_data``) is one line with the fix."""
    from alignlab.tasks import build_task, compose_task
    from alignlab.utils.config import ConfigError

    if task is None:
        raise ConfigError(
            "judge.model.task is null: the run's task has no judge tuning data (its judge_data setting), so "
            "a tuned judge has nothing to learn from; label with another conf/judge option (judge=...)"
        )
    return compose_task(task, cache_dir=cache_dir) if isinstance(task, str) else build_task(task)


def judge_data(task, recipe: TuningRecipe):
    """``task.judge_tuning_data(recipe.corpora)``; a task without any is one line naming it."""
    from alignlab.utils.config import ConfigError

    data = task.judge_tuning_data(recipe.corpora)
    if data is None:
        raise ConfigError(
            f"task {task.name!r} has no judge tuning data (Task.judge_tuning_data); a tuned judge cannot "
            "learn from it: choose another labeller (judge=...) or implement judge_tuning_data (docs/tasks.md)"
        )
    return data


def resolve_recipe(recipe: TuningRecipe, data) -> TuningRecipe:
    """The recipe as it runs: ``precision: auto`` resolved, ``corpora`` the task's sources (the key and the
    judge's identity name what ran)."""
    return replace(recipe, precision=resolve_precision(recipe.precision), corpora=tuple(data.sources))


def ensure_tuned_judge(recipe: TuningRecipe, base: ModelSpec, task: Any) -> Path:
    """The tuned judge's adapter directory: trained once per (recipe, base model, task data), then cached.
    ``task``: the task whose ``judge_tuning_data`` it learns from (see ``data_task``)."""
    from alignlab.artifacts import Store
    from alignlab.models.bundled import default_cache_dir

    root = Path(base.cache_dir).expanduser() if base.cache_dir else default_cache_dir()
    task = data_task(task, str(root))
    data = judge_data(task, recipe)
    recipe = resolve_recipe(recipe, data)
    spec = {"recipe": asdict(recipe), "base": base.identity(), **data.files()}

    def build(out: Path) -> dict:
        train, val = sft_rows(recipe, data.rows())
        write_jsonl(out / "train.jsonl", train)
        write_jsonl(out / "val.jsonl", val)
        cmd = [
            sys.executable,
            "-m",
            "alignlab.train",
            *train_overrides(recipe, base, out / "train.jsonl", out / "val.jsonl", out / "run"),
        ]
        print(
            f"[alignlab] tuning the judge on {len(train)} human-rated texts of task {task.name!r} "
            f"({recipe.steps} steps) ...",
            flush=True,
        )
        env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        (out / "train.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(
                f"tuning the judge failed (exit {proc.returncode}); see {out / 'train.log'}:\n{proc.stderr[-2000:]}"
            )
        metrics = json.loads((out / "run" / "metrics.json").read_text())
        counts: dict[str, int] = {}
        for r in train:
            counts[r["corpus"]] = counts.get(r["corpus"], 0) + 1
        info = {"train_rows": len(train), "val_rows": len(val), "by_corpus": counts, "metrics": metrics}
        write_json(out / "tuning.json", info)
        return info

    path, _rec, _cached = Store(root / "models").run("tuned_judge", spec, build)
    return path / "run" / "policy"


@dataclass
class TunedJudgeSpec(ModelSpec):
    """A ``ModelSpec`` for the tuned judge: ``base`` plus the adapter ``ensure_tuned_judge`` trains (on the
    first load), merged into the weights."""

    source: str = "hf"
    base: dict = field(default_factory=lambda: {"source": "smollm2_135m"})
    """The model tuned (fields of ``ModelSpec``)."""
    tuning: dict = field(default_factory=dict)
    """``TuningRecipe`` fields."""
    task: Any = None
    """The task whose ``judge_tuning_data`` the judge learns from (a conf/task name or config; the judge
    config reads the run's task's ``judge_data``); None: the run's task has none, and the judge refuses."""

    def base_spec(self) -> ModelSpec:
        return ModelSpec(**{"cache_dir": self.cache_dir, **dict(self.base)})

    def recipe(self) -> TuningRecipe:
        """The recipe as it runs (``resolve_recipe``): two machines that tune differently, or two tasks'
        data, name different judges (the answer cache and the artifact are keyed on it). Builds the data
        task (no data is read)."""
        recipe = TuningRecipe(**dict(self.tuning))
        return resolve_recipe(recipe, judge_data(data_task(self.task, self.cache_dir), recipe))

    def local_path(self) -> str:
        return str(ensure_tuned_judge(TuningRecipe(**dict(self.tuning)), self.base_spec(), self.task))

    def identity(self) -> str:
        from alignlab.judges.templates import text_hash

        recipe = asdict(self.recipe())  # a null task is refused here
        task = (
            self.task
            if isinstance(self.task, str)
            else {k: v for k, v in dict(self.task).items() if k != "cache_dir"}
        )
        return text_hash("tuned_judge", self.base_spec().identity(), recipe, self.dtype, task)

    def load(self):
        self.name_or_path = self.local_path()
        lm = super().load()
        if hasattr(lm.model, "merge_and_unload"):
            lm.model = lm.model.merge_and_unload()
        return lm
