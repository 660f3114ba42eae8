"""Triton kernels and their launchers, one package per op: ``attention``, ``topk``, ``pool``.

The sources live in the repository's top-level ``kernels/<op>/`` folders (the project layout) and
are installed here by ``pyproject.toml``. ``kernels/`` itself has no ``__init__.py`` on purpose:
a top-level package named ``kernels`` would shadow Hugging Face's ``kernels`` (imported by
transformers) whenever the repository root is on ``sys.path``.
"""
