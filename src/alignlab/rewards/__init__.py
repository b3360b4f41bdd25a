"""Reward functions for online RL: reward model, gold task reward, judge (direct RLAIF)."""
