"""Token pooling kernels: LinVT multi-scale token pooling and RED-VILLM spatio-temporal pooling.

``multiscale_pool`` (LinVT, Sec. 3.2.1 "Multi-scale Token Pooling"; docs/ops.md §2.5): for each scale s,
the mean over consecutive non-overlapping windows of s tokens (a last partial window averages what
it has), concatenated in scale order::

    pooled[b, off_s + w] = 1 / |W_w| * sum_{i in W_w} y[b, i],   W_w = [w*s, min((w+1)*s, k))

Power-of-two scales (<= 256) are pooled from one register tile by a pairwise tree, so every token is
read once for all scales (``_store_pooled``, shared with the fused gather of ``kernels/topk/``);
other scales take one window-mean launch per scale.

``st_pool`` (RED-VILLM / Video-ChatGPT): x ``[B, T, P, C]`` -> temporal ``[B, T, C]`` (mean over P)
and spatial ``[B, P, C]`` (mean over T), both from one pass over x.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from stquery.kernels import device_reason, empty
from stquery.ops.common import KERNEL_DTYPES as _DTYPES
from stquery.ops.pool.problem import pooled_length

# Launch configurations: each is a kernel's constexprs and num_warps, passed as ``**config`` to the
# launch and to the AOT test (tests/kernels/test_topk_aot.py), which compiles every entry.


def token_tile(block_k: int, block_c: int, num_warps: int) -> dict:
    """A ``[BLOCK_K, BLOCK_C]`` token tile for ``_store_pooled`` (LOG_BK = log2 BLOCK_K)."""
    return dict(BLOCK_K=block_k, BLOCK_C=block_c, LOG_BK=block_k.bit_length() - 1,
                num_warps=num_warps)


# Tree pooling: the token tile must hold the largest scale; 4096-element tiles. num_warps is what
# compiles without spills for sm_90 and sm_80 (the AOT test; BK64 spills predicates at 8 warps).
TREE_CONFIGS = {bk: token_tile(bk, 4096 // bk, 4 if bk == 64 else 8) for bk in (16, 32, 64, 128, 256)}
MAX_TREE_SCALE = 256
WINDOW_CONFIG = dict(BLOCK_W=16, BLOCK_C=128, num_warps=4)
POOL_BWD_CONFIG = dict(BLOCK_K=32, BLOCK_C=128, num_warps=8)
ST_POOL_CONFIG = dict(BLOCK_P=64, BLOCK_C=64, num_warps=8)
ST_REDUCE_CONFIG = dict(BLOCK_C=256, num_warps=4)
ST_BWD_CONFIG = dict(BLOCK_P=32, BLOCK_C=128, num_warps=8)


# ---------------------------------------------------------------------------------------------
# Shared device helpers (also used by kernels/topk/)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _row_tile(n_rows, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of a ``[B, n_rows, C]`` tensor on the grid (row blocks, C blocks, B).

    Returns (pid_r, pid_b, offs_r ``[BLOCK_R]``, offs_c ``[BLOCK_C]``, mask_r, mask_c); pid_b is
    int64 so that ``pid_b * stride`` cannot overflow.
    """
    pid_r = tl.program_id(0)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid_r, pid_b, offs_r, offs_c, offs_r < n_rows, offs_c < C


@triton.jit
def _store_pooled(tile, out_ptr, stride_on, pid_k, k, offs_c, mask_c, tab_ptr, n_scales,
                  BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, LOG_BK: tl.constexpr):
    """Pool a tile of tokens ``pid_k*BLOCK_K + [0, BLOCK_K)`` at every power-of-two scale.

    tile: ``[BLOCK_K, BLOCK_C]`` fp32, rows >= k already zero. Level L of the pairwise tree holds
    the window sums of size 2**L; a scale s = 2**L (from the ``[n_scales, 2]`` table of
    (s, output row offset)) stores level L divided by the window's token count.
    """
    for L in tl.static_range(LOG_BK + 1):
        if L > 0:
            # [BLOCK_K >> L, BLOCK_C]: sums of windows of 2**L tokens
            tile = tl.sum(tl.reshape(tile, [BLOCK_K >> L, 2, BLOCK_C]), axis=1)
        for j in range(n_scales):
            s = tl.load(tab_ptr + 2 * j)
            if s == (1 << L):
                off = tl.load(tab_ptr + 2 * j + 1)
                # [BLOCK_K >> L] window index within this scale
                w = pid_k * (BLOCK_K >> L) + tl.arange(0, BLOCK_K >> L)
                n_win = (k + s - 1) // s
                cnt = tl.maximum(tl.minimum(k - w * s, s), 1).to(tl.float32)
                ptrs = out_ptr + (off + w).to(tl.int64)[:, None] * stride_on + offs_c[None, :]
                tl.store(ptrs, (tile / cnt[:, None]).to(out_ptr.dtype.element_ty),
                         mask=(w < n_win)[:, None] & mask_c[None, :])


