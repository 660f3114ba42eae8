"""A/B timing of two versions of the cpu backend's C++ sources in one process:
``python bench/cpu_ab.py A_DIR B_DIR [--T 4,8,16] [--modes plain,mix,scale] [--rounds 12]``.

Each DIR is a copy of ``csrc/`` (``cp -r csrc /tmp/a`` before an edit, or a worktree's ``csrc``).
Both are built as separate extensions, and the calls alternate between them round after round at
issue 13's headline attention shape (fp32, L=32, H=12, d=64, B·T=256; DAR: window(1), window(2),
global, alpha per (b, l)). Whatever else the machine does slows both alike, so their ratio holds
where single timings on a shared VM drift by ±30% (two copies of the same tree read within ±2% at
10 rounds). Prints the minimum ms of each and B/A, forward and forward+backward, then the medians
(which also count the calls that waited on memory or on a neighbour). After an edit near
``prefetch_rows``, also check that ``objdump -d`` of the built extension still shows prefetch
instructions (tests/kernels/test_attention.py does for main).
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

import stquery as stq
from stquery.backends import cpu_backend, jit

L, H, D, BT = 32, 12, 64, 256


def build(src: Path):
    """The extension built from the csrc tree ``src``, named by a hash of its files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(src)).encode() + path.read_bytes())
    name = f"stquery_ab_{digest.hexdigest()[:12]}"
    directory = Path(tempfile.gettempdir()) / "stquery_ab" / name
    directory.mkdir(parents=True, exist_ok=True)
    return jit.cpp_extension().load(name=name, sources=[str(src / s) for s in cpu_backend.SOURCES],
                                    extra_include_paths=[str(src)], build_directory=str(directory),
                                    extra_cflags=cpu_backend.cflags(), extra_ldflags=["-fopenmp"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--T", default="4,8,16,32,64")
    parser.add_argument("--modes", default="plain,mix,scale")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    versions = [build(args.a), build(args.b)]
    current = [versions[0]]
    cpu_backend.module = lambda: current[0]  # what the backend's methods call
    masks = stq.MaskSet([stq.masks.window(1), stq.masks.window(2), stq.masks.window(None)])
    print(f"threads {torch.get_num_threads()}; ms, minimum of {args.rounds} alternating rounds")
    for T in (int(t) for t in args.T.split(",")):
        q, k, v, g = (torch.randn(BT, L, H, D) for _ in range(4))
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        alpha = torch.softmax(torch.randn(BT // T, L, 3), -1).requires_grad_()
        for mode in args.modes.split(","):
            kw = {} if mode == "plain" else dict(masks=masks, alpha=alpha, mode=mode)
            inputs = leaves + ([alpha] if kw else [])

            def fwd(kw=kw):
                with torch.no_grad():
                    stq.temporal_attention(q, k, v, T, backend="cpu", **kw)

            def fwd_bwd(kw=kw, inputs=inputs):
                torch.autograd.grad(stq.temporal_attention(*leaves, T, backend="cpu", **kw), inputs, g)

            for label, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                times: list = [[] for _ in versions]
                for r in range(args.rounds):
                    for i, version in enumerate(versions):
                        current[0] = version
                        if r == 0:
                            fn()  # warm-up
                        start = time.perf_counter()
                        fn()
                        times[i].append((time.perf_counter() - start) * 1e3)
                (a, b), (ma, mb) = ([f(t) for t in times] for f in (min, statistics.median))
                print(f"T={T:3d} {mode:5s} {label:7s} A {a:8.2f}  B {b:8.2f}  B/A {b / a:.3f}  "
                      f"(medians {ma:.2f}, {mb:.2f}: {mb / ma:.3f})", flush=True)


if __name__ == "__main__":
    main()
