"""What every op's checks share (docs/ops.md §1): the dtype lists and the tensor checks.

Every error names the argument, the shape it got and the one it needs. Checks read only shapes,
dtypes and devices, never tensor values, so they cost no device synchronisation.
"""
from __future__ import annotations

import torch
from torch.autograd import forward_ad

# Float dtypes every op accepts (float64 runs on the torch backend: the precision of the tests).
FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Float dtypes the compiled kernels (Triton, CUDA, CPU) are built for.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def shape(t) -> str:
    return str(list(t.shape))


def tensor(name: str, t, rank: int, layout: str, dtypes=FLOATS) -> None:
    """``t`` is a tensor of the given rank and dtype whose last dim is contiguous."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor {layout}, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name}: expected shape {layout}, got {shape(t)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype in ({names}), got {t.dtype}")
    if t.stride()[-1] != 1 and t.shape[-1] != 1 and t.numel():
        raise ValueError(f"{name}: the last dim must be contiguous (stride 1), got strides {list(t.stride())}")


def same_device(ref_name: str, ref: torch.Tensor, **others) -> None:
    device = ref.device
    for name, t in others.items():
        if t is not None and t.device != device:
            raise ValueError(f"{name}: expected device {device} (that of {ref_name}), got {t.device}")


def nonempty(name: str, t: torch.Tensor, layout: str) -> None:
    if 0 in t.shape:
        raise ValueError(f"{name}: every dim of {layout} must be at least 1, got shape {shape(t)}")


def rows_readable(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when ``stride(-1) == 1``, else a contiguous copy.

    Every backend receives incoming gradients in this form. Autograd hands ``loss.sum()``'s
    gradient over as an expanded scalar (all strides 0), which no kernel can read as rows.
    """
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def device_type(t: torch.Tensor) -> str:
    """``t.device.type``; ``.type`` builds a new string on every call, the flags do not."""
    return "cpu" if t.is_cpu else "cuda" if t.is_cuda else t.device.type


def dispatched() -> bool:
    """Whether an op call goes through its custom ops (the dispatcher) rather than the eager path:
    under ``torch.compile`` (dynamo and AOTAutograd see one opaque op per direction) or a functorch
    transform (``torch.vmap`` runs the custom op once per sample; ``torch.func.grad`` refuses it
    with an error naming the transform). A backend can't read functorch's batched tensors."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def forward_ad_active() -> bool:
    """Whether forward-mode AD is active (inside ``forward_ad.dual_level``): an op's Python
    ``torch.autograd.Function`` then rejects the call with a clear error instead of letting the
    tangents be dropped, so such a call must reach it."""
    return forward_ad._current_level >= 0


def records_autograd(*tensors) -> bool:
    """Whether an eager call goes through its autograd node rather than straight to the backend:
    grad mode is on and one of ``tensors`` requires grad, or forward-mode AD is active
    (:func:`forward_ad_active`). ``Function.apply`` alone costs more than a small call's kernel
    (``bench/host_overhead.py``), and records nothing without gradients.
    """
    if forward_ad_active():
        return True
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False
