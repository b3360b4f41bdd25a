"""Direct RLAIF (d-RLAIF, Lee et al. 2023): the judge LLM itself is the reward of PPO/RLOO.

Two forms:

* ``JudgeScoreReward``: the judge rates each completion from 1 to 10; the reward is the expected score
  Σ_s s·P(s) under the score tokens' probabilities (renormalised over the ten scores), not the sampled
  number, so it is smooth and never unparseable. When "10" is two tokens ("1", "0"), P(10) =
  P("1")·P("0" | "1") and P(1) = P("1")·(1 − P("0" | "1")), read from a second forward pass.
* ``JudgeYesReward``: a pointwise judge's P(yes) ("is this text positive?"), e.g. the tuned judge
  (``judge=tuned_smollm2``), cached like its labels.
* ``JudgePairwiseReward``: the reward is P(completion ≻ reference completion) from any pairwise judge
  (local or HTTP, both orders averaged); the reference completion of a prompt comes from a JSONL file or
  is generated greedily by a reference model once and cached.

Both are cached in SQLite like the labelling judges, so repeated (prompt, completion) pairs cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from alignlab.judges.cache import JudgeCache, cache_key
from alignlab.judges.local import LocalJudge
from alignlab.judges.option import OptionJudge
from alignlab.judges.templates import JudgeTemplate, normalise, text_hash
from alignlab.rewards.base import RewardFunction

SCORES = tuple(range(1, 11))


def expected_score(score_logps: Sequence[float]) -> tuple[float, list[float]]:
    """Σ s·P(s) over s = 1..10 from unnormalised log-probabilities of the ten scores; also the P(s)."""
    if len(score_logps) != len(SCORES):
        raise ValueError(f"need {len(SCORES)} score log-probs, got {len(score_logps)}")
    probs = normalise(score_logps)
    return sum(s * p for s, p in zip(SCORES, probs)), probs


class JudgeScoreReward(RewardFunction):
    """A local LM judge's expected 1–10 score of each completion."""

    def __init__(
        self,
        model,
        template: JudgeTemplate | None = None,
        batch_size: int = 8,
        cache_path: str | None = None,
        use_chat_template: bool = True,
        max_text_chars: int = 2000,
        device: str | None = None,
    ):
        """
        Args:
            model: an ``alignlab.models.ModelSpec`` (or dict of its fields) naming the judge LM.
            template: the score question (``template.score``) and criterion (``template.rubric``).
            batch_size: completions per forward pass.
            cache_path: SQLite cache file; None: in memory only.
            use_chat_template: wrap the question in the tokenizer's chat template when it has one.
            max_text_chars: prompt and completion are cut to this many characters.
            device: where the judge runs; None: CUDA when available, else CPU.
        """
        self.judge = LocalJudge(
            model,
            template=template,
            batch_size=batch_size,
            use_chat_template=use_chat_template,
            max_text_chars=max_text_chars,
            device=device,
        )
        self.cache = JudgeCache(cache_path)
        self.batch_size = batch_size
        self.name = "judge_score"
        self.queries = 0
        """Completions scored so far (cache hits included): the judge cost reported by the pipeline."""

    def _score_token_ids(self):
        # single tokens, not texts: no special tokens (prompts get theirs in LocalJudge.next_token_logprobs)
        tok = self.judge.lm().tokenizer
        single = []
        for s in range(1, 10):
            ids = tok.encode(str(s), add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(
                    f"the judge tokenizer splits the score {s} into {ids}; use another judge model"
                )
            single.append(ids[0])
        ten = tok.encode("10", add_special_tokens=False)
        if len(ten) == 1 and ten[0] not in single:
            return single, ten[0], None
        zero = tok.encode("0", add_special_tokens=False)
        if ten == [single[0], *zero] and len(zero) == 1:
            return single, None, zero[0]
        raise ValueError(f"cannot read the score 10 from the judge tokenizer (tokens {ten})")

    def _compute(self, prompts: list[str], completions: list[str]) -> list[dict]:
        j, t = self.judge, self.judge.template
        texts = [j.render(t.score_messages(p, c, t.rubric)) for p, c in zip(prompts, completions)]
        digits, ten, zero = self._score_token_ids()
        lp = j.next_token_logprobs(texts)  # (B, V)
        out = []
        if ten is None:  # "10" = "1" "0": P("0" | "1") from a second pass
            lp0 = j.next_token_logprobs([x + "1" for x in texts])[:, zero]  # (B,)
        for b in range(len(texts)):
            row = lp[b, digits].tolist()
            if ten is not None:
                logps = [*row, lp[b, ten].item()]
            else:
                p0 = lp0[b].item()
                log_not0 = math.log(max(1e-12, -math.expm1(p0)))
                logps = [row[0] + log_not0, *row[1:], row[0] + p0]
            score, probs = expected_score(logps)
            out.append({"score": score, "probs": probs})
        return out

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        self.queries += len(prompts)
        n = self.judge.max_text_chars
        prompts, completions = [p[:n] for p in prompts], [c[:n] for c in completions]
        jid, th = self.judge.identity(), text_hash(self.judge.template.hash(), "score", n)
        keys = [cache_key(jid, th, "score", p, c) for p, c in zip(prompts, completions)]
        vals = self.cache.map(
            keys,
            lambda idx: self._compute([prompts[i] for i in idx], [completions[i] for i in idx]),
            (jid, th),
            ["score"] * len(keys),
            batch_size=self.batch_size,
        )
        return torch.tensor([v["score"] for v in vals], dtype=torch.float32)

    def set_task(self, task) -> None:
        """Give the judge the task (its rubric is what the score is about)."""
        self.judge.set_task(task)

    def to(self, device) -> JudgeScoreReward:
        self.judge.to(device)
        return self


class JudgeYesReward(RewardFunction):
    """A pointwise judge's P(yes) for each completion ("is this text positive?"): the direct-RLAIF reward
    of a yes/no judge such as ``judge=tuned_smollm2``; an invalid answer scores ``invalid_reward``."""

    def __init__(self, judge: LocalJudge, centered: bool = True, invalid_reward: float = 0.5):
        """
        Args:
            judge: a ``LocalJudge`` whose template's pointwise question is the criterion.
            centered: return 2·P(yes) − 1 (in [−1, 1]) instead of P(yes) (in [0, 1]).
            invalid_reward: P(yes) given to an invalid answer (0.5 = no information).
        """
        self.judge = judge
        self.centered = centered
        self.invalid_reward = invalid_reward
        self.invalid = 0
        self.queries = 0
        """Completions scored so far (cache hits included): the judge cost reported by the pipeline."""
        self.name = "judge_yes"

    def set_task(self, task) -> None:
        """Give the judge the task: its yes/no question, unless the judge's template has its own (the train
        app calls this with the run's task)."""
        self.judge.set_task(task, pointwise=True)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        self.queries += len(prompts)
        probs = self.judge.yes_probabilities(list(prompts), list(completions))
        self.invalid += sum(p is None for p in probs)
        out = torch.tensor([self.invalid_reward if p is None else p for p in probs], dtype=torch.float32)
        return 2 * out - 1 if self.centered else out

    def to(self, device) -> JudgeYesReward:
        self.judge.to(device)
        return self


def load_references(path: str | Path, prompt_key: str = "prompt", completion_key: str = "completion") -> dict:
    """prompt -> reference completion from a JSONL file (``chosen`` is accepted as the completion key)."""
    import json

    refs: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            comp = row.get(completion_key, row.get("chosen"))
            if prompt_key not in row or comp is None:
                raise ValueError(f"{path}:{n}: a reference row needs {prompt_key!r} and {completion_key!r}")
            refs[row[prompt_key]] = comp
    return refs


class JudgePairwiseReward(RewardFunction):
    """P(completion ≻ reference completion) from a pairwise judge; invalid verdicts score ``invalid_reward``."""

    def __init__(
        self,
        judge: OptionJudge,
        references: str | None = None,
        reference_model=None,
        max_new_tokens: int = 48,
        invalid_reward: float = 0.5,
        centered: bool = False,
        use_chat_template: bool | str = "auto",
    ):
        """
        Args:
            judge: any pairwise judge (``LocalJudge``, ``OpenAICompatibleJudge``), both orders recommended.
            references: JSONL of {prompt, completion}: the reference completion of each prompt.
            reference_model: a ``ModelSpec`` (or dict) that writes the missing references greedily, once each.
            max_new_tokens: length of generated reference completions.
            invalid_reward: reward of a completion whose comparison is invalid (0.5 = no information).
            centered: return 2·P − 1 (in [−1, 1]) instead of P (in [0, 1]).
            use_chat_template: how the reference model sees prompts (as in the data config: auto, true, false).
        """
        if references is None and reference_model is None:
            raise ValueError("reward.references (a JSONL file) or reward.reference_model is required")
        self.judge = judge
        self.refs = load_references(references) if references else {}
        self.reference_model = reference_model
        self.max_new_tokens = max_new_tokens
        self.invalid_reward = invalid_reward
        self.centered = centered
        self.use_chat_template = use_chat_template
        self.invalid = 0
        self.queries = 0  # comparisons asked so far (cache hits included)
        self._ref_lm = None
        self.name = "judge_pairwise"

    def references(self, prompts: Sequence[str]) -> list[str]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self.refs))
        if missing:
            if self.reference_model is None:
                raise KeyError(f"no reference completion for prompt {missing[0]!r} in reward.references")
            from alignlab.data.tokenize import Formatter
            from alignlab.models import ModelSpec
            from alignlab.models.generation import SamplingConfig, sample

            if self._ref_lm is None:
                spec = self.reference_model
                self._ref_lm = (ModelSpec(**spec) if isinstance(spec, dict) else spec).load()
                self._ref_lm.model.eval()
            lm = self._ref_lm
            fmt = Formatter(lm.tokenizer, use_chat_template=self.use_chat_template)
            ids = [fmt.prompt_ids(p) for p in missing]
            gen = sample(lm.model, lm.tokenizer, ids, SamplingConfig(self.max_new_tokens, temperature=0.0))
            self.refs.update(zip(missing, gen.texts))
        return [self.refs[p] for p in prompts]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        self.queries += len(prompts)
        results = self.judge.judge_pairs(list(prompts), list(completions), self.references(prompts))
        p = []
        for r in results:
            if r["p_first"] is None:
                self.invalid += 1
                p.append(self.invalid_reward)
            else:
                p.append(r["p_first"])
        out = torch.tensor(p, dtype=torch.float32)
        return 2 * out - 1 if self.centered else out
