"""Judges that read an answer as a choice between options, and the local-LM judge (any causal LM).

``OptionJudge`` holds what every LLM judge shares: queries from a template, the cache, and how answers
combine into P(first ≻ second):

* ``pairwise``: the judge sees both responses and picks A or B. Each comparison is asked **in both
  orders** and the two probabilities averaged, as in RLAIF (Lee et al. 2023), so position bias cancels
  instead of deciding the label; the single-order probabilities are kept to measure that bias.
* ``pointwise``: the judge sees each response alone and answers yes/no ("is this review positive?");
  P(first ≻ second) = σ(logit P(yes|first) − logit P(yes|second)), a Bradley–Terry comparison of the two
  log-odds. No order, hence no position bias. (Small models that cannot compare two texts can often
  still answer this question.)

``LocalJudge`` reads each option's probability from the next-token log-probabilities of the option
tokens (no free-text parsing), batched; with ``template.chain_of_thought`` it first generates a greedy
rationale and scores the answer after it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from alignlab.judges.base import Judgement, PairwiseJudge, check_pairs
from alignlab.judges.cache import JudgeCache, cache_key
from alignlab.judges.templates import JudgeTemplate, normalise, render_plain, text_hash

MODES = ("pairwise", "pointwise")


@dataclass
class Query:
    """One question to the judge: chat messages and the options its answer must be one of."""

    messages: list[dict]
    options: tuple[str, ...]


@dataclass
class JudgeStats:
    """What a judge spent: model calls (forward batches or HTTP requests), queries computed, seconds."""

    calls: int = 0
    queries: int = 0
    seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    extra: dict = field(default_factory=dict)


def verdict_of(p: float | None, tie_margin: float) -> str:
    """``first``/``second``/``tie`` from P(first ≻ second); ``invalid`` when there is no probability."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "invalid"
    if p > 0.5 + tie_margin:
        return "first"
    if p < 0.5 - tie_margin:
        return "second"
    return "tie"


def _logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


