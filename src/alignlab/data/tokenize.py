"""Turning rows into token ids: chat templates where the model has one, explicit truncation, counted."""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field

from alignlab.data.rows import DataError

PROBE_TEXT = "Hello world"
_AFFIXES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids ``tokenizer(text)`` puts before and after the text's own ids: (prefix, suffix).

    Read from what the tokenizer does (a probe encoded with and without special tokens), not from flags
    such as ``add_bos_token``: Gemma's tokenizer reports ``add_bos_token=False`` yet its post-processor
    adds ``<bos>``; SmolLM2's adds nothing; ByT5's appends ``</s>``. Cached per tokenizer and state.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = (
        getattr(tokenizer, "add_bos_token", None),
        getattr(tokenizer, "add_eos_token", None),
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        repr(getattr(backend, "post_processor", None)),
    )
    try:
        hit = _AFFIXES.get(tokenizer)
    except TypeError:  # not weak-referenceable or not hashable: probe every time
        hit = None
    if hit is not None and hit[0] == state:
        return list(hit[1]), list(hit[2])
    full = list(tokenizer(PROBE_TEXT)["input_ids"])
    plain = list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
    n = len(plain)
    at = next((i for i in range(len(full) - n + 1) if full[i : i + n] == plain), None)
    if at is None:  # the specials changed how the text itself splits: the special ids at each end
        special = set(tokenizer.all_special_ids)
        at = next((i for i, t in enumerate(full) if t not in special), len(full))
        trailing = next((j for j, t in enumerate(reversed(full[at:])) if t not in special), 0)
        n = len(full) - at - trailing
    prefix, suffix = full[:at], full[at + n :]
    try:
        _AFFIXES[tokenizer] = (state, tuple(prefix), tuple(suffix))
    except TypeError:
        pass
    return prefix, suffix


