"""Tasks: prompts with fixed splits, a gold reward, and the rubric a judge is given."""

from alignlab.tasks.base import Task, get_task, register_task

__all__ = ["Task", "get_task", "register_task"]