@triton.jit
def _pool_grad_rows(grad_ptr, stride_gn, rows, mask_rows, offs_c, mask_c, tab_ptr, n_scales, k,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Gradient of multi-scale pooling at token rows ``rows`` ([BLOCK_R], positions in [0, k)).

    Returns ``[BLOCK_R, BLOCK_C]`` fp32: sum over scales of grad[off_s + i // s] / |W_{i // s}|.
    grad_ptr points at this batch row of the pooled gradient.
    """
    rows = tl.where(mask_rows, rows, 0)
    m2 = mask_rows[:, None] & mask_c[None, :]
    # [BLOCK_R, BLOCK_C]
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for j in range(n_scales):
        s = tl.load(tab_ptr + 2 * j)
        off = tl.load(tab_ptr + 2 * j + 1)
        # [BLOCK_R]
        w = rows // s
        cnt = tl.minimum(k - w * s, s).to(tl.float32)
        # [BLOCK_R, BLOCK_C]
        g = tl.load(grad_ptr + (off + w).to(tl.int64)[:, None] * stride_gn + offs_c[None, :],
                    mask=m2, other=0.0).to(tl.float32)
        acc += g / cnt[:, None]
    return acc


# ---------------------------------------------------------------------------------------------
# Multi-scale pooling kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _pool_tree_kernel(y_ptr, stride_yb, stride_yk, out_ptr, stride_ob, stride_on, tab_ptr,
                      n_scales, k, C,
                      BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, LOG_BK: tl.constexpr):
    pid_k, pid_b, offs_k, offs_c, mask_k, mask_c = _row_tile(k, C, BLOCK_K, BLOCK_C)
    # [BLOCK_K, BLOCK_C]
    tile = tl.load(y_ptr + pid_b * stride_yb + offs_k.to(tl.int64)[:, None] * stride_yk
                   + offs_c[None, :], mask=mask_k[:, None] & mask_c[None, :], other=0.0)
    _store_pooled(tile.to(tl.float32), out_ptr + pid_b * stride_ob, stride_on, pid_k, k, offs_c,
                  mask_c, tab_ptr, n_scales, BLOCK_K, BLOCK_C, LOG_BK)


@triton.jit
def _window_mean_kernel(y_ptr, stride_yb, stride_yk, out_ptr, stride_ob, stride_on, s, off, k, C,
                        BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """One scale of any size: out[off + w] = mean of y[w*s : min((w+1)*s, k)]."""
    n_win = (k + s - 1) // s
    # w [BLOCK_W]: this program's windows
    _, pid_b, w, offs_c, mask_w, mask_c = _row_tile(n_win, C, BLOCK_W, BLOCK_C)
    y_row = y_ptr + pid_b * stride_yb
    # [BLOCK_W, BLOCK_C]
    acc = tl.zeros([BLOCK_W, BLOCK_C], dtype=tl.float32)
    for j in range(s):
        rows = w * s + j
        m = (mask_w & (rows < k))[:, None] & mask_c[None, :]
        acc += tl.load(y_row + rows.to(tl.int64)[:, None] * stride_yk + offs_c[None, :],
                       mask=m, other=0.0).to(tl.float32)
    cnt = tl.maximum(tl.minimum(k - w * s, s), 1).to(tl.float32)
    tl.store(out_ptr + pid_b * stride_ob + (off + w).to(tl.int64)[:, None] * stride_on
             + offs_c[None, :], (acc / cnt[:, None]).to(out_ptr.dtype.element_ty),
             mask=mask_w[:, None] & mask_c[None, :])


@triton.jit
def _pool_bwd_kernel(grad_ptr, stride_gb, stride_gn, dy_ptr, stride_db, stride_dk, tab_ptr,
                     n_scales, k, C, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    _, pid_b, offs_k, offs_c, mask_k, mask_c = _row_tile(k, C, BLOCK_K, BLOCK_C)
    # [BLOCK_K, BLOCK_C]
    dy = _pool_grad_rows(grad_ptr + pid_b * stride_gb, stride_gn, offs_k, mask_k, offs_c, mask_c,
                         tab_ptr, n_scales, k, BLOCK_K, BLOCK_C)
    tl.store(dy_ptr + pid_b * stride_db + offs_k.to(tl.int64)[:, None] * stride_dk + offs_c[None, :],
             dy.to(dy_ptr.dtype.element_ty), mask=mask_k[:, None] & mask_c[None, :])


# ---------------------------------------------------------------------------------------------
# Spatio-temporal pooling kernels
# ---------------------------------------------------------------------------------------------
@triton.jit
def _st_pool_kernel(x_ptr, stride_xb, stride_xt, stride_xp, temporal_ptr, stride_tb, stride_tt,
                    spatial_ptr, stride_sb, stride_sp, partial_ptr, T, P, C,
                    ONE_P_BLOCK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """One pass over x: each [BLOCK_P, BLOCK_C] tile adds into the spatial sum (over t, kept in
    registers) and gives one temporal partial sum (over its patches). With several patch blocks
    the temporal partials go to an fp32 ``[B, n_pblocks, T, C]`` buffer (2/BLOCK_P of x's bytes)
    that ``_st_reduce_kernel`` sums in a fixed order, so the result is deterministic."""
    pid_p, pid_b, offs_p, offs_c, mask_p, mask_c = _row_tile(P, C, BLOCK_P, BLOCK_C)
    m2 = mask_p[:, None] & mask_c[None, :]
    x_tile = x_ptr + pid_b * stride_xb + offs_p.to(tl.int64)[:, None] * stride_xp + offs_c[None, :]
    # [BLOCK_P, BLOCK_C]
    acc_s = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for t in range(T):
        # [BLOCK_P, BLOCK_C]
        xv = tl.load(x_tile + t * stride_xt, mask=m2, other=0.0).to(tl.float32)
        acc_s += xv
        # [BLOCK_C]
        part = tl.sum(xv, axis=0)
        if ONE_P_BLOCK:
            tl.store(temporal_ptr + pid_b * stride_tb + t * stride_tt + offs_c,
                     (part / P).to(temporal_ptr.dtype.element_ty), mask=mask_c)
        else:
            n_pb = tl.num_programs(0)
            tl.store(partial_ptr + ((pid_b * n_pb + pid_p) * T + t) * C + offs_c, part, mask=mask_c)
    tl.store(spatial_ptr + pid_b * stride_sb + offs_p.to(tl.int64)[:, None] * stride_sp
             + offs_c[None, :], (acc_s / T).to(spatial_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _st_reduce_kernel(partial_ptr, temporal_ptr, stride_tb, stride_tt, n_pb, T, P, C,
                      BLOCK_C: tl.constexpr):
    t = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    # [BLOCK_C]
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for pb in range(n_pb):
        acc += tl.load(partial_ptr + ((pid_b * n_pb + pb) * T + t) * C + offs_c, mask=mask_c,
                       other=0.0)
    tl.store(temporal_ptr + pid_b * stride_tb + t * stride_tt + offs_c,
             (acc / P).to(temporal_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _st_pool_bwd_kernel(gt_ptr, stride_gtb, stride_gtt, gs_ptr, stride_gsb, stride_gsp,
                        dx_ptr, stride_db, stride_dt, stride_dp, T, P, C,
                        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx[b, t, p] = grad_temporal[b, t] / P + grad_spatial[b, p] / T."""
    pid_bt = tl.program_id(0)
    pid_p = tl.program_id(1)
    pid_c = tl.program_id(2)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask_c = offs_c < C
    m2 = mask_p[:, None] & mask_c[None, :]
    # [BLOCK_C]
    g_t = tl.load(gt_ptr + b * stride_gtb + t * stride_gtt + offs_c, mask=mask_c, other=0.0)
    # [BLOCK_P, BLOCK_C]
    g_s = tl.load(gs_ptr + b * stride_gsb + offs_p.to(tl.int64)[:, None] * stride_gsp
                  + offs_c[None, :], mask=m2, other=0.0)
    # [BLOCK_P, BLOCK_C]
    dx = (g_t.to(tl.float32) / P)[None, :] + g_s.to(tl.float32) / T
    tl.store(dx_ptr + b * stride_db + t * stride_dt + offs_p.to(tl.int64)[:, None] * stride_dp
             + offs_c[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m2)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _on_device(t: torch.Tensor) -> bool:
    return device_reason(t.device.type) is None


MAX_GRID_YZ = 65535  # CUDA's limit on grid dims y and z, where the launchers put the batch


def tensor_reasons(name: str, t: torch.Tensor | None) -> list[str]:
    """Why the Triton kernels can't take tensor ``t`` (device, dtype, grid size); the op's checks
    have validated its shape and strides."""
    if t is None or not isinstance(t, torch.Tensor):
        return []
    out = []
    if not _on_device(t):
        out.append(f"{name} is on {t.device}: Triton needs CUDA (or TRITON_INTERPRET=1 on CPU)")
    if t.is_floating_point() and t.dtype not in _DTYPES:
        out.append(f"{name} has dtype {t.dtype}; the kernels take float16, bfloat16, float32")
    if t.dim() > 1 and t.shape[0] > MAX_GRID_YZ:
        out.append(f"{name} has batch {t.shape[0]}; the kernels put the batch on a grid axis of at most {MAX_GRID_YZ}")
    return out


def tree_scales(scales) -> bool:
    """True when every scale is a power of two <= MAX_TREE_SCALE (one-read tree pooling)."""
    return len(scales) > 0 and all(s >= 1 and s & (s - 1) == 0 and s <= MAX_TREE_SCALE
                                   for s in scales)


@functools.lru_cache(maxsize=256)
def _scale_table_cached(scales: tuple, k: int, device: str) -> torch.Tensor:
    rows, off = [], 0
    for s in scales:
        rows += [s, off]
        off += -(-k // s)
    return torch.tensor(rows, dtype=torch.int32, device=device)


def scale_table(scales, k: int, device) -> torch.Tensor:
    """int32 ``[n_scales, 2]`` (flattened) of (s, first output row of scale s); cached per call site
    so steady-state calls launch no host-to-device copy."""
    return _scale_table_cached(tuple(int(s) for s in scales), int(k), str(device))


def tree_config(scales) -> dict:
    bk = max(16, max(scales))
    return TREE_CONFIGS[bk]


def supports(op: str, *args) -> list[str]:
    """Reasons the Triton pooling kernels can't run ``op`` ([] = they can); ``args`` as in
    :class:`stquery.backends.Backend` (the input tensor first)."""
    names = {"multiscale_pool": "y", "st_pool": "x"}
    if op not in names:
        return [f"kernels.pool does not implement {op!r}"]
    return tensor_reasons(names[op], args[0] if args else None)


def multiscale_pool(y: torch.Tensor, scales) -> torch.Tensor:
    """Multi-scale token pooling. y ``[B, k, C]`` -> ``[B, sum_s ceil(k / s), C]`` (docs/ops.md §2.5)."""
    B, k, C = y.shape
    scales = tuple(int(s) for s in scales)
    out = empty((B, pooled_length(k, scales), C), y.dtype, y.device)
    if B == 0 or k == 0 or C == 0:
        return out
    if tree_scales(scales):
        cfg = tree_config(scales)
        grid = (triton.cdiv(k, cfg["BLOCK_K"]), triton.cdiv(C, cfg["BLOCK_C"]), B)
        _pool_tree_kernel[grid](
            y, y.stride(0), y.stride(1), out, out.stride(0), out.stride(1),
            scale_table(scales, k, y.device), len(scales), k, C, **cfg)
        return out
    cfg = WINDOW_CONFIG
    off = 0
    for s in scales:
        n_win = -(-k // s)
        grid = (triton.cdiv(n_win, cfg["BLOCK_W"]), triton.cdiv(C, cfg["BLOCK_C"]), B)
        _window_mean_kernel[grid](
            y, y.stride(0), y.stride(1), out, out.stride(0), out.stride(1), s, off, k, C,
            **cfg)
        off += n_win
    return out


def multiscale_pool_bwd(grad: torch.Tensor, k: int, scales) -> torch.Tensor:
    """dy ``[B, k, C]`` from the pooled gradient ``[B, sum_s ceil(k / s), C]``."""
    B, _, C = grad.shape
    scales = tuple(int(s) for s in scales)
    dy = empty((B, k, C), grad.dtype, grad.device)
    if B == 0 or k == 0 or C == 0:
        return dy
    cfg = POOL_BWD_CONFIG
    grid = (triton.cdiv(k, cfg["BLOCK_K"]), triton.cdiv(C, cfg["BLOCK_C"]), B)
    _pool_bwd_kernel[grid](grad, grad.stride(0), grad.stride(1), dy, dy.stride(0), dy.stride(1),
                           scale_table(scales, k, grad.device), len(scales), k, C, **cfg)
    return dy


def st_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[B, T, P, C]`` -> (temporal ``[B, T, C]`` = mean over P, spatial ``[B, P, C]`` = mean
    over T), one read of x (RED-VILLM; docs/ops.md §2.5)."""
    B, T, P, C = x.shape
    temporal = empty((B, T, C), x.dtype, x.device)
    spatial = empty((B, P, C), x.dtype, x.device)
    if x.numel() == 0:
        return temporal, spatial
    cfg = ST_POOL_CONFIG
    n_pb = triton.cdiv(P, cfg["BLOCK_P"])
    partial = temporal if n_pb == 1 else torch.empty((B, n_pb, T, C), dtype=torch.float32,
                                                     device=x.device)
    grid = (n_pb, triton.cdiv(C, cfg["BLOCK_C"]), B)
    _st_pool_kernel[grid](x, x.stride(0), x.stride(1), x.stride(2), temporal, temporal.stride(0),
                          temporal.stride(1), spatial, spatial.stride(0), spatial.stride(1),
                          partial, T, P, C, ONE_P_BLOCK=n_pb == 1, **cfg)
    if n_pb > 1:
        rc = ST_REDUCE_CONFIG
        _st_reduce_kernel[(T, triton.cdiv(C, rc["BLOCK_C"]), B)](
            partial, temporal, temporal.stride(0), temporal.stride(1), n_pb, T, P, C, **rc)
    return temporal, spatial


def st_pool_bwd(grad_temporal: torch.Tensor, grad_spatial: torch.Tensor) -> torch.Tensor:
    """dx ``[B, T, P, C]`` = grad_temporal[:, :, None] / P + grad_spatial[:, None] / T."""
    B, T, C = grad_temporal.shape
    P = grad_spatial.shape[1]
    dx = empty((B, T, P, C), grad_temporal.dtype, grad_temporal.device)
    if dx.numel() == 0:
        return dx
    cfg = ST_BWD_CONFIG
    grid = (B * T, triton.cdiv(P, cfg["BLOCK_P"]), triton.cdiv(C, cfg["BLOCK_C"]))
    _st_pool_bwd_kernel[grid](grad_temporal, grad_temporal.stride(0), grad_temporal.stride(1),
                              grad_spatial, grad_spatial.stride(0), grad_spatial.stride(1),
                              dx, dx.stride(0), dx.stride(1), dx.stride(2), T, P, C, **cfg)
    return dx


# ---------------------------------------------------------------------------------------------
# Every configuration the launchers above can launch (compiled ahead of time by the AOT test)
# ---------------------------------------------------------------------------------------------
AOT_DTYPES = ("fp16", "bf16", "fp32")


def aot_config(name, fn, ptrs, cfg, **constexprs):
    """One entry for ``tests/kernels/aot.py``: launch configuration ``cfg`` (constexprs and
    num_warps) plus the specialisations ``constexprs``; pointer args typed by ``ptrs``, others i32."""
    consts = {**{a: v for a, v in cfg.items() if a != "num_warps"}, **constexprs}
    sig = {a: ptrs[a] if a.endswith("_ptr") else "i32" for a in fn.arg_names if a not in consts}
    return dict(name=name, fn=fn, signature=sig, constexprs=consts, num_warps=cfg["num_warps"],
                num_stages=3)


def aot_configs() -> list[dict]:
    out = []
    for dt in AOT_DTYPES:
        p = f"*{dt}"
        for cfg in TREE_CONFIGS.values():
            out.append(aot_config(f"pool_tree BK{cfg['BLOCK_K']} BC{cfg['BLOCK_C']} {dt}",
                                  _pool_tree_kernel, dict(y_ptr=p, out_ptr=p, tab_ptr="*i32"), cfg))
        out.append(aot_config(f"window_mean {dt}", _window_mean_kernel, dict(y_ptr=p, out_ptr=p),
                              WINDOW_CONFIG))
        out.append(aot_config(f"pool_bwd {dt}", _pool_bwd_kernel,
                              dict(grad_ptr=p, dy_ptr=p, tab_ptr="*i32"), POOL_BWD_CONFIG))
        for one in (True, False):
            out.append(aot_config(f"st_pool {'one' if one else 'multi'}-pblock {dt}",
                                  _st_pool_kernel,
                                  dict(x_ptr=p, temporal_ptr=p, spatial_ptr=p,
                                       partial_ptr=p if one else "*fp32"),
                                  ST_POOL_CONFIG, ONE_P_BLOCK=one))
        out.append(aot_config(f"st_reduce {dt}", _st_reduce_kernel,
                              dict(partial_ptr="*fp32", temporal_ptr=p), ST_REDUCE_CONFIG))
        out.append(aot_config(f"st_pool_bwd {dt}", _st_pool_bwd_kernel,
                              dict(gt_ptr=p, gs_ptr=p, dx_ptr=p), ST_BWD_CONFIG))
    return out
