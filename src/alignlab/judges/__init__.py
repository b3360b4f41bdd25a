"""Pairwise judges: gold oracle (simulated humans), local LM, OpenAI-compatible HTTP."""
