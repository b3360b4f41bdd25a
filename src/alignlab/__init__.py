"""alignlab: Lightning + Hydra experiments for aligning language models with feedback."""

__version__ = "0.1.0"