class OptionJudge(PairwiseJudge):
    """Base of LLM judges: subclasses implement ``_answer(queries) -> [{"probs": [..] | None, "raw": str}]``
    and ``identity()``; ``judge`` handles templates, both orders, the cache and the combination."""

    name = "option_judge"

    def __init__(
        self,
        template: JudgeTemplate | None = None,
        mode: str = "pairwise",
        both_orders: bool = True,
        tie_margin: float = 0.0,
        batch_size: int = 8,
        cache_path: str | None = None,
        max_text_chars: int = 2000,
    ):
        """
        Args:
            template: questions and options; its rubric is replaced by the task's when ``set_rubric`` is called.
            mode: ``pairwise`` (pick A or B, both orders averaged) or ``pointwise`` (yes/no per text).
            both_orders: ask each comparison in both orders (pairwise); False asks (first, second) only.
            tie_margin: |P(first ≻ second) − 0.5| at or below this is a tie.
            batch_size: queries per model call (local) or per cache commit (HTTP).
            cache_path: SQLite cache file; None keeps judgements in memory for this process only.
            max_text_chars: each prompt and response shown to the judge is cut to this many characters.
        """
        if mode not in MODES:
            raise ValueError(f"judge.mode={mode!r}: choose one of {', '.join(MODES)}")
        if not 0 <= tie_margin < 0.5:
            raise ValueError(f"judge.tie_margin={tie_margin} must be in [0, 0.5)")
        if batch_size < 1:
            raise ValueError(f"judge.batch_size={batch_size} must be >= 1")
        self.template = template if template is not None else JudgeTemplate()
        self.mode = mode
        self.both_orders = both_orders
        self.tie_margin = tie_margin
        self.batch_size = batch_size
        self.max_text_chars = max_text_chars
        self.cache = JudgeCache(cache_path)
        self.stats = JudgeStats()

    # -- subclass hooks ---------------------------------------------------------------------------------
    def identity(self) -> str:
        raise NotImplementedError

    def _answer(self, queries: list[Query]) -> list[dict]:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------------
    def set_rubric(self, rubric: str | None) -> None:
        """Use a task's rubric as the criterion (no effect when the template has a constitution)."""
        if rubric:
            self.template.rubric = rubric

    def template_hash(self) -> str:
        return text_hash(self.template.hash(), self.mode, self.max_text_chars)

    def _run(self, keys: list[str], kinds: list[str], queries: list[Query]) -> list[dict]:
        def compute(idx: list[int]) -> list[dict]:
            t0 = time.perf_counter()
            out = self._answer([queries[i] for i in idx])
            self.stats.seconds += time.perf_counter() - t0
            self.stats.queries += len(idx)
            return out

        return self.cache.map(
            keys, compute, (self.identity(), self.template_hash()), kinds, batch_size=self.batch_size
        )

    def judge_pairs(
        self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str]
    ) -> list[Judgement]:
        """Per pair: ``p_first`` = P(first ≻ second), ``verdict`` (first/second/tie/invalid), ``p_forward``
        and ``p_backward`` (P(first ≻ second) from each order alone; pointwise: P(yes) of first/second),
        ``raw`` (raw outputs), ``judge`` and ``template_hash``."""
        check_pairs(prompts, firsts, seconds)
        jid, th, t = self.identity(), self.template_hash(), self.template
        n = self.max_text_chars
        prompts, firsts, seconds = ([x[:n] for x in xs] for xs in (prompts, firsts, seconds))
        if self.mode == "pointwise":
            keys, kinds, queries = [], [], []
            for p, a, b in zip(prompts, firsts, seconds):
                crit = t.criterion(p, a, b)
                for text in (a, b):
                    keys.append(cache_key(jid, th, "point", p, text, crit))
                    kinds.append("point")
                    queries.append(Query(t.pointwise_messages(p, text, crit), t.yes_no))
            answers = self._run(keys, kinds, queries)
            return [self._combine_pointwise(answers[2 * i], answers[2 * i + 1]) for i in range(len(prompts))]
        keys, kinds, queries = [], [], []
        for p, a, b in zip(prompts, firsts, seconds):
            crit = t.criterion(p, a, b)
            for x, y in ((a, b), (b, a)) if self.both_orders else ((a, b),):
                keys.append(cache_key(jid, th, "pair", p, x, y))
                kinds.append("pair")
                queries.append(Query(t.pairwise_messages(p, x, y, crit), t.options))
        answers = self._run(keys, kinds, queries)
        k = 2 if self.both_orders else 1
        return [self._combine_pairwise(answers[k * i : k * i + k]) for i in range(len(prompts))]

    def _combine_pairwise(self, answers: list[dict]) -> dict:
        fwd = answers[0]["probs"][0] if answers[0]["probs"] is not None else None
        bwd = None
        if len(answers) > 1:  # the swapped order: the first response was shown as B
            bwd = answers[1]["probs"][1] if answers[1]["probs"] is not None else None
        vals = [fwd] if len(answers) == 1 else [fwd, bwd]
        p = None if any(v is None for v in vals) else sum(vals) / len(vals)
        return {
            "p_first": p,
            "verdict": verdict_of(p, self.tie_margin),
            "p_forward": fwd,
            "p_backward": bwd,
            "raw": [a["raw"] for a in answers],
            **self._meta(),
        }

    def _combine_pointwise(self, a: dict, b: dict) -> dict:
        ya = a["probs"][0] if a["probs"] is not None else None
        yb = b["probs"][0] if b["probs"] is not None else None
        p = None
        if ya is not None and yb is not None:
            p = 0.5 if ya == yb else 1 / (1 + math.exp(-(_logit(ya) - _logit(yb))))
        return {
            "p_first": p,
            "verdict": verdict_of(p, self.tie_margin),
            "p_forward": ya,
            "p_backward": yb,
            "raw": [a["raw"], b["raw"]],
            **self._meta(),
        }

    def report_stats(self) -> dict:
        s = self.stats
        return {
            "calls": s.calls,
            "queries": s.queries,
            "seconds": round(s.seconds, 3),
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "retries": s.retries,
            **self.cache.stats(),
            **s.extra,
        }


def option_token_ids(tokenizer, options: Sequence[str]) -> list[list[int]]:
    """Token ids that spell each option as a single token (with/without a leading space, capitalised or
    not); if an option has none, its first token. Raises when two options share a token."""
    ids: list[list[int]] = []
    for opt in options:
        exact, first = set(), []
        for v in dict.fromkeys([opt, " " + opt, opt.capitalize(), " " + opt.capitalize()]):
            toks = tokenizer.encode(v, add_special_tokens=False)
            if len(toks) == 1 and tokenizer.decode(toks).strip().lower() == opt.lower():
                exact.add(toks[0])
        if not exact:
            toks = tokenizer.encode(opt, add_special_tokens=False)
            first = toks[:1]
        ids.append(sorted(exact) or first)
    flat = [t for group in ids for t in group]
    if len(flat) != len(set(flat)) or any(not g for g in ids):
        raise ValueError(f"options {list(options)} cannot be told apart by their first tokens ({ids})")
    return ids


