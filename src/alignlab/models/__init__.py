from alignlab.models.loader import LoadedLM, ModelSpec
from alignlab.models.peft import LoraSpec, apply_peft
from alignlab.models.reference import LoadedPolicy, ReferenceModel, load_policy

__all__ = ["LoadedLM", "LoadedPolicy", "LoraSpec", "ModelSpec", "ReferenceModel", "apply_peft", "load_policy"]
