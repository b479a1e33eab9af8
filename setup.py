"""Packaging that pyproject.toml cannot express: the top-level Hydra configs in ``conf/`` ship
inside the package as ``dede/conf`` (found by ``dede.pipeline.compose.config_dir``), so an
installed package composes configs without a source checkout."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["dede*"]) + ["dede.conf"], package_dir={"dede.conf": "conf"},
      package_data={"dede.conf": ["**/*.yaml"]})
