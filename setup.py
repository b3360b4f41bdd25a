"""Everything is in pyproject.toml except one mapping it cannot express: the repository's top-level conf/
ships inside the package as ``alignlab.conf`` (Hydra loads it through ``pkg://alignlab.conf`` when
alignlab is installed from a wheel), without moving conf/ in the repository."""

from setuptools import find_namespace_packages, find_packages, setup

CONF = ["alignlab.conf", *(f"alignlab.conf.{p}" for p in find_namespace_packages("conf"))]

setup(
    packages=[*find_packages("src"), *CONF],
    package_dir={"": "src", "alignlab.conf": "conf"},
    package_data={"alignlab": ["resources/*.jsonl", "resources/*.txt"], **{p: ["*.yaml"] for p in CONF}},
)