class LocalJudge(OptionJudge):
    """An LLM judge run in-process with transformers; the model is loaded on the first cache miss."""

    name = "local"

    def __init__(
        self,
        model,
        template: JudgeTemplate | None = None,
        mode: str = "pairwise",
        both_orders: bool = True,
        tie_margin: float = 0.0,
        batch_size: int = 8,
        cache_path: str | None = None,
        use_chat_template: bool = True,
        answer_prefix: str = "",
        cot_max_new_tokens: int = 96,
        max_text_chars: int = 2000,
        device: str | None = None,
    ):
        """
        Args:
            model: an ``alignlab.models.ModelSpec`` (or a dict of its fields) naming the judge LM.
            template: questions and options (see ``JudgeTemplate``).
            mode: ``pairwise`` or ``pointwise`` (see the module docstring).
            both_orders: ask each pairwise comparison in both orders and average.
            tie_margin: |P(first ≻ second) − 0.5| at or below this is a tie.
            batch_size: queries per forward pass.
            cache_path: SQLite cache file; None: in memory only.
            use_chat_template: wrap queries in the tokenizer's chat template when it has one.
            answer_prefix: text put at the start of the judge's answer before the option is read (e.g. "Answer:").
            cot_max_new_tokens: rationale length when ``template.chain_of_thought``.
            max_text_chars: each prompt and response shown to the judge is cut to this many characters.
            device: where the judge runs; None: CUDA when available, else CPU.
        """
        super().__init__(template, mode, both_orders, tie_margin, batch_size, cache_path, max_text_chars)
        from alignlab.models import ModelSpec

        self.spec = ModelSpec(**model) if isinstance(model, dict) else model
        self.use_chat_template = use_chat_template
        self.answer_prefix = answer_prefix
        self.cot_max_new_tokens = cot_max_new_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._lm = None

    def identity(self) -> str:
        cot = self.cot_max_new_tokens if self.template.chain_of_thought else 0
        return "local:" + text_hash(self.spec.identity(), self.use_chat_template, self.answer_prefix, cot)

    def lm(self):
        if self._lm is None:
            self._lm = self.spec.load()
            self._lm.model.to(self.device).eval()
        return self._lm

    def render(self, messages: list[dict]) -> str:
        """The query as the text the model continues (ends where the answer begins)."""
        tok = self.lm().tokenizer
        if self.use_chat_template and getattr(tok, "chat_template", None):
            return (
                tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                + self.answer_prefix
            )
        return render_plain(messages, answer=not self.template.chain_of_thought)

    @torch.no_grad()
    def next_token_logprobs(self, texts: list[str]) -> torch.Tensor:
        """Log-probabilities of the token after each text, (B, V), one left-padded forward pass."""
        from alignlab.models.generation import left_pad

        lm = self.lm()
        seqs = [lm.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        ids, mask = left_pad(seqs, lm.tokenizer.pad_token_id, self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]  # (B, V)
        self.stats.calls += 1
        self.stats.prompt_tokens += int(mask.sum())
        return torch.log_softmax(logits.float(), dim=-1)

    def _rationales(self, texts: list[str]) -> list[str]:
        from alignlab.models.generation import SamplingConfig, sample

        lm = self.lm()
        ids = [lm.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        gen = sample(lm.model, lm.tokenizer, ids, SamplingConfig(self.cot_max_new_tokens, temperature=0.0))
        self.stats.calls += 1
        self.stats.completion_tokens += int(gen.completion_mask.sum())
        return gen.texts

    def _answer(self, queries: list[Query]) -> list[dict]:
        lm = self.lm()
        texts = [self.render(q.messages) for q in queries]
        raws = [""] * len(texts)
        if self.template.chain_of_thought:
            raws = self._rationales(texts)
            texts = [t + r.strip() + "\nAnswer:" for t, r in zip(texts, raws)]
        logps = self.next_token_logprobs(texts)  # (B, V)
        out = []
        for q, row, raw in zip(queries, logps, raws):
            groups = option_token_ids(lm.tokenizer, q.options)
            lp = [torch.logsumexp(row[g], 0).item() for g in groups]
            probs = normalise(lp)
            mass = sum(math.exp(x) for x in lp)
            best = max(range(len(probs)), key=probs.__getitem__)
            out.append(
                {"probs": probs, "raw": (raw + " → " if raw else "") + q.options[best], "option_mass": mass}
            )
        return out
