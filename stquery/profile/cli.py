"""The ``stquery profile`` command: run the cases, save JSON + markdown + plot, print a summary."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import sys
import threading
import time
import warnings

import torch

from .._optional import require
from . import harness, report
from .config import ALL_CASES, DTYPES, PASSES, QUICK, SWEEPS, Config, defaults

DESCRIPTION = ("Frame-count scaling of stquery's backends against the peers (eager permute + SDPA, head-fold SDPA, "
               "FlexAttention, xformers, flash-attn, torch.topk, torch.mean). Saves JSON, markdown and a "
               "log-log plot under a results folder and prints a summary; see docs/profiling.md.")


def _ints(text: str) -> tuple:
    return tuple(int(x) for x in text.split(",") if x)


def _names(allowed):
    def parse(text: str) -> tuple:
        out = tuple(x for x in text.split(",") if x)
        bad = [x for x in out if x not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed)}")
        return out
    return parse


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options; their help gives the defaults of the device this machine profiles by default."""
    device = _default_device()
    d = defaults(device)
    here = f"default on this machine's {device.type}"
    p.add_argument("--quick", action="store_true",
                   help=f"tiny {QUICK.dtype} shapes (L={QUICK.L}, H={QUICK.H}, d={QUICK.d}, T={','.join(map(str, QUICK.T))}), "
                        "one CPU thread, short batches: about a minute on a CPU")
    gpu = "a GPU" if device.type == "cuda" else "no GPU"
    p.add_argument("--device", default=None, help=f"cuda or cpu (default: {device.type}, as this machine has {gpu})")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help=f"{here}: {d.dtype}")
    p.add_argument("--T", type=_ints, default=None, help=f"frame counts, comma-separated ({here}: {','.join(map(str, d.T))})")
    p.add_argument("--frames-total", type=int, default=None, help=f"B·T of the fixed-B·T sweep ({here}: {d.frames_total})")
    p.add_argument("--batch", type=int, default=None, help=f"B of the fixed-B sweep ({here}: {d.batch})")
    for dim in ("L", "H", "d", "P", "C"):
        p.add_argument(f"--{dim}", type=int, default=None, help=f"{here}: {getattr(d, dim)}")
    p.add_argument("--cases", type=_names(ALL_CASES), default=None,
                   help=f"comma-separated subset of {', '.join(ALL_CASES)} (default: {','.join(d.cases)})")
    p.add_argument("--passes", type=_names(PASSES), default=None, help="fwd,fwd+bwd (default: both)")
    p.add_argument("--sweeps", type=_names(SWEEPS), default=None, help="fixed-B,fixed-BT (default: both)")
    p.add_argument("--impls", default=None, help="only implementations whose name contains one of these (comma-separated)")
    p.add_argument("--batch-ms", type=float, default=None, help=f"least time of one timed batch, ms ({here}: {d.batch_ms:g})")
    p.add_argument("--samples", type=int, default=None, help=f"timed batches per implementation and shape ({here}: {d.samples})")
    p.add_argument("--max-spread", type=float, default=None,
                   help=f"mark (and don't rank) a row whose p20-p80 spread exceeds this share of its median (default {d.max_spread})")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's; 1 with --quick, as tiny ops on a shared CPU stall in OpenMP barriers)")
    p.add_argument("--flex-static", action="store_true", help="compile FlexAttention per shape (default: dynamic shapes)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="results folder for profile.json, profile.md, profile.png (default: profile-results/<time>-<device>)")
    p.add_argument("--tables", action="store_true", help="also print the full markdown tables on stdout")
    p.add_argument("--from-json", nargs="+", default=None, metavar="FILE",
                   help="run nothing: report earlier runs' profile.json files together (e.g. a run split by --cases)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``profile`` subcommand to ``stquery``'s argparse subparsers."""
    p = subparsers.add_parser("profile", help="frame-count scaling profile of stquery's backends and the peers",
                              description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def config_from_args(args, device: torch.device) -> Config:
    cfg = defaults(device, args.quick)
    for name in ("L", "H", "d", "P", "C", "frames_total", "batch", "dtype", "T", "cases", "passes", "sweeps",
                 "batch_ms", "samples", "max_spread"):
        value = getattr(args, name, None)
        if value is not None:
            cfg = dataclasses.replace(cfg, **{name: value})
    if args.threads is not None:
        cfg = dataclasses.replace(cfg, cpu_threads=args.threads)
    if args.flex_static:
        cfg = dataclasses.replace(cfg, flex_dynamic=False)
    if args.frames_total is not None and args.batch is None:
        cfg = dataclasses.replace(cfg, batch=max(1, cfg.frames_total // max(cfg.T)))
    return cfg


def _device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _measure(cfg: Config, device: torch.device, args) -> tuple:
    tqdm = require("tqdm", extra="bench", feature="stquery profile's progress bar").tqdm
    impl_filter = [x for x in args.impls.split(",") if x] if args.impls else None
    bar = tqdm(total=len(harness.units(cfg)), unit="shape", file=sys.stderr, disable=args.quiet, dynamic_ncols=True)
    stop = threading.Event()
    # The clock keeps running while one call takes long (FlexAttention's first compile on a CPU).
    threading.Thread(target=lambda: [bar.refresh() for _ in iter(lambda: stop.wait(1.0), True)], daemon=True).start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return harness.profile(cfg, device, impl_filter=impl_filter,
                                   status=lambda text: bar.set_description_str(text[:70]), advance=bar.update)
    finally:
        stop.set()
        bar.close()


def run(args) -> int:
    require("matplotlib", extra="bench", feature="stquery profile's plot")  # fail before the run, not after it
    device = torch.device(args.device) if args.device else _default_device()
    t0 = time.perf_counter()
    if args.from_json:
        dev, cfg, rows, started = report.from_json(args.from_json)
    else:
        cfg = config_from_args(args, device)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        dev, rows = _measure(cfg, device, args)
        report.rank(dev, rows, cfg.max_spread)
    out = args.out or os.path.join("profile-results", f"{started.replace(':', '').replace('-', '')}-{_device_slug(device)}")
    os.makedirs(out, exist_ok=True)
    md = report.markdown(dev, cfg, rows, started)
    if not args.from_json:
        md += f"\n_{len(rows)} rows in {time.perf_counter() - t0:.1f} s._\n"
    with open(os.path.join(out, "profile.json"), "w") as f:
        json.dump(report.to_json(dev, cfg, rows, started), f, indent=1)
    with open(os.path.join(out, "profile.md"), "w") as f:
        f.write(md)
    report.plot(rows, cfg, os.path.join(out, "profile.png"), f"stquery profile · {dev.name} · {cfg.dtype}")
    if args.tables:
        print(md)
    print(f"stquery profile · {dev.name} · {cfg.dtype} · {len(rows)} rows in {time.perf_counter() - t0:.0f} s\n")
    print(report.summary_text(rows))
    print(f"\nFull tables, JSON and plot: {out}/profile.{{md,json,png}}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stquery profile", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
