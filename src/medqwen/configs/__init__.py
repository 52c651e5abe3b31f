"""Experiment YAMLs that ship inside the package (package data, `[tool.setuptools.package-data]`), so
that `medqwen demo` runs from an installed wheel as well as from a source checkout. The other configs
(the paper's stages, benchmarks, accelerate files) are examples for the repository's commands and stay
in the repository's `configs/`."""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent


def packaged_config(name: str) -> Path:
    """The path of a shipped config, e.g. ``packaged_config("experiments/demo_synthetic.yaml")``."""
    path = PACKAGED / name
    if not path.is_file():
        shipped = sorted(str(p.relative_to(PACKAGED)) for p in PACKAGED.rglob("*.yaml"))
        raise FileNotFoundError(f"{name!r} is not a config shipped with medqwen (shipped: {shipped})")
    return path
