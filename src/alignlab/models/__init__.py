from alignlab.models.loader import LoadedLM, ModelSpec
from alignlab.models.peft import LoraSpec, apply_peft, reference_mode

__all__ = ["LoadedLM", "LoraSpec", "ModelSpec", "apply_peft", "reference_mode"]
