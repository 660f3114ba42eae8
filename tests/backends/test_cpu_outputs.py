"""The cpu backend's output cache (csrc/common/output_cache.h): freed output buffers of 1 MiB or
more are kept for the next output of the same rounded size, up to STQUERY_CPU_OUTPUT_CACHE_MB."""
from __future__ import annotations

import gc
import os
import subprocess
import sys

import pytest
import torch

import stquery as stq
from stquery.backends import cpu_backend

pytestmark = [
    pytest.mark.skipif(cpu_backend._build_error() is not None, reason="the cpu extension does not build here"),
    pytest.mark.skipif(os.environ.get("STQUERY_CPU_OUTPUT_CACHE_MB", "1024") != "1024",
                       reason="STQUERY_CPU_OUTPUT_CACHE_MB is set: these tests assume the default limit"),
]

T, MIB = 8, 1 << 20


def inputs():
    torch.manual_seed(0)
    return [torch.randn(8 * T, 16, 4, 64, requires_grad=True) for _ in range(3)]  # 1 MiB each


def attend(q, k, v):
    return stq.temporal_attention(q, k, v, T, backend="cpu")


@pytest.fixture(autouse=True)
def empty_cache():
    gc.collect()  # outputs of earlier tests held by cycles come back to the cache now, not mid-test
    cpu_backend.empty_cache()


def test_a_freed_output_is_the_next_ones_buffer():
    q, k, v = inputs()
    first = attend(q, k, v).detach()
    expected, ptr = first.clone(), first.data_ptr()
    del first
    again = attend(q, k, v).detach()
    assert again.data_ptr() == ptr
    assert torch.equal(again, expected)
    grads = torch.autograd.grad(attend(q, k, v), (q, k, v), torch.randn(8 * T, 16, 4, 64))
    assert all(g.data_ptr() % (2 * MIB) == 0 for g in grads)  # whole 2 MiB pages


def test_small_outputs_and_empty_cache():
    module = cpu_backend.module()
    small = cpu_backend._empty((1000,), torch.float32)  # under 1 MiB: ATen's allocator
    del small
    assert module.cached_bytes() == 0
    big = cpu_backend._empty((MIB,), torch.float32)  # 4 MiB: two 2 MiB pages
    del big
    assert module.cached_bytes() == 4 * MIB
    cpu_backend.empty_cache()
    assert module.cached_bytes() == 0


@pytest.mark.parametrize("limit, cached", [("0", 0), ("4", 2)])
def test_the_limit(limit, cached):
    """Free a 4 MiB buffer, then a 2 MiB one: at 4 MiB the cache drops the older; at 0 it keeps nothing."""
    code = ("import torch; from stquery.backends import cpu_backend as c; "
            "a = c._empty((1 << 20,), torch.float32); b = c._empty((1 << 19,), torch.float32); del a; del b; "
            "print(c.module().cached_bytes() >> 20)")
    env = dict(os.environ, STQUERY_CPU_OUTPUT_CACHE_MB=limit)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=300)
    assert int(out.stdout.strip()) == cached
