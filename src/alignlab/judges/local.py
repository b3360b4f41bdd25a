"""The local-LM judge: any causal LM, in-process with transformers (see ``alignlab.judges.option`` for
the pairwise and pointwise questions and how answers combine).

``LocalJudge`` reads each option's probability from the next-token log-probabilities of the option
tokens (no free-text parsing), batched; with ``template.chain_of_thought`` it first generates a greedy
rationale and scores the answer after it. When the options together get less than ``min_option_mass``
of the next-token probability, the model did not answer the question: the answer is invalid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from alignlab.judges.cache import cache_key
from alignlab.judges.option import OptionJudge, Query
from alignlab.judges.templates import JudgeTemplate, normalise, render_plain, text_hash


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
        min_option_mass: float = 0.0,
        min_confidence: float = 0.5,
        bound_tasks: list[str] | None = None,
        task_requires: list[str] | None = None,
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
            min_option_mass: an answer whose options get less next-token probability than this, together,
                is invalid (the model answered something else); 0 accepts every answer.
            min_confidence: pairs the judge is less sure of become ``unsure`` ties (see ``OptionJudge``).
            bound_tasks: the only tasks this judge's recipe is made for (its tuning data, its fixed
                question); judging another task is refused. None: any task.
            task_requires: task settings the judge's recipe needs (e.g. ``judge_data``, the task that
                supplies its tuning data); a task that leaves one unset is refused. None: none.
        """
        super().__init__(
            template, mode, both_orders, tie_margin, batch_size, cache_path, max_text_chars, min_confidence
        )
        if not 0.0 <= min_option_mass < 1.0:
            raise ValueError(f"judge.min_option_mass={min_option_mass} must be in [0, 1)")
        self.min_option_mass = min_option_mass
        from alignlab.models import ModelSpec

        self.spec = ModelSpec(**model) if isinstance(model, dict) else model
        self.bound_tasks = list(bound_tasks) if bound_tasks else None
        self.task_requires = list(task_requires) if task_requires else None
        self.use_chat_template = use_chat_template
        self.answer_prefix = answer_prefix
        self.cot_max_new_tokens = cot_max_new_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._lm = None

    def identity(self) -> str:
        cot = self.cot_max_new_tokens if self.template.chain_of_thought else 0
        return "local:" + text_hash(self.spec.identity(), self.use_chat_template, self.answer_prefix, cot)

    def to(self, device) -> LocalJudge:
        """Run the judge on ``device`` (moves the model when it is loaded)."""
        self.device = str(device)
        if self._lm is not None:
            self._lm.model.to(device)
        return self

    def lm(self):
        """The judge's model and tokenizer (``LoadedLM``), loaded on first use."""
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
        from alignlab.data.tokenize import encode_prompt
        from alignlab.models.generation import left_pad

        lm = self.lm()
        seqs = [encode_prompt(lm.tokenizer, t) for t in texts]  # BOS as the model's tokenizer adds it
        ids, mask = left_pad(seqs, lm.tokenizer.pad_token_id, self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]  # (B, V)
        self.stats.calls += 1
        self.stats.prompt_tokens += int(mask.sum())
        return torch.log_softmax(logits.float(), dim=-1)

    def _rationales(self, texts: list[str]) -> list[str]:
        from alignlab.data.tokenize import encode_prompt
        from alignlab.models.generation import SamplingConfig, sample

        lm = self.lm()
        ids = [encode_prompt(lm.tokenizer, t) for t in texts]
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
            answer = (raw + " → " if raw else "") + q.options[best] + f" (option mass {mass:.3f})"
            if mass < self.min_option_mass:  # the model meant another answer: no probability
                probs = None
                self.stats.extra["below_mass_floor"] = self.stats.extra.get("below_mass_floor", 0) + 1
            out.append({"probs": probs, "raw": answer, "option_mass": mass})
        return out

    def yes_probabilities(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float | None]:
        """The pointwise P(yes) of each (prompt, text), cached like the labels (None: invalid answer). The
        direct-RLAIF reward of a pointwise judge."""
        jid, th, t = self.identity(), self.template_hash(), self.template
        n = self.max_text_chars
        keys, queries = [], []
        for p, x in zip(prompts, texts):
            p, x = p[:n], x[:n]
            crit = t.criterion(p, x, x)
            keys.append(cache_key(jid, th, "point", p, x, crit))
            queries.append(Query(t.pointwise_messages(p, x, crit), t.yes_no))
        answers = self._run(keys, ["point"] * len(keys), queries)
        return [None if a["probs"] is None else a["probs"][0] for a in answers]
