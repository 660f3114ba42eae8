"""Launchers of the attention kernels (``device.py``): geometry and strides of the spatial /
temporal layouts, side-input pointers, mask descriptors, the packed-or-looping choice and the grid.
Arguments are validated by the op (``stquery/ops``) before they get here; :func:`supports` lists
only what these kernels cannot run.
"""
from __future__ import annotations

import torch
import triton

from stquery.kernels import empty
from stquery.kernels import interpreting as _interpreting
from stquery.ops.attention.problem import DENSE, MIX, NONE, AttnProblem

from .configs import DTYPES, MAX_HEAD_DIM_FP32, block_d, config, precision
from .device import LOG2E, _attn_bwd_dkdv, _attn_bwd_dq, _attn_bwd_one_block, _attn_fwd

_dummies: dict = {}
_tables: dict = {}  # mask descriptor tables by (descriptors, device): a few per model


def _dummy(device, dtype) -> torch.Tensor:
    key = (str(device), dtype)
    if key not in _dummies:
        _dummies[key] = torch.zeros(1, dtype=dtype, device=device)
    return _dummies[key]


def _geometry(q, k, prob: AttnProblem):
    """(B, L, H, Nq, Nk): sequences are (b, l, h), B * L * H of them."""
    if prob.frames:
        return q.shape[0] // prob.frames, q.shape[1], q.shape[2], prob.frames, prob.frames
    return q.shape[0], 1, q.shape[2], q.shape[1], k.shape[1]


def _strides(x, prob: AttnProblem):
    """(s_b, s_l, s_h, s_n) of a ``[G, N, H, *]`` / ``[B*T, L, H, *]`` tensor."""
    if prob.frames:
        return prob.frames * x.stride(0), x.stride(1), x.stride(2), x.stride(0)
    return x.stride(0), 0, x.stride(2), x.stride(1)


def _args(prefix, x, prob):
    return {f"{prefix}_{n}": s for n, s in zip("blhn", _strides(x, prob))}


def _mask_table(prob: AttnProblem, n_max: int, device) -> torch.Tensor:
    """int32 ``[max(p, 1)]``, one descriptor per mask: ``kind + 4 * (param + 1)``, param the dense
    buffer index or the radius; a radius of at least ``n_max = max(Nq, Nk)`` bounds nothing and is
    sent as unbounded (-1), which keeps huge radii inside int32."""
    descs, n_dense = [], 0
    for kind, radius in zip(prob.kinds, prob.radii):
        if kind == DENSE:
            param, n_dense = n_dense, n_dense + 1
        else:
            param = -1 if radius < 0 or radius >= n_max else int(radius)
        descs.append(kind + 4 * (param + 1))
    key = (tuple(descs), str(device))
    if key not in _tables:
        _tables[key] = torch.tensor(descs or [0], dtype=torch.int32, device=device)
    return _tables[key]


def _common(q, k, alpha, dense, key_padding, frame_lengths, prob: AttnProblem) -> dict:
    """Arguments shared by every kernel (pointers to the side inputs, geometry, masks)."""
    B, L, H, Nq, Nk = _geometry(q, k, prob)
    dev = q.device
    if alpha is None:
        alpha_t, sa = _dummy(dev, torch.float32), (0, 0, 0, 0)
    else:
        # routing weights are tiny ([G, H, p]); float32 keeps the compiled variants enumerable
        alpha_t = alpha if alpha.dtype == torch.float32 else alpha.float()
        if prob.frames:
            sa = alpha_t.stride()
        else:
            sa = (alpha_t.stride(0), 0, alpha_t.stride(1), alpha_t.stride(2))
    dense_t = dense if dense is not None else _dummy(dev, torch.bool)
    sd = dense.stride() if dense is not None else (0, 0, 0)
    kpad_t = key_padding if key_padding is not None else _dummy(dev, torch.bool)
    skp = key_padding.stride() if key_padding is not None else (0, 0)
    flen_t = frame_lengths if frame_lengths is not None else _dummy(dev, torch.int64)
    gs, ge = (prob.global_start, prob.global_end) if prob.mode != NONE else (0, 0)
    return dict(
        alpha_ptr=alpha_t, dense_ptr=dense_t, kpad_ptr=kpad_t, flen_ptr=flen_t,
        sa_b=sa[0], sa_l=sa[1], sa_h=sa[2], sa_p=sa[3], sd_m=sd[0], sd_q=sd[1], sd_k=sd[2],
        skp_b=skp[0], skp_n=skp[1],
        n_seq=B * L * H, L=L, H=H, Nq=Nq, Nk=Nk, d=q.shape[-1],
        qk_scale=prob.scale * LOG2E, n_masks=prob.p if prob.mode != NONE else 0,
        masks_ptr=_mask_table(prob, max(Nq, Nk), dev), g_start=gs, g_end=ge,
        has_kpad=int(key_padding is not None), has_flen=int(frame_lengths is not None),
        MODE=prob.mode, BLOCK_D=block_d(q.shape[-1]), PRECISION=precision(q.dtype),
    )


