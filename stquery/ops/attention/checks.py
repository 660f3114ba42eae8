"""Argument checks of ``stq.attention`` / ``stq.temporal_attention`` (docs/ops.md §1, §2.1–2.3).

The one place attention arguments are validated; backends' ``supports`` only add what their
kernels can't do.
"""
from __future__ import annotations

import functools
import math

import torch

from ..common import nonempty, same_device, shape, tensor
from .masks import MaskSet
from .problem import MAX_HEAD_DIM, MODES, NONE, AttnProblem

# One AttnProblem per distinct static signature: building a frozen dataclass costs more than the
# rest of a small call's checks (bench/host_overhead.py).
_cached_problem = functools.lru_cache(maxsize=1024)(AttnProblem)


def _problem(*fields) -> AttnProblem:
    # dynamo can't trace an lru_cache; a compiled graph builds its problem once, when traced
    return AttnProblem(*fields) if torch.compiler.is_compiling() else _cached_problem(*fields)


def attention_problem(q, k, v, frames, masks, alpha, mode, scale, key_padding, frame_lengths):
    """Validate the arguments of ``attention`` (``frames=None``) or ``temporal_attention``.

    Returns ``(alpha, dense, frame_lengths, prob)``: alpha expanded to ``[G, H, p]`` / ``[B, L, H, p]``
    (or None), the dense-mask buffer (or None), frame_lengths as int64 (or None), the AttnProblem.
    """
    temporal = frames is not None
    qlay = "[B*T, L, H, d]" if temporal else "[G, Nq, H, d]"
    klay = "[B*T, L, H, d]" if temporal else "[G, Nk, H, d]"
    tensor("q", q, 4, qlay)
    tensor("k", k, 4, klay)
    tensor("v", v, 4, klay)
    dtype = q.dtype
    if k.dtype != dtype or v.dtype != dtype:
        name, t = ("k", k) if k.dtype != dtype else ("v", v)
        raise TypeError(f"{name}: expected dtype {dtype} (that of q), got {t.dtype}")
    same_device("q", q, k=k, v=v)
    qshape, kshape, vshape = q.shape, k.shape, v.shape
    G, Nq, H, d = qshape
    if temporal:
        if kshape != qshape or vshape != qshape:
            name, t = ("k", k) if kshape != qshape else ("v", v)
            raise ValueError(f"{name}: expected shape {list(qshape)} (that of q, {qlay}), got {shape(t)}")
    else:
        for name, t in (("k", kshape), ("v", vshape)):
            if (t[0], t[2], t[3]) != (G, H, d):
                raise ValueError(f"{name}: expected shape [{G}, Nk, {H}, {d}] (G, H, d of q), got {list(t)}")
        if kshape[1] != vshape[1]:
            raise ValueError(f"v: expected shape {list(kshape)} (that of k), got {shape(v)}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"q: head width d must be in 1..{MAX_HEAD_DIM}, got shape {shape(q)} (d = {d})")
    nonempty("q", q, qlay)
    nonempty("k", k, klay)

    if temporal:
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames: expected a positive int, got {frames!r}")
        if G % frames:
            raise ValueError(f"frames: must divide dim 0 of q ({qlay}), got frames = {frames} and shape {shape(q)}")
        nq = nk = frames
        groups = (G // frames, Nq, H)  # alpha's leading dims: [B, L, H]
        group_layout = "[B, L, H, p]"
    else:
        nq, nk = Nq, kshape[1]
        groups = (G, H)
        group_layout = "[G, H, p]"

    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite float, got {scale!r}")

    if key_padding is not None:
        tensor("key_padding", key_padding, 2, f"[{G}, {nk}] (bool)", dtypes=(torch.bool,))
        if tuple(key_padding.shape) != (G, nk):
            raise ValueError(f"key_padding: expected shape [{G}, {nk}] ([G, Nk]), got {shape(key_padding)}")
        same_device("q", q, key_padding=key_padding)
    if frame_lengths is not None:
        layout = f"[{G // frames}] ([B], int)"
        if not isinstance(frame_lengths, torch.Tensor) or frame_lengths.dim() != 1:
            got = shape(frame_lengths) if isinstance(frame_lengths, torch.Tensor) else type(frame_lengths).__name__
            raise ValueError(f"frame_lengths: expected a tensor {layout}, got {got}")
        if frame_lengths.dtype.is_floating_point or frame_lengths.dtype.is_complex or frame_lengths.dtype == torch.bool:
            raise TypeError(f"frame_lengths: expected an integer dtype, got {frame_lengths.dtype}")
        if frame_lengths.shape[0] != G // frames:
            raise ValueError(f"frame_lengths: expected shape {layout}, got {shape(frame_lengths)}")
        same_device("q", q, frame_lengths=frame_lengths)
        frame_lengths = frame_lengths.to(torch.int64).contiguous()  # [B]: what backends receive

    if mode not in MODES:
        raise ValueError(f"mode: expected 'mix' or 'scale', got {mode!r}")
    if masks is None:
        if alpha is not None:
            raise ValueError("alpha: routing weights need masks (a stq.MaskSet); got alpha with masks=None")
        return None, None, frame_lengths, _problem(frames or 0, (), (), 0, 0, NONE, float(scale))

    if not isinstance(masks, MaskSet):
        raise TypeError(f"masks: expected a stq.MaskSet, got {type(masks).__name__}")
    p = len(masks)
    if masks.dense_shape is not None and masks.dense_shape != (nq, nk):
        raise ValueError(f"masks: dense masks must be [Nq, Nk] = [{nq}, {nk}], got {list(masks.dense_shape)}")
    gs, ge = masks.global_tokens
    if ge > gs:
        if nq != nk:
            raise ValueError(f"masks: global_tokens apply to self-attention only (Nq == Nk), got Nq = {nq}, Nk = {nk}")
        if ge > nq:
            raise ValueError(f"masks: global_tokens {masks.global_tokens} exceed the sequence length {nq}")

    full = groups + (p,)
    if alpha is None:
        alpha = torch.full((p,), 1.0 / p, dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"alpha: expected a float tensor broadcastable to {group_layout} = {list(full)}, got {type(alpha).__name__}")
    if not alpha.is_floating_point():
        raise TypeError(f"alpha: expected a float dtype, got {alpha.dtype}")
    same_device("q", q, alpha=alpha)
    ashape = alpha.shape
    r = len(ashape)
    broadcastable = 1 <= r <= len(full) and ashape[-1] == p
    for a, f in zip(ashape[:-1], full):
        broadcastable = broadcastable and (a == 1 or a == f)
    if not broadcastable:
        prefixes = ", ".join(str(list(full[:i]) + ["p"]) for i in range(len(full)))
        raise ValueError(
            f"alpha: expected a shape broadcastable to {group_layout} = {list(full)} (one of {prefixes}"
            f" with p = {p}), got {shape(alpha)}"
        )
    if r < len(full):  # [G, p] means per group: insert the missing dims before p
        alpha = alpha.view(*ashape[:-1], *(1,) * (len(full) - r), p)
    alpha = alpha.expand(*full)
    prob = _problem(frames or 0, masks.kinds, masks.radii, gs, ge, MODES[mode], float(scale))
    return alpha, masks.dense_buffer(q.device), frame_lengths, prob
