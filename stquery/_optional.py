"""Optional dependencies: one place that turns a missing one into an error naming the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = ("models", "train", "video", "bench", "test")


def require(module: str, *, extra: str, feature: str = "") -> ModuleType:
    """Import ``module``, or raise an ImportError that says which extra of stquery brings it.

    ``require("transformers", extra="models")`` -> the module, or
    ``ImportError: stquery.models needs transformers: pip install 'stquery[models]'``.
    """
    if extra not in EXTRAS:
        raise ValueError(f"extra: expected one of {EXTRAS}, got {extra!r}")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        needed = module.split(".")[0]
        raise ImportError(f"{feature or 'this part of stquery'} needs {needed}, which is not installed: "
                          f"pip install 'stquery[{extra}]'  ({e})") from e
