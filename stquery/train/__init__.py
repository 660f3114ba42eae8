"""Training, evaluation and data for stquery's video models (docs/training.md §5).

``stquery train`` / ``stquery evaluate`` / ``stquery convert`` (see :mod:`stquery.train.cli`).
Needs the ``[train]`` extra (``pip install 'stquery[train]'``); the modules say so when it is missing.
This package imports nothing itself, so that ``stquery --help`` runs on a kernel-only install.
"""