def with_prefix(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` (encoded without special tokens, or from a chat template) behind the tokenizer's own prefix
    (its BOS, where it adds one), which appears once: a template that already starts with it keeps it,
    and a doubled prefix at the start is collapsed."""
    prefix = special_affixes(tokenizer)[0]
    ids = list(ids)
    if not prefix:
        return ids
    k = len(prefix)
    while ids[: 2 * k] == prefix + prefix:
        ids = ids[k:]
    return ids if ids[:k] == prefix else [*prefix, *ids]


def encode_prompt(tokenizer, text: str) -> list[int]:
    """A text the model continues (a prompt, a rendered judge query) as the model saw text in training:
    the tokenizer's prefix (BOS), then the text; no suffix, since the text goes on."""
    return with_prefix(tokenizer, tokenizer.encode(text, add_special_tokens=False))


def encode_scored(tokenizer, text: str) -> list[int]:
    """A whole text a reward model scores: prefix (BOS), the text, and EOS, as alignlab scores
    prompt + completion (the explicit EOS that ends a completion; never a BOS in the middle)."""
    return [*encode_prompt(tokenizer, text), tokenizer.eos_token_id]


def check_chat_template(tokenizer, use_chat_template: bool | str, key: str = "") -> None:
    """``use_chat_template=true`` needs a tokenizer with a chat template: one line naming the key."""
    if use_chat_template is True and not getattr(tokenizer, "chat_template", None):
        from alignlab.utils.config import ConfigError

        where = "" if key else " (data.use_chat_template or task.use_chat_template)"
        key = key or "use_chat_template"
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"{key}=true{where} but the tokenizer of {name!r} has no chat template: set {key}=false "
            "(plain text) or auto, or use a chat model such as model=smollm2_135m"
        )


@dataclass
class Formatter:
    """Encodes prompts and completions for one tokenizer.

    Prompts go through the tokenizer's chat template (as a user turn, with the generation prompt)
    when ``use_chat_template`` is true, or is ``auto`` and the tokenizer has one; otherwise they are
    plain text. Either way the prompt starts with the special tokens the tokenizer itself puts before a
    text (``special_affixes``: BOS for Gemma or Llama, nothing for SmolLM2), once. Completions are plain
    text followed by EOS (the end of the assistant turn), with no BOS.
    """

    tokenizer: object
    use_chat_template: bool | str = "auto"
    system_prompt: str | None = None
    max_prompt_length: int = 128
    max_length: int = 256
    truncation: str = "truncate"
    """``truncate`` (prompt keeps its last tokens, completion its first), ``drop`` (skip, counted) or ``error``."""
    counts: Counter = field(default_factory=Counter)

    def __post_init__(self):
        check_chat_template(self.tokenizer, self.use_chat_template)
        if self.truncation not in ("truncate", "drop", "error"):
            raise ValueError(f"data.truncation={self.truncation!r}: choose truncate, drop or error")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"data.max_prompt_length ({self.max_prompt_length}) must be below data.max_length ({self.max_length})"
            )

    @property
    def chat(self) -> bool:
        if self.use_chat_template == "auto":
            return bool(getattr(self.tokenizer, "chat_template", None))
        return bool(self.use_chat_template)

    def prompt_ids(self, prompt, where: str = "") -> list[int]:
        tok = self.tokenizer
        if self.chat:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            if self.system_prompt and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": self.system_prompt}, *messages]
            ids = tok.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            if isinstance(prompt, list):
                prompt = "\n".join(m["content"] for m in prompt)
            ids = tok.encode(prompt, add_special_tokens=False)
        ids = with_prefix(tok, ids)  # the tokenizer's own BOS convention, once, template or not
        if len(ids) > self.max_prompt_length:
            self._over(where, "prompt", len(ids), self.max_prompt_length)
            self.counts["prompt truncated"] += 1
            prefix = special_affixes(tok)[0]  # with_prefix put it first: keep it, cut the text's start
            keep = max(self.max_prompt_length - len(prefix), 0)
            ids = [*prefix, *ids[len(ids) - keep :]]
        return ids

    def completion_ids(
        self, text: str, prompt_len: int, where: str = "", field_name: str = "completion"
    ) -> list[int]:
        ids = [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]
        room = self.max_length - prompt_len
        if len(ids) > room:
            self._over(where, field_name, prompt_len + len(ids), self.max_length)
            self.counts[f"{field_name} truncated"] += 1
            ids = ids[:room]
        return ids

    def _over(self, where: str, name: str, n: int, limit: int) -> None:
        if self.truncation == "truncate":
            return
        msg = (
            f"{where}: field '{name}' is too long ({n} tokens > {limit}); raise data.max_length / "
            "data.max_prompt_length or set data.truncation=truncate"
        )
        if self.truncation == "error":
            raise DataError(msg, "over-length")
        raise _Drop(msg)


class _Drop(Exception):
    """Internal: an over-length row under ``truncation=drop``."""


def encode_rows(rows: list[dict], kind: str, fmt: Formatter) -> list[dict]:
    """Encode validated rows; over-length rows are truncated, dropped or rejected per ``fmt.truncation``."""
    out = []
    for i, row in enumerate(rows):
        where = row.get("_where", f"row {i}")
        try:
            p = fmt.prompt_ids(row["prompt"], where)
            ex = {"index": i, "prompt_ids": p, "prompt": row["prompt"]}
            if kind == "sft":
                ex["completion_ids"] = fmt.completion_ids(row["completion"], len(p), where)
            elif kind == "preference":
                ex["chosen_ids"] = fmt.completion_ids(row["chosen"], len(p), where, "chosen")
                ex["rejected_ids"] = fmt.completion_ids(row["rejected"], len(p), where, "rejected")
                ex["p_chosen"] = float(row.get("p_chosen", 1.0))
            out.append(ex)
        except _Drop:
            fmt.counts["dropped over-length"] += 1
    return out
