"""Shared test setup.

Without CUDA, Triton kernels run in the interpreter: TRITON_INTERPRET must be set before any
``@triton.jit`` function is defined, i.e. before ``stquery.kernels`` is imported.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
