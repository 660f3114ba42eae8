"""Training, evaluation and data for stquery's video models (SPEC §5).

``stquery train`` / ``stquery evaluate`` / ``stquery convert`` (see :mod:`stquery.train.cli`).
"""
from .config import load_config
from .data import DataError, read_manifest

__all__ = ["load_config", "DataError", "read_manifest"]
