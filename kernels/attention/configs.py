"""Compile-time choices of the attention kernels: block sizes per kernel, dtype class, head-width
bucket and Triton version, the dot precision, and :func:`aot_configs`, every configuration the
launchers (``launch.py``) can launch, which ``tests/kernels/test_attention_aot.py`` compiles for
sm_90 and sm_80 without a GPU.
"""
from __future__ import annotations

import torch
import triton

from stquery.kernels import triton36
from stquery.ops.attention.problem import MIX, NONE, SCALE

from .device import _attn_bwd_dkdv, _attn_bwd_dq, _attn_bwd_one_block, _attn_fwd

# Block configurations: kernel -> dtype class -> BLOCK_D -> (BLOCK_M, BLOCK_N, num_warps,
# num_stages). Every entry is compiled for sm_90 and sm_80 by
# tests/kernels/test_attention_aot.py, which checks that none spills to local memory and that all
# fit 99 KiB of shared memory. "one" kernels hold whole sequences (packed, block-diagonal tiles);
# the others stream key / query blocks. The routed modes keep several [BLOCK_M, BLOCK_N] tiles
# live (scores, mask bits, probabilities, weights), which is what bounds the tile sizes.
HEAD_DIM_BUCKETS = (64, 128, 256)
CONFIGS = {
    "fwd_one": {"half": {64: (64, 64, 8, 1), 128: (16, 16, 4, 1), 256: (32, 32, 8, 1)},
                "fp32": {64: (16, 16, 4, 1)}},
    "fwd_loop": {"half": {64: (64, 64, 8, 2), 128: (64, 32, 8, 2), 256: (32, 32, 8, 1)},
                 "fp32": {64: (32, 16, 4, 1)}},
    "bwd_one": {"half": {64: (32, 32, 4, 1), 128: (32, 32, 4, 1), 256: (16, 16, 4, 1)},
                "fp32": {64: (16, 16, 4, 1)}},
    "bwd_dq": {"half": {64: (64, 32, 8, 2), 128: (32, 32, 4, 2), 256: (16, 32, 8, 1)},
               "fp32": {64: (16, 32, 8, 1)}},
    "bwd_dkdv": {"half": {64: (64, 32, 8, 2), 128: (32, 64, 8, 2), 256: (32, 32, 8, 1)},
                 "fp32": {64: (16, 16, 4, 1)}},
}
# Plain attention (no masks) needs fewer registers: its backward packs T <= 64 at d <= 64 (the
# routed modes spill at 64x64 and stay at 32x32, looping for T = 33..64).
PLAIN_CONFIGS = {"bwd_one": {"half": {64: (64, 64, 8, 1)}}}
# float32 (three TF32 products per dot) needs about twice the registers of float16: beyond
# d = 64 no tile size we tried compiles without spills, so wider float32 heads are declined.
MAX_HEAD_DIM_FP32 = 64


# Under Triton 3.6 these replace entries of CONFIGS that spill there. fwd_loop half D64: the mix
# far-mask path spills 5 registers at 64x64 on sm_80 (with 1 or 2 stages); 64x32 does not.
TRITON36_CONFIGS = {
    "fwd_one": {"half": {128: (32, 32, 8, 1)}, "fp32": {64: (16, 16, 8, 1)}},
    "fwd_loop": {"half": {64: (64, 32, 8, 2)}},
    "bwd_dq": {"half": {128: (32, 32, 4, 1)}},
    "bwd_dkdv": {"half": {256: (16, 32, 8, 1)}},
}


def config(kernel: str, dtype: torch.dtype, block_d: int, mode: int):
    group = "fp32" if dtype == torch.float32 else "half"
    plain = PLAIN_CONFIGS.get(kernel, {}).get(group, {}) if mode == NONE else {}
    old = TRITON36_CONFIGS.get(kernel, {}).get(group, {}) if triton36() else {}
    return plain.get(block_d) or old.get(block_d) or CONFIGS[kernel][group][block_d]


DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def block_d(d: int) -> int:
    # d <= 64 shares the 64 bucket: the short-T kernels are memory-bound, the masked columns
    # cost no memory traffic, and fewer variants are compiled
    return max(64, triton.next_power_of_2(d))


def precision(dtype: torch.dtype) -> str:
    # float32 inputs: three TF32 products (hi*hi + hi*lo + lo*hi) on the tensor cores, about
    # float32 accuracy; plain "ieee" runs on the FMA units and needs far more registers
    return "tf32x3" if dtype == torch.float32 else "tf32"



def _signature(fn, dtype: str, constexprs: dict) -> dict:
    """Triton signature of ``fn`` for q/k/v of ``dtype``: float pointers for the activations,
    fixed types for the side inputs, i32 for every integer, fp32 for the scales."""
    fixed = {"stats_ptr": "*fp32", "delta_ptr": "*fp32", "coef_ptr": "*fp32", "alpha_ptr": "*fp32", "dalpha_ptr": "*fp32",
             "dense_ptr": "*i1", "kpad_ptr": "*i1", "flen_ptr": "*i64", "masks_ptr": "*i32"}
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in fixed:
            sig[name] = fixed[name]
        elif name.endswith("_ptr"):
            sig[name] = f"*{dtype}"
        elif name in ("qk_scale", "scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _aligned_args(sig: dict) -> list[str]:
    """Arguments Triton specialises as multiples of 16 in the common case (16-byte aligned
    activations, d and the activation strides multiples of 16): the variant whose loads are
    vectorised, the one that runs in practice. Unaligned inputs (e.g. d = 40) run a scalar-load
    variant of the same configuration."""
    return [name for name, ty in sig.items()
            if (ty.startswith("*") and ty != "*i1") or name == "d"
            or (ty == "i32" and name[:1] == "s" and name[-2:] in ("_b", "_l", "_h", "_n")
                and not name.startswith(("sa_", "skp_", "ss_")))]


def aot_configs() -> list[dict]:
    """All (kernel, dtype, mode, BLOCK_D, block config) combinations the launchers use."""
    configs = []
    kernels = [("fwd_one", _attn_fwd, {"ONE_BLOCK": True}), ("fwd_loop", _attn_fwd, {"ONE_BLOCK": False}),
               ("bwd_one", _attn_bwd_one_block, {}), ("bwd_dq", _attn_bwd_dq, {}),
               ("bwd_dkdv", _attn_bwd_dkdv, {})]
    for torch_dtype, dtype in DTYPES.items():
        for mode_name, mode in (("none", NONE), ("mix", MIX), ("scale", SCALE)):
            for kname, fn, extra in kernels:
                for bd in CONFIGS[kname]["fp32" if torch_dtype == torch.float32 else "half"]:
                    block_m, block_n, warps, stages = config(kname, torch_dtype, bd, mode)
                    constexprs = dict(MODE=mode, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=bd,
                                      PRECISION=precision(torch_dtype), **extra)
                    sig = _signature(fn, dtype, constexprs)
                    configs.append({
                        "name": f"{kname} {dtype} {mode_name} D{bd} {block_m}x{block_n} w{warps}s{stages}",
                        "fn": fn, "signature": sig, "constexprs": constexprs,
                        "num_warps": warps, "num_stages": stages,
                        "divisible_by_16": _aligned_args(sig),
                    })
    return configs
