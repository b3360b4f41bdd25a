"""Turning rows into token ids: chat templates where the model has one, explicit truncation, counted."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from alignlab.data.rows import DataError


@dataclass
class Formatter:
    """Encodes prompts and completions for one tokenizer.

    Prompts go through the tokenizer's chat template (as a user turn, with the generation prompt)
    when ``use_chat_template`` is true, or is ``auto`` and the tokenizer has one; otherwise they are
    plain text. Completions are plain text followed by EOS (the end of the assistant turn).
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
            if getattr(tok, "bos_token_id", None) is not None and getattr(tok, "add_bos_token", False):
                ids = [tok.bos_token_id, *ids]
        if len(ids) > self.max_prompt_length:
            self._over(where, "prompt", len(ids), self.max_prompt_length)
            self.counts["prompt truncated"] += 1
            ids = ids[-self.max_prompt_length :]
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
