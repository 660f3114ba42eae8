"""Input builders shared by the op tests."""
import torch

import stquery as stq


def strided(shape, dtype=torch.float64, device="cpu", pad=3):
    """A random tensor of ``shape`` whose only contiguous dim is the last (a slice of a wider buffer)."""
    *lead, d = shape
    buf = torch.randn(*lead, d + pad, dtype=dtype, device=device)
    return buf[..., :d]


def qkv(shape, kshape=None, dtype=torch.float64, device="cpu", contiguous=False):
    make = (lambda s: torch.randn(*s, dtype=dtype, device=device)) if contiguous else (lambda s: strided(s, dtype, device))
    kshape = kshape or shape
    return make(shape), make(kshape), make(kshape)


MASK_KINDS = ("window", "causal", "dense")


def mask_set(kinds, nq, nk, global_tokens=None, generator=None):
    """A MaskSet with one mask per entry of ``kinds`` (radii and dense patterns vary per position)."""
    masks = []
    for j, kind in enumerate(kinds):
        if kind == "window":
            masks.append(stq.masks.window(None if j % 3 == 2 else j % 3))
        elif kind == "causal":
            masks.append(stq.masks.causal(None if j % 2 else 1))
        else:
            masks.append(stq.masks.dense(torch.rand(nq, nk, generator=generator) > 0.6))
    return stq.MaskSet(masks, global_tokens=global_tokens)


def leaf(t):
    return t.detach().requires_grad_()


def compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def assert_error_names(call, exc, words):
    """``call()`` raises ``exc`` whose message contains every one of ``words`` (docs/ops.md §1)."""
    try:
        call()
    except exc as e:
        for w in words:
            assert w in str(e), f"{w!r} not in: {e}"
    else:
        raise AssertionError(f"expected {exc.__name__}")
