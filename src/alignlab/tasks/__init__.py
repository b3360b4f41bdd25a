"""Tasks: prompts with fixed splits, a gold reward, and the rubric a judge is given."""

from alignlab.tasks.base import Task, build_task, compose_task

__all__ = ["Task", "build_task", "compose_task"]
