"""Small data files shipped with the package (synthetic, for fast tests and demos)."""

from pathlib import Path

RESOURCES = Path(__file__).resolve().parent


def resource(name: str) -> str:
    return str(RESOURCES / name)