def _packing(Nq: int, Nk: int, block_m: int, block_n: int) -> int:
    """Whole sequences per tile (0: a sequence does not fit, use the looping kernels)."""
    return min(block_m // max(Nq, 1), block_n // max(Nk, 1))


def supports(op: str, q, k, v, alpha, dense, key_padding, frame_lengths, prob: AttnProblem) -> list[str]:
    """Reasons the Triton kernels cannot run ``op`` on this call (empty list: they can); the
    arguments as ``attention_fwd`` takes them."""
    if op != "attention":
        return [f"kernels.attention does not implement {op!r}"]
    reasons = []
    if _interpreting():
        if q.device.type != "cpu":
            reasons.append(f"TRITON_INTERPRET=1 runs on CPU tensors, got device {q.device}")
        if q.dtype == torch.bfloat16:
            reasons.append("bfloat16 is not supported under TRITON_INTERPRET=1 (the interpreter's "
                           "bfloat16 arithmetic is inexact)")
    elif q.device.type != "cuda":
        reasons.append(f"needs a CUDA device, got {q.device.type}")
    elif torch.version.hip is None and torch.cuda.get_device_capability(q.device) < (8, 0):
        major, minor = torch.cuda.get_device_capability(q.device)
        reasons.append(f"needs compute capability >= 8.0 (kernels are built and checked for "
                       f"sm_80/sm_90), got {major}.{minor}")
    if q.dtype not in DTYPES:
        reasons.append(f"dtype {q.dtype} not supported (float16, bfloat16, float32)")
    d = q.shape[-1]
    if q.dtype == torch.float32 and d > MAX_HEAD_DIM_FP32:
        reasons.append(f"float32 with head width d={d} > {MAX_HEAD_DIM_FP32} is not supported "
                       "(its tiles spill registers; the torch backend runs it)")
    if dense is not None and dense.dim() == 3 and dense.numel():
        span = sum((n - 1) * abs(st) for n, st in zip(dense.shape[1:], dense.stride()[1:]))
        if span >= 2 ** 31:
            reasons.append(f"one dense mask spans {span} elements; in-kernel offsets are 32-bit")
    if q.dim() == 4 and max(q.shape[1], q.shape[2]) >= 2 ** 21:
        reasons.append(f"L or H = {max(q.shape[1], q.shape[2])} >= 2**21 (tile index arithmetic)")
    return reasons


def attention_fwd(q, k, v, alpha, dense, key_padding, frame_lengths, prob: AttnProblem):
    """Forward pass; returns ``(out [q.shape, q.dtype], stats [q.shape[:3] + (P,)] float32)``.

    ``stats[..., j]`` is ``log2`` of the softmax normaliser (``m + log2 l``) of mask j (MIX) or of
    the single softmax (NONE / SCALE), ``-inf`` for a row with no visible key.
    """
    out = empty(q.shape, q.dtype, q.device)
    stats = empty(tuple(q.shape[:3]) + (prob.stats_width,), torch.float32, q.device)
    args = _common(q, k, alpha, dense, key_padding, frame_lengths, prob)
    n_seq, Nq, Nk = args["n_seq"], args["Nq"], args["Nk"]
    if out.numel() == 0:
        return out, stats
    if Nk == 0:
        return out.zero_(), stats.fill_(float("-inf"))
    bd = args["BLOCK_D"]
    seqs = _packing(Nq, Nk, *config("fwd_one", q.dtype, bd, prob.mode)[:2])
    if seqs:
        block_m, block_n, warps, stages = config("fwd_one", q.dtype, bd, prob.mode)
        n_blocks, grid, one_block = 1, triton.cdiv(n_seq, seqs), True
    else:
        block_m, block_n, warps, stages = config("fwd_loop", q.dtype, bd, prob.mode)
        seqs, n_blocks, one_block = 1, triton.cdiv(Nq, block_m), False
        grid = n_blocks * n_seq
    _attn_fwd[(grid,)](
        q, k, v, out, stats, **_args("sq", q, prob), **_args("sk", k, prob), **_args("sv", v, prob),
        **_args("so", out, prob), **_args("ss", stats, prob), **args,
        seqs_per_prog=seqs, n_blocks=n_blocks, ONE_BLOCK=one_block,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
    )
    return out, stats


def attention_bwd(grad_out, q, k, v, out, stats, alpha, dense, key_padding, frame_lengths,
                  prob: AttnProblem):
    """Backward pass; returns ``(dq, dk, dv, dalpha)`` (dalpha in alpha's expanded shape and
    dtype, None without routing)."""
    dq = empty(q.shape, q.dtype, q.device)
    dk = empty(k.shape, k.dtype, k.device)
    dv = empty(v.shape, v.dtype, v.device)
    args = _common(q, k, alpha, dense, key_padding, frame_lengths, prob)
    n_seq, Nq, Nk, n_masks = args["n_seq"], args["Nq"], args["Nk"], args["n_masks"]
    bd = args["BLOCK_D"]
    routed = prob.mode != NONE
    if q.numel() == 0 or k.numel() == 0 or Nk == 0:
        return (dq.zero_(), dk.zero_(), dv.zero_(),
                torch.zeros_like(alpha) if routed else None)
    strides = dict(**_args("sq", q, prob), **_args("sk", k, prob), **_args("sv", v, prob),
                   **_args("sdo", grad_out, prob))
    seqs = _packing(Nq, Nk, *config("bwd_one", q.dtype, bd, prob.mode)[:2])
    if seqs:
        block_m, block_n, warps, stages = config("bwd_one", q.dtype, bd, prob.mode)
        dalpha = empty((1, n_seq, n_masks), torch.float32, q.device) if routed else _dummy(q.device, torch.float32)
        _attn_bwd_one_block[(triton.cdiv(n_seq, seqs),)](
            q, k, v, grad_out, dq, dk, dv, dalpha_ptr=dalpha, **strides,
            **_args("sdq", dq, prob), **_args("sdk", dk, prob), **_args("sdv", dv, prob), **args,
            seqs_per_prog=seqs, n_blocks=1, scale=prob.scale,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
        )
    else:
        block_m, block_n, warps, stages = config("bwd_dq", q.dtype, bd, prob.mode)
        n_qblocks = triton.cdiv(Nq, block_m)
        delta = empty(stats.shape, torch.float32, q.device)
        # MIX: alpha_j / l_j per row, recomputed by the dq kernel for the dk/dv kernel
        coef = empty(stats.shape, torch.float32, q.device) if prob.mode == MIX else _dummy(q.device, torch.float32)
        dalpha = (empty((n_qblocks, n_seq, n_masks), torch.float32, q.device) if routed
                  else _dummy(q.device, torch.float32))
        _attn_bwd_dq[(n_qblocks * n_seq,)](
            q, k, v, out, grad_out, dq, stats, delta, coef, dalpha_ptr=dalpha, **strides,
            **_args("ss", stats, prob),
            **_args("so", out, prob), **_args("sdq", dq, prob), **args,
            seqs_per_prog=1, n_blocks=n_qblocks, scale=prob.scale,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
        )
        block_m, block_n, warps, stages = config("bwd_dkdv", q.dtype, bd, prob.mode)
        n_kblocks = triton.cdiv(Nk, block_n)
        _attn_bwd_dkdv[(n_kblocks * n_seq,)](
            q, k, v, grad_out, dk, dv, stats, delta, coef, **strides, **_args("ss", stats, prob),
            **_args("sdk", dk, prob), **_args("sdv", dv, prob), **args,
            seqs_per_prog=1, n_blocks=n_kblocks, scale=prob.scale,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
        )
    if not routed:
        return dq, dk, dv, None
    return dq, dk, dv, dalpha.sum(0).view(alpha.shape).to(alpha.dtype)
